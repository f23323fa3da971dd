// Choosing the transport: falling back to the HTTP stream when WebSockets fail on the way, going back to a
// WebSocket later, and the session resumed across each switch.

import assert from 'node:assert/strict';
import { test } from 'node:test';

import { fallbackClient, settle } from './fake-fetch.mjs';

/** Let the socket of the current attempt fail as a blocked WebSocket does (closed before opening), then wait out
 * the backoff. */
async function blockSocket(t, server, states) {
  server.socket.serverClose(1006);
  await settle();
  t.mock.timers.tick(states.at(-1).delay);
  await settle();
}

/** Welcome on a WebSocket as the resume contract does. */
function welcomeSocket(socket, { session = 's1', recovered = false, user = 'ada' } = {}) {
  socket.open();
  const expires = Math.floor(Date.now() / 1000) + 3600;
  socket.receive({ type: 'welcome', user, topics: [`user.${user}`], expires, session, recovered });
}

function event(socket, id) {
  socket.receive({ type: 'event', topic: 'user.ada', id, ts: 1, data: id });
}

/** A client that fell back to the HTTP stream (two blocked sockets) and was welcomed there. */
async function fellBack(t, options = {}, welcome = {}) {
  const fixture = await fallbackClient(t, options);
  const { client, server, http, states } = fixture;
  client.connect();
  await settle();
  await blockSocket(t, server, states);
  await blockSocket(t, server, states);
  assert.equal(server.sockets.length, 2);
  http.stream.welcome({ heartbeat: 3600, ...welcome });
  await settle();
  assert.equal(client.state, 'open');
  return fixture;
}

test('two WebSockets blocked on the way: the third attempt is the HTTP stream, and the page sees it', async (t) => {
  const { client, server, http, states } = await fallbackClient(t);
  client.connect();
  await settle();
  assert.equal(client.transport, 'websocket');
  await blockSocket(t, server, states);
  assert.equal(server.sockets.length, 2, 'the first failure is retried on the WebSocket');
  assert.equal(http.requests.length, 0);
  server.socket.serverClose(1006);
  await settle();
  assert.deepEqual([states.at(-1).state, states.at(-1).transport], ['reconnecting', 'sse']);
  assert.equal(client.transport, 'sse');
  t.mock.timers.tick(states.at(-1).delay);
  await settle();
  assert.equal(server.sockets.length, 2);
  assert.equal(http.stream.url, 'https://notifier.test/sse');
  http.stream.welcome();
  await settle();
  assert.deepEqual(states.at(-1), { state: 'open', recovered: false, transport: 'sse' });
});

test('a refused handshake counts once, with or without a close event after its error event', async (t) => {
  const { client, server, http, states } = await fallbackClient(t);
  client.connect();
  await settle();
  server.socket.failHandshake(); // a browser: error, then close 1006
  await settle();
  assert.deepEqual([states.at(-1).state, states.at(-1).code, states.at(-1).transport], ['reconnecting', 1006, 'websocket']);
  t.mock.timers.tick(states.at(-1).delay);
  await settle();
  server.socket.failHandshake({ closeEvent: false }); // Node 20's WebSocket: the error alone
  await settle();
  assert.deepEqual([states.at(-1).state, states.at(-1).transport], ['reconnecting', 'sse']);
  assert.equal(states.filter((s) => s.state === 'reconnecting').length, 2);
  t.mock.timers.tick(states.at(-1).delay);
  await settle();
  assert.equal(http.streams.length, 1);
});

test('a WebSocket that opens but dies before its welcome counts as blocked too, and so does connectTimeout', async (t) => {
  const { client, server, http, states } = await fallbackClient(t);
  client.connect();
  await settle();
  server.socket.open(); // a proxy that lets the upgrade through and then cuts the line
  server.socket.serverClose(1006);
  await settle();
  t.mock.timers.tick(states.at(-1).delay);
  await settle();
  server.socket.open(); // ... or holds it without passing frames
  t.mock.timers.tick(10_000);
  await settle();
  assert.equal(client.transport, 'sse');
  t.mock.timers.tick(states.at(-1).delay);
  await settle();
  assert.equal(http.streams.length, 1);
});

test('closes the service itself sends before a welcome do not switch: the WebSocket reaches it', async (t) => {
  const { client, server, http, states } = await fallbackClient(t);
  client.connect();
  await settle();
  for (const code of [1013, 4003, 1012, 4004, 4005]) {
    server.socket.open();
    server.socket.serverClose(code);
    await settle();
    assert.equal(states.at(-1).transport, 'websocket', `after ${code}`);
    t.mock.timers.tick(states.at(-1).delay);
    await settle();
  }
  server.socket.serverClose(1006); // one blocked attempt after them is the first in a row, not the sixth
  await settle();
  assert.equal(client.transport, 'websocket');
  assert.equal(http.requests.length, 0);
});

