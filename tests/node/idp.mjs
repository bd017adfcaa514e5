// panva/oidc-provider (an OpenID Certified OAuth 2.0 / OIDC server) as the identity provider
// in mtaserver's OAuth tests: client-credentials grants for two clients, access tokens as
// RS256 JWTs (RFC 9068) for the resource urn:mtaserver. Prints "READY <issuer>" once
// listening on 127.0.0.1:<port>.
import { generateKeyPairSync } from 'node:crypto';
import Provider from 'oidc-provider';

const port = Number(process.argv[2]);
const issuer = `http://127.0.0.1:${port}`;
const key = generateKeyPairSync('rsa', { modulusLength: 2048 }).privateKey.export({ format: 'jwk' });
const client = (id) => ({
  client_id: id, client_secret: `${id}-secret-123`, grant_types: ['client_credentials'],
  redirect_uris: [], response_types: [], token_endpoint_auth_method: 'client_secret_post',
});
const provider = new Provider(issuer, {
  clients: [client('app'), client('stranger')],
  jwks: { keys: [{ ...key, kid: 'idp-k1', use: 'sig', alg: 'RS256' }] },
  features: {
    devInteractions: { enabled: false },
    clientCredentials: { enabled: true },
    resourceIndicators: {
      enabled: true,
      defaultResource: () => 'urn:mtaserver',
      useGrantedResource: () => true,
      getResourceServerInfo: () => ({
        scope: 'smtp', audience: 'urn:mtaserver', accessTokenFormat: 'jwt', accessTokenTTL: 300,
        jwt: { sign: { alg: 'RS256' } },
      }),
    },
  },
});
provider.listen(port, '127.0.0.1', () => { process.stdout.write(`READY ${issuer}\n`); });
