import assert from 'node:assert/strict';
import { test } from 'node:test';

import { CloseCode } from '../../notifier/static/notifier.js';
import { connectedClient, flush } from './fake-websocket.mjs';

test('4503 (disconnected by the server) stops the client, tells the page, and does not reconnect', async (t) => {
  const { client, server, states, errors } = await connectedClient(t);
  client.connect();
  await flush();
  server.socket.welcome();
  server.socket.serverClose(CloseCode.DISCONNECTED, 'session revoked');
  assert.equal(CloseCode.DISCONNECTED, 4503);
  assert.equal(client.state, 'closed');
  assert.equal(states.at(-1).state, 'closed');
  assert.equal(errors.at(-1).code, 'disconnected');
  assert.equal(errors.at(-1).closeCode, 4503);
  assert.match(errors.at(-1).message, /session revoked/);
  t.mock.timers.tick(120_000);
  await flush();
  assert.equal(server.sockets.length, 1, 'no reconnect after 4503');
});

test('a topic the server took away is dropped, the page is told, and it is not restored on reconnect', async (t) => {
  const { client, server } = await connectedClient(t);
  client.connect();
  await flush();
  server.socket.welcome();
  const seen = [];
  const told = [];
  client.on('unsubscribed', (detail) => told.push(detail));
  const subscribed = Promise.all([
    client.subscribe('news.sport', (event) => seen.push(event.data)),
    client.subscribe('news.tech'),
  ]);
  server.socket.confirmSubscribes();
  await subscribed;

  server.socket.receive({ type: 'unsubscribed', topic: 'news.sport', id: null, reason: 'server' });
  assert.deepEqual(told, [{ topic: 'news.sport', reason: 'server' }]);
  assert.ok(!client.topics.includes('news.sport'));
  assert.ok(client.topics.includes('news.tech'));
  server.socket.receive({ type: 'event', topic: 'news.sport', id: 'late', ts: 1, data: 'late' });
  assert.deepEqual(seen, [], 'no handler runs for a topic the server took away');

  server.socket.serverClose(1012);
  t.mock.timers.tick(1000);
  await flush();
  server.socket.welcome();
  const restored = server.socket.sentOfType('subscribe').map((frame) => frame.topic);
  assert.deepEqual(restored, ['news.tech']);
});

test('a server unsubscribe of a topic still being confirmed rejects its subscribe', async (t) => {
  const { client, server } = await connectedClient(t);
  client.connect();
  await flush();
  server.socket.welcome();
  const waiting = client.subscribe('news.sport');
  server.socket.receive({ type: 'unsubscribed', topic: 'news.sport', id: null, reason: 'server' });
  await assert.rejects(waiting, { name: 'NotifierError', code: 'unsubscribed', topic: 'news.sport' });
  assert.ok(!client.topics.includes('news.sport'));
});
