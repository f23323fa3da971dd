import assert from 'node:assert/strict';
import { test } from 'node:test';

import { connectedClient, flush } from './fake-websocket.mjs';

test('connects, authenticates with the first frame, and delivers the personal topic without subscribing', async (t) => {
  const { client, server, states } = await connectedClient(t);
  const events = [];
  client.on('event', (event) => events.push(event));
  client.connect();
  assert.equal(client.state, 'connecting');
  await flush();
  server.socket.open();
  assert.deepEqual(server.socket.sent, [{ type: 'auth', token: 'tok' }]);
  server.socket.receive({ type: 'welcome', user: 'ada', topics: ['user.ada'], expires: 1_700_003_600 });
  assert.equal(client.state, 'open');
  assert.equal(client.user, 'ada');
  assert.deepEqual(client.topics, ['user.ada']);
  server.socket.receive({ type: 'event', topic: 'user.ada', id: 'e1', ts: 5, data: { text: 'hi' } });
  assert.deepEqual(events, [{ topic: 'user.ada', id: 'e1', ts: 5, data: { text: 'hi' } }]);
  assert.deepEqual(
    states.map((s) => s.state),
    ['connecting', 'open'],
  );
});

test('an event delivered twice (at least once delivery) reaches listeners once', async (t) => {
  const { client, server } = await connectedClient(t);
  const events = [];
  client.on('event', (event) => events.push(event.id));
  client.connect();
  await flush();
  server.socket.welcome();
  for (const id of ['a', 'b', 'a', 'c', 'b']) server.socket.receive({ type: 'event', topic: 'user.ada', id, ts: 1, data: 1 });
  assert.deepEqual(events, ['a', 'b', 'c']);
});

test('a listener that throws does not stop the others', async (t) => {
  const { client, server } = await connectedClient(t);
  const reported = [];
  t.mock.method(console, 'error', (error) => reported.push(error));
  const seen = [];
  client.on('event', () => {
    throw new Error('listener bug');
  });
  client.on('event', (event) => seen.push(event.id));
  client.connect();
  await flush();
  server.socket.welcome();
  server.socket.receive({ type: 'event', topic: 'user.ada', id: 'x', ts: 1, data: null });
  assert.deepEqual(seen, ['x']);
  assert.equal(reported.length, 1);
  assert.equal(client.state, 'open');
});

test('1012 (server restarting) reconnects promptly, within the first backoff step', async (t) => {
  t.mock.method(Math, 'random', () => 0.999999);
  const { client, server, states } = await connectedClient(t, { minReconnectDelay: 500 });
  client.connect();
  await flush();
  server.socket.welcome();
  server.socket.serverClose(1012, 'server restarting');
  const last = states.at(-1);
  assert.equal(last.state, 'reconnecting');
  assert.equal(last.code, 1012);
  assert.ok(last.delay < 500, `delay ${last.delay}`);
  t.mock.timers.tick(last.delay);
  await flush();
  assert.equal(server.sockets.length, 2);
  server.socket.welcome();
  assert.equal(client.state, 'open');
});

test('busy-server codes (1013, 4002, 4003, 4004) back off further than a restart', async (t) => {
  t.mock.method(Math, 'random', () => 0.999999);
  for (const code of [1013, 4002, 4003, 4004]) {
    const { client, server, states } = await connectedClient(t, { minReconnectDelay: 500 });
    client.connect();
    await flush();
    server.socket.welcome();
    server.socket.serverClose(code);
    assert.equal(states.at(-1).state, 'reconnecting', `code ${code}`);
    assert.equal(states.at(-1).delay, 1999, `code ${code}`);
    client.close();
    t.mock.timers.reset();
  }
});

test('terminal codes stop the client with an error naming the reason', async (t) => {
  const expected = { 4501: 'protocol_violation', 4502: 'user_connection_limit', 1009: 'message_too_big', 1007: 'invalid_utf8', 4599: 'terminal_close' };
  for (const [code, errorCode] of Object.entries(expected)) {
    const { client, server, states, errors } = await connectedClient(t);
    client.connect();
    await flush();
    server.socket.welcome();
    server.socket.serverClose(Number(code), 'whatever');
    assert.equal(client.state, 'closed', `code ${code}`);
    assert.equal(states.at(-1).state, 'closed');
    assert.equal(errors.at(-1).code, errorCode);
    assert.equal(errors.at(-1).closeCode, Number(code));
    t.mock.timers.tick(120_000);
    await flush();
    assert.equal(server.sockets.length, 1, `no reconnect after ${code}`);
    t.mock.timers.reset();
  }
});