test('a terminal refusal on the WebSocket stops the client: no fallback turns it into retries', async (t) => {
  const { client, server, http, errors } = await fallbackClient(t);
  client.connect();
  await settle();
  server.socket.serverClose(1006);
  await settle();
  t.mock.timers.tick(1000);
  await settle();
  server.socket.open();
  server.socket.serverClose(4500, 'invalid token');
  await settle();
  assert.equal(client.state, 'closed');
  assert.equal(errors.at(-1).code, 'invalid_token');
  t.mock.timers.tick(600_000);
  await settle();
  assert.equal(http.requests.length, 0);
  assert.equal(server.sockets.length, 2);
});

test('a terminal refusal on the stream after a fallback stops the client for good', async (t) => {
  const { client, server, http, states, errors } = await fallbackClient(t);
  client.connect();
  await settle();
  await blockSocket(t, server, states);
  await blockSocket(t, server, states);
  http.stream.respond(401, { error: 'invalid_token', code: 4500, message: 'bad signature' });
  await settle();
  assert.equal(client.state, 'closed');
  assert.equal(errors.at(-1).closeCode, 4500);
  t.mock.timers.tick(3_600_000);
  await settle();
  assert.equal(http.requests.length, 1);
  assert.equal(server.sockets.length, 2);
});

test('fallbackAfter sets how many blocked attempts in a row switch; transports sets the order', async (t) => {
  let fixture = await fallbackClient(t, { fallbackAfter: 1 });
  fixture.client.connect();
  await settle();
  await blockSocket(t, fixture.server, fixture.states);
  assert.equal(fixture.http.streams.length, 1);
  fixture.client.close();
  t.mock.timers.reset();

  fixture = await fallbackClient(t, { transports: ['sse', 'websocket'] });
  fixture.client.connect();
  await settle();
  assert.equal(fixture.server.sockets.length, 0);
  assert.equal(fixture.http.streams.length, 1);
  fixture.client.close();
  t.mock.timers.reset();

  fixture = await fallbackClient(t, { transports: ['websocket'] });
  fixture.client.connect();
  await settle();
  for (let i = 0; i < 5; i += 1) await blockSocket(t, fixture.server, fixture.states);
  assert.equal(fixture.http.requests.length, 0);
  assert.equal(fixture.client.transport, 'websocket');
});

test('when the stream fails on the way too, the client goes back to the WebSocket after fallbackAfter', async (t) => {
  const { client, server, http, states } = await fallbackClient(t);
  client.connect();
  await settle();
  await blockSocket(t, server, states);
  await blockSocket(t, server, states);
  http.stream.fail(); // the whole service is unreachable, not only WebSockets
  await settle();
  t.mock.timers.tick(states.at(-1).delay);
  await settle();
  http.stream.respond(502, null, { 'Content-Type': 'text/html' }); // a proxy's page, not the service's refusal
  await settle();
  assert.equal(client.transport, 'websocket');
  t.mock.timers.tick(states.at(-1).delay);
  await settle();
  assert.equal(server.sockets.length, 3);
});

test('resume across the fallback: the stream asks for the WebSocket session and its count', async (t) => {
  const { client, server, http, states, seen, resyncs } = await fallbackClient(t);
  client.connect();
  await settle();
  welcomeSocket(server.socket, { session: 's1' });
  event(server.socket, 'a');
  event(server.socket, 'b');
  server.socket.serverClose(1006); // a network change; now the WebSocket is blocked
  await settle();
  t.mock.timers.tick(states.at(-1).delay);
  await settle();
  await blockSocket(t, server, states);
  server.socket.serverClose(1006);
  await settle();
  t.mock.timers.tick(states.at(-1).delay);
  await settle();
  assert.equal(http.stream.headers['last-event-id'], 's1:2');
  http.stream.welcome({ session: 's2', recovered: true, received: 2 });
  http.stream.event('c', { session: 's2', n: 3 }); // replayed
  http.stream.event('d', { session: 's2', n: 4 });
  await settle();
  assert.deepEqual(seen, ['a', 'b', 'c', 'd']);
  assert.deepEqual(resyncs, []);
  assert.deepEqual(states.at(-1), { state: 'open', recovered: true, transport: 'sse' });
  assert.equal(client.state, 'open');
});

