// nodemailer's OAuth2 support (auth: {type: 'OAuth2', user, accessToken}) submitting to
// mtaserver over STARTTLS with AUTH XOAUTH2. Reads one JSON job list on stdin, prints one
// JSON array with what each send answered; the Python test checks the queue.
'use strict';
const fs = require('fs');
const nodemailer = require('nodemailer');

const [port, caFile] = process.argv.slice(2);
const ca = fs.readFileSync(caFile);
const jobs = JSON.parse(fs.readFileSync(0, 'utf8'));

async function send(job) {
  const transport = nodemailer.createTransport({
    host: '127.0.0.1',
    port: Number(port),
    secure: false,
    requireTLS: true,
    name: 'node.client.test',
    tls: { ca, servername: 'localhost' },
    auth: { type: 'OAuth2', user: job.user, accessToken: job.token },
  });
  try {
    const info = await transport.sendMail({
      from: job.from,
      to: 'r@dest.example',
      subject: 'OAuth from nodemailer',
      text: 'Hello over XOAUTH2.',
    });
    return { ok: true, response: info.response };
  } catch (err) {
    return { ok: false, code: err.code, responseCode: err.responseCode, response: err.response };
  } finally {
    transport.close();
  }
}

(async () => {
  const out = [];
  for (const job of jobs) out.push(await send(job));
  process.stdout.write(JSON.stringify(out));
})();
