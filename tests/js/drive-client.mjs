// notifier.js in Node for the end-to-end tests (tests/test_js_client_http_stream.py): NotifierClient options as
// JSON in argv[2]; then commands as JSON lines on stdin ({"subscribe": topic}, {"close": true}); everything the
// client reports goes to stdout as JSON lines. At the end of stdin the client is closed and the process ends.

import { createInterface } from 'node:readline';

import { NotifierClient } from '../../notifier/static/notifier.js';

const out = (record) => process.stdout.write(`${JSON.stringify(record)}\n`);
const client = new NotifierClient(JSON.parse(process.argv[2]));

client.on('state', (state, detail) => {
  const { transport, code, reason, recovered, delay } = detail;
  out({ kind: 'state', state, transport, code, reason, recovered, delay, error: detail.error?.code });
});
client.on('welcome', (welcome) => out({ kind: 'welcome', transport: client.transport, ...welcome }));
client.on('event', (event) => out({ kind: 'event', transport: client.transport, ...event }));
client.on('subscribed', ({ topic }) => out({ kind: 'subscribed', topic }));
client.on('resync', ({ reason }) => out({ kind: 'resync', reason }));
client.on('error', (error) => out({ kind: 'error', code: error.code, message: error.message }));

const lines = createInterface({ input: process.stdin });
lines.on('line', (line) => {
  const command = JSON.parse(line);
  if (command.subscribe) {
    client.subscribe(command.subscribe).then(
      () => out({ kind: 'subscribe_done', topic: command.subscribe }),
      (error) => out({ kind: 'subscribe_failed', topic: command.subscribe, code: error.code }),
    );
  } else if (command.close) {
    client.close();
    out({ kind: 'closed_by_page' });
  }
});
lines.on('close', () => client.close());

client.connect();