test('a resume the stream could not recover tells the page to resync, as on a WebSocket', async (t) => {
  const { client, server, http, states, resyncs } = await fallbackClient(t);
  client.connect();
  await settle();
  welcomeSocket(server.socket, { session: 's1' });
  server.socket.serverClose(1006);
  await settle();
  t.mock.timers.tick(states.at(-1).delay);
  await settle();
  await blockSocket(t, server, states);
  server.socket.serverClose(1006);
  await settle();
  t.mock.timers.tick(states.at(-1).delay);
  await settle();
  http.stream.welcome({ session: 'fresh', recovered: false });
  await settle();
  assert.deepEqual(resyncs, ['not_recovered']);
  assert.equal(client.state, 'open');
});

test('after upgradeAfter a WebSocket is tried beside the stream; a blocked one changes nothing', async (t) => {
  const { client, server, http, states, errors } = await fellBack(t, { upgradeAfter: 60_000 });
  const stateCount = states.length;
  const sinceSwitch = states.at(-2).delay; // upgradeAfter counts from the switch to the stream
  for (let round = 1; round <= 4; round += 1) {
    t.mock.timers.tick(59_999 - (round === 1 ? sinceSwitch : 0));
    await settle();
    assert.equal(server.sockets.length, 1 + round, `round ${round}: not before upgradeAfter`);
    t.mock.timers.tick(1);
    await settle();
    assert.equal(server.sockets.length, 2 + round, `round ${round}: a probe`);
    server.socket.serverClose(1006);
    await settle();
  }
  assert.equal(states.length, stateCount, 'no state change for the page');
  assert.deepEqual(errors, [], 'no handshake_failed while the stream works');
  assert.equal(http.streams.length, 1);
  assert.equal(http.stream.aborted, false);
  assert.equal(client.transport, 'sse');
});

test('an upgrade moves the session to the WebSocket: nothing lost, nothing doubled, no resync', async (t) => {
  const { client, server, http, states, seen, resyncs } = await fellBack(t, { upgradeAfter: 60_000 });
  const stream = http.stream;
  stream.event('a', { n: 1 });
  stream.event('b', { n: 2 });
  await settle();
  t.mock.timers.tick(60_000);
  await settle();
  const probe = server.socket;
  stream.event('c', { n: 3 }); // the stream goes on while the WebSocket is dialed
  await settle();
  assert.equal(client.transport, 'sse');
  probe.open();
  await settle();
  assert.equal(stream.aborted, true, 'the stream is dropped once the WebSocket is open');
  assert.deepEqual(http.waiting('DELETE'), [], 'without DELETE: the session parks for the WebSocket to resume');
  assert.deepEqual(probe.sent, [{ type: 'auth', token: 'tok', resume: { session: 's1', received: 3 } }]);
  assert.deepEqual([states.at(-1).state, states.at(-1).transport, states.at(-1).delay], ['reconnecting', 'websocket', 0]);
  stream.event('d', { n: 4 }); // too late: it goes to the parked session, and is replayed below
  await settle();
  welcomeSocket(probe, { session: 's2', recovered: true });
  event(probe, 'd');
  event(probe, 'e');
  assert.deepEqual(seen, ['a', 'b', 'c', 'd', 'e']);
  assert.deepEqual(resyncs, []);
  assert.deepEqual(states.at(-1), { state: 'open', recovered: true, transport: 'websocket' });
  assert.equal(client.transport, 'websocket');

  probe.serverClose(1006); // the next drop resumes the WebSocket session, with the count carried on
  await settle();
  t.mock.timers.tick(states.at(-1).delay);
  await settle();
  server.socket.open();
  assert.deepEqual(server.socket.sent[0].resume, { session: 's2', received: 5 });
});

test('after an upgrade, subscriptions are kept and new ones go out on the WebSocket', async (t) => {
  const { client, server, http } = await fellBack(t, { upgradeAfter: 1000 });
  const subscribed = client.subscribe('news.sport');
  await settle();
  http.commands[0].accept();
  http.stream.send({ type: 'subscribed', topic: 'news.sport', id: http.commands[0].frame.id });
  await subscribed;
  t.mock.timers.tick(1000);
  await settle();
  server.socket.open();
  const probe = server.socket;
  probe.receive({
    type: 'welcome', user: 'ada', topics: ['user.ada', 'news.sport'], expires: 2e9, session: 's2', recovered: true,
  });
  client.subscribe('news.tech').catch(() => {});
  await settle();
  assert.deepEqual(probe.sentOfType('subscribe').map((f) => f.topic), ['news.tech'], 'the restored topic is not asked again');
  assert.equal(http.commands.length, 1);
});

