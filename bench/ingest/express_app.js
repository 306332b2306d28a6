// bench/ingest: the Express peer, as users run it (one process). Parses the event with
// express.urlencoded({extended: true}) (qs: auth[application_token] -> body.auth.application_token)
// and express.json(), checks the application token with crypto.timingSafeEqual.
'use strict';
const crypto = require('crypto');
const express = require('express');

const token = process.env.INGEST_TOKEN;
if (!token) throw new Error('INGEST_TOKEN is not set');
const expected = Buffer.from(token);

const app = express();
app.use(express.urlencoded({ extended: true }));
app.use(express.json());

app.post('/', (req, res) => {
  const auth = req.body && req.body.auth;
  const got = auth && typeof auth.application_token === 'string' ? Buffer.from(auth.application_token) : null;
  if (got && got.length === expected.length && crypto.timingSafeEqual(got, expected)) {
    res.status(200).json({ success: true });
  } else {
    res.status(401).json({ error: 'unauthorized' });
  }
});

const server = app.listen(0, '127.0.0.1', () => {
  console.log(`listening port=${server.address().port} express=${require('express/package.json').version} node=${process.version}`);
});
process.on('SIGTERM', () => server.close(() => process.exit(0)));
