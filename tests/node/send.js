// SendGrid's Node client (@sendgrid/mail) talking to mtaserver: the only change from an
// application sending through SendGrid is the base URL (and the key). Prints one JSON
// object with what each call answered; the Python test checks what reached the MX.
'use strict';
const sgMail = require('@sendgrid/mail');

const [base, key] = process.argv.slice(2);
sgMail.setApiKey(key);
sgMail.client.setDefaultRequest('baseUrl', base);

const from = { email: 'app@example.com', name: 'Node App' };

async function answer(promise) {
  try {
    const [res, body] = await promise;
    return { status: res.statusCode, id: res.headers['x-message-id'] || null, body };
  } catch (err) {
    if (!err.response) throw err;
    return { status: err.code, body: err.response.body };
  }
}

async function main() {
  const out = {};
  out.plain = await answer(sgMail.send({
    to: 'node-plain@dest.test', from, subject: 'Node plain', text: 'Hello from Node.',
    html: '<p>Hello from <i>Node</i>.</p>',
  }));
  out.personalized = await answer(sgMail.send({
    from, subject: 'Node hi {{name}}', text: 'Dear {{name}}, your code is {{code}}.',
    personalizations: ['ann', 'bob', 'cyd'].map((n, i) => ({
      to: `node-${n}@dest.test`, substitutions: { name: n.toUpperCase(), code: `N${i}` },
    })),
  }));
  out.attachments = await answer(sgMail.send({
    to: 'node-att@dest.test', from, subject: 'Node files', html: '<img src="cid:pic">',
    attachments: [
      { content: Buffer.from('node attachment bytes').toString('base64'),
        filename: 'notes.txt', type: 'text/plain', disposition: 'attachment' },
      { content: Buffer.from([0x89, 0x50, 0x4e, 0x47, 1, 2, 3]).toString('base64'),
        filename: 'pic.png', type: 'image/png', disposition: 'inline', content_id: 'pic' },
    ],
  }));
  const [, batch] = await sgMail.client.request({ method: 'POST', url: '/v3/mail/batch' });
  out.batch = batch.batch_id;
  const at = Math.floor(Date.now() / 1000) + 4;
  out.sendAt = at;
  out.scheduled = await answer(sgMail.send({
    to: 'node-cancelled@dest.test', from, subject: 'Node later', text: 'never',
    sendAt: at, batchId: batch.batch_id,
  }));
  out.control = await answer(sgMail.send({
    to: 'node-control@dest.test', from, subject: 'Node later', text: 'on time', sendAt: at,
  }));
  const [cancel] = await sgMail.client.request({
    method: 'POST', url: '/v3/user/scheduled_sends',
    body: { batch_id: batch.batch_id, status: 'cancel' },
  });
  out.cancel = cancel.statusCode;
  out.noFrom = await answer(sgMail.send({ to: 'x@dest.test', subject: 's', text: 't' }));
  out.notMine = await answer(sgMail.send({
    to: 'x@dest.test', from: 'someone@not-mine.test', subject: 's', text: 't',
  }));
  process.stdout.write(JSON.stringify(out));
}

main().catch((err) => { console.error(err); process.exit(1); });