test('an upgrade whose WebSocket opens but dies before its welcome goes back to the stream at once', async (t) => {
  const { client, server, http, states, seen, resyncs, errors } = await fellBack(t, { upgradeAfter: 60_000 });
  http.stream.event('a', { n: 1 });
  await settle();
  t.mock.timers.tick(60_000);
  await settle();
  server.socket.open();
  await settle();
  server.socket.serverClose(1006);
  await settle();
  assert.deepEqual([states.at(-1).state, states.at(-1).transport, states.at(-1).delay], ['reconnecting', 'sse', 0]);
  t.mock.timers.tick(0);
  await settle();
  assert.equal(http.streams.length, 2);
  assert.equal(http.stream.headers['last-event-id'], 's1:1');
  http.stream.welcome({ session: 's3', recovered: true, received: 1, heartbeat: 3600 });
  http.stream.event('b', { session: 's3', n: 2 });
  await settle();
  assert.deepEqual(seen, ['a', 'b']);
  assert.deepEqual(resyncs, []);
  assert.deepEqual(errors, []);
  assert.equal(client.transport, 'sse');
  t.mock.timers.tick(119_999);
  await settle();
  assert.equal(server.sockets.length, 3, 'an upgrade that opened and died doubles the wait before the next');
  t.mock.timers.tick(1);
  await settle();
  assert.equal(server.sockets.length, 4);
});

test('upgradeAfter: 0 stays on the stream', async (t) => {
  const { server } = await fellBack(t, { upgradeAfter: 0 });
  t.mock.timers.tick(3_600_000);
  await settle();
  assert.equal(server.sockets.length, 2);
});

test('an upgrade refused for good by the service stops the client', async (t) => {
  const { client, server, errors } = await fellBack(t, { upgradeAfter: 1000 });
  t.mock.timers.tick(1000);
  await settle();
  server.socket.open();
  server.socket.serverClose(4503, 'revoked');
  await settle();
  assert.equal(client.state, 'closed');
  assert.equal(errors.at(-1).code, 'disconnected');
});

test('close() during a pending upgrade closes the probe too', async (t) => {
  const { client, server, http } = await fellBack(t, { upgradeAfter: 1000 });
  t.mock.timers.tick(1000);
  await settle();
  const probe = server.socket;
  client.close();
  assert.deepEqual(probe.closedByClient, { code: 1000, reason: '' });
  assert.equal(http.waiting('DELETE').length, 1);
});

test('options: transports, httpUrl and the derived stream URL are checked', async () => {
  const { NotifierClient } = await import('../../notifier/static/notifier.js');
  const base = { token: 't', WebSocket: class {}, fetch: async () => {} };
  assert.throws(() => new NotifierClient({ ...base, url: 'ws://h/ws', transports: [] }), TypeError);
  assert.throws(() => new NotifierClient({ ...base, url: 'ws://h/ws', transports: ['polling'] }), TypeError);
  assert.throws(() => new NotifierClient({ ...base, url: 'ws://h/ws', transports: ['sse', 'sse'] }), TypeError);
  assert.throws(() => new NotifierClient({ ...base, url: 'ws://h/socket', transports: ['sse'] }), /httpUrl/);
  assert.throws(() => new NotifierClient({ ...base, url: 'ws://h/ws', httpUrl: 'ftp://h/sse' }), TypeError);
  assert.equal(new NotifierClient({ ...base, url: 'ws://h/socket' }).transport, 'websocket', 'no stream URL: WebSocket only');
  const onlyStream = new NotifierClient({ token: 't', url: 'wss://h/ws', transports: ['sse'], WebSocket: undefined, fetch: base.fetch });
  assert.equal(onlyStream.transport, 'sse', 'a WebSocket implementation is needed only when listed');
});

test('the stream URL: ws→http, wss→https, last /ws→/sse, query kept; or httpUrl as given', async (t) => {
  const { http, client } = await fallbackClient(t, { url: 'ws://h.test:8000/notifier/ws?tenant=1', transports: ['sse'] });
  client.connect();
  await settle();
  assert.equal(http.stream.url, 'http://h.test:8000/notifier/sse?tenant=1');
  http.stream.welcome({ stream: 'k/2' });
  await settle();
  client.subscribe('x').catch(() => {});
  await settle();
  assert.equal(http.commands[0].url, 'http://h.test:8000/notifier/sse/k%2F2');
  client.close();
  t.mock.timers.reset();

  const custom = await fallbackClient(t, { httpUrl: 'https://stream.test/events', transports: ['sse'] });
  custom.client.connect();
  await settle();
  assert.equal(custom.http.stream.url, 'https://stream.test/events');
});