test('close() stops for good: no reconnect, waiting subscribes reject with code closed', async (t) => {
  const { client, server, states } = await connectedClient(t);
  client.connect();
  await flush();
  server.socket.welcome();
  const waiting = client.subscribe('news.sport');
  client.close();
  await assert.rejects(waiting, { name: 'NotifierError', code: 'closed' });
  assert.equal(server.sockets[0].closedByClient.code, 1000);
  assert.equal(states.at(-1).state, 'closed');
  t.mock.timers.tick(120_000);
  await flush();
  assert.equal(server.sockets.length, 1);
});

test('a socket that never opens counts as a failed attempt (connect timeout)', async (t) => {
  const { client, server, states } = await connectedClient(t, { connectTimeout: 5000 });
  client.connect();
  await flush();
  t.mock.timers.tick(5000);
  assert.equal(states.at(-1).state, 'reconnecting');
  assert.ok(server.sockets[0].closedByClient, 'the stuck socket is closed');
  t.mock.timers.tick(states.at(-1).delay);
  await flush();
  assert.equal(server.sockets.length, 2);
});

test('page-relative and http(s) URLs become ws(s) URLs', async (t) => {
  const { client, server } = await connectedClient(t, { url: 'https://push.example.com/ws' });
  client.connect();
  await flush();
  assert.equal(server.socket.url, 'wss://push.example.com/ws');
});

test('a handshake that keeps failing is reported once with a hint, and retrying goes on', async (t) => {
  const { client, server, states, errors } = await connectedClient(t, { handshakeFailures: 3 });
  client.connect();
  for (let attempt = 1; attempt <= 5; attempt += 1) {
    await flush();
    server.socket.serverClose(1006); // refused before opening, as a browser reports a 403
    assert.equal(errors.length, attempt >= 3 ? 1 : 0, `after ${attempt} failures`);
    t.mock.timers.tick(states.at(-1).delay);
  }
  assert.equal(errors[0].code, 'handshake_failed');
  assert.match(errors[0].message, /NOTIFIER_ALLOWED_ORIGINS/);
  assert.match(errors[0].message, /ws:\/\/notifier\.test\/ws/);
  assert.equal(client.state, 'reconnecting');
  await flush();
  server.socket.welcome(); // an opened socket starts the count again
  server.socket.serverClose(1006);
  for (let attempt = 1; attempt <= 2; attempt += 1) {
    t.mock.timers.tick(states.at(-1).delay);
    await flush();
    server.socket.serverClose(1006);
  }
  assert.equal(errors.length, 1, 'two failures after an opened socket are not yet reported');
});

test('sockets that open and then close do not count as handshake failures', async (t) => {
  const { client, server, states, errors } = await connectedClient(t, { handshakeFailures: 2 });
  client.connect();
  for (let attempt = 0; attempt < 4; attempt += 1) {
    await flush();
    server.socket.open();
    server.socket.serverClose(1006);
    t.mock.timers.tick(states.at(-1).delay);
  }
  assert.deepEqual(errors, []);
});

test('a repeat is recognised by id alone: a reused id with other data is dropped, as documented', async (t) => {
  const { client, server } = await connectedClient(t);
  const events = [];
  client.on('event', (event) => events.push(event.data));
  client.connect();
  await flush();
  server.socket.welcome();
  server.socket.receive({ type: 'event', topic: 'user.ada', id: 'same', ts: 1, data: 'first' });
  server.socket.receive({ type: 'event', topic: 'user.ada', id: 'same', ts: 2, data: 'second' });
  server.socket.receive({ type: 'event', topic: 'user.ada', id: 'other', ts: 3, data: 'third' });
  assert.deepEqual(events, ['first', 'third']);
});
