import assert from 'node:assert/strict';
import { test } from 'node:test';

import { connectedClient, flush } from './fake-websocket.mjs';

/** Open `socket` and welcome it as the resume contract does (docs/protocol.md, "Resuming a session"). */
function welcome(socket, { session, recovered = false, topics = ['user.ada'], dropped, user = 'ada' } = {}) {
  socket.open();
  const frame = { type: 'welcome', user, topics, expires: Math.floor(Date.now() / 1000) + 3600, session, recovered };
  if (dropped) frame.dropped = dropped;
  socket.receive(frame);
}

function event(socket, id, topic = 'user.ada') {
  socket.receive({ type: 'event', topic, id, ts: 1, data: id });
}

/** The network drops the connection; the client dials again and its new socket is returned (not yet open). */
async function drop(t, server) {
  server.socket.serverClose(1006);
  t.mock.timers.tick(1000);
  await flush();
  return server.socket;
}

/** The part of the Web Storage API the client uses, in memory. */
class MemoryStorage {
  constructor() {
    this.items = new Map();
    this.writes = 0;
  }
  getItem(key) {
    return this.items.has(key) ? this.items.get(key) : null;
  }
  setItem(key, value) {
    this.writes += 1;
    this.items.set(key, String(value));
  }
  removeItem(key) {
    this.items.delete(key);
  }
  saved(key = 'notifier.session ws://notifier.test/ws') {
    const text = this.getItem(key);
    return text === null ? null : JSON.parse(text);
  }
}

/** Stand in for the page's window events (`pagehide`, `online`) for the length of one test. */
function pageEvents(t) {
  const target = new EventTarget();
  globalThis.addEventListener = target.addEventListener.bind(target);
  globalThis.removeEventListener = target.removeEventListener.bind(target);
  t.after(() => {
    delete globalThis.addEventListener;
    delete globalThis.removeEventListener;
  });
  return target;
}

test('after a drop, auth carries the last session and every event frame received, repeats included', async (t) => {
  const { client, server } = await connectedClient(t);
  const seen = [];
  client.on('event', (e) => seen.push(e.id));
  client.connect();
  await flush();
  welcome(server.socket, { session: 's1' });
  for (const id of ['a', 'b', 'a', 'c']) event(server.socket, id);
  assert.deepEqual(seen, ['a', 'b', 'c'], 'the repeat is dropped for the page');
  const socket = await drop(t, server);
  socket.open();
  assert.deepEqual(socket.sent[0], { type: 'auth', token: 'tok', resume: { session: 's1', received: 4 } });
});

test('the first connection sends no resume, reports recovered false and asks for no resync', async (t) => {
  const { client, server, states } = await connectedClient(t);
  const welcomes = [];
  const resyncs = [];
  client.on('welcome', (w) => welcomes.push(w));
  client.on('resync', (r) => resyncs.push(r));
  client.connect();
  await flush();
  welcome(server.socket, { session: 's1' });
  assert.deepEqual(server.socket.sent[0], { type: 'auth', token: 'tok' });
  assert.equal(welcomes[0].recovered, false);
  assert.equal(welcomes[0].session, 's1');
  assert.deepEqual(welcomes[0].dropped, []);
  assert.equal(states.at(-1).recovered, false);
  assert.deepEqual(resyncs, []);
});

test('after recovered true the count goes on from the resumed count, across several resumes', async (t) => {
  const { client, server, states } = await connectedClient(t);
  const seen = [];
  const resyncs = [];
  client.on('event', (e) => seen.push(e.id));
  client.on('resync', (r) => resyncs.push(r));
  client.connect();
  await flush();
  welcome(server.socket, { session: 's1' });
  event(server.socket, 'a');
  event(server.socket, 'b');
  let socket = await drop(t, server);
  welcome(socket, { session: 's2', recovered: true });
  assert.deepEqual(socket.sent[0].resume, { session: 's1', received: 2 });
  assert.equal(client.state, 'open');
  assert.equal(states.at(-1).recovered, true);
  event(socket, 'c'); // replayed
  event(socket, 'd'); // replayed
  event(socket, 'e'); // live
  socket = await drop(t, server);
  welcome(socket, { session: 's3', recovered: true });
  assert.deepEqual(socket.sentOfType('auth'), [
    { type: 'auth', token: 'tok', resume: { session: 's2', received: 5 } }, // the new id, the count carried on
  ]);
  assert.deepEqual(seen, ['a', 'b', 'c', 'd', 'e'], 'replayed events reach the page like live ones');
  assert.deepEqual(resyncs, [], 'nothing was missed');
});

test('after recovered false the count starts again at 0 in the new session', async (t) => {
  const { client, server } = await connectedClient(t);
  client.connect();
  await flush();
  welcome(server.socket, { session: 's1' });
  event(server.socket, 'a');
  event(server.socket, 'b');
  let socket = await drop(t, server);
  welcome(socket, { session: 'fresh', recovered: false });
  event(socket, 'c');
  socket = await drop(t, server);
  socket.open();
  assert.deepEqual(socket.sent[0].resume, { session: 'fresh', received: 1 });
});

test('recovered true: restored topics are not subscribed again; topics added meanwhile are', async (t) => {
  const { client, server } = await connectedClient(t);
  client.connect();
  await flush();
  welcome(server.socket, { session: 's1' });
  const sport = [];
  const held = Promise.all([client.subscribe('news.sport', (e) => sport.push(e.id)), client.subscribe('news.tech')]);
  server.socket.confirmSubscribes();
  await held;

  server.socket.serverClose(1006);
  const added = client.subscribe('news.weather'); // the page goes on while disconnected
  const confirmed = [];
  client.on('subscribed', ({ topic }) => confirmed.push(topic));
  t.mock.timers.tick(1000);
  await flush();
  const socket = server.socket;
  welcome(socket, { session: 's2', recovered: true, topics: ['user.ada', 'news.sport', 'news.tech'] });
  assert.deepEqual(
    socket.sentOfType('subscribe').map((f) => f.topic),
    ['news.weather'],
  );
  assert.deepEqual(confirmed.sort(), ['news.sport', 'news.tech', 'user.ada']);
  event(socket, 'replayed', 'news.sport');
  assert.deepEqual(sport, ['replayed'], 'the restored topic reaches its handler');
  socket.confirmSubscribes();
  await added;
  assert.deepEqual(client.topics.sort(), ['news.sport', 'news.tech', 'news.weather', 'user.ada']);
});

test('recovered true: a topic the page let go of while disconnected is unsubscribed, not kept', async (t) => {
  const { client, server } = await connectedClient(t);
  client.connect();
  await flush();
  welcome(server.socket, { session: 's1' });
  const held = client.subscribe('news.tech');
  server.socket.confirmSubscribes();
  await held;
  server.socket.serverClose(1006);
  await client.unsubscribe('news.tech'); // at once: not connected
  t.mock.timers.tick(1000);
  await flush();
  welcome(server.socket, { session: 's2', recovered: true, topics: ['user.ada', 'news.tech'] });
  assert.deepEqual(
    server.socket.sentOfType('unsubscribe').map((f) => f.topic),
    ['news.tech'],
  );
  assert.deepEqual(server.socket.sentOfType('subscribe'), []);
  assert.deepEqual(client.topics, ['user.ada']);
});

test('recovered false: what the page holds is subscribed again, then the page is told to refetch', async (t) => {
  const { client, server } = await connectedClient(t);
  const welcomes = [];
  const resyncs = [];
  client.on('welcome', (w) => welcomes.push(w));
  client.on('resync', (r) => resyncs.push(r));
  client.connect();
  await flush();
  welcome(server.socket, { session: 's1' });
  const held = Promise.all([client.subscribe('news.sport'), client.subscribe('news.tech')]);
  server.socket.confirmSubscribes();
  await held;
  const socket = await drop(t, server);
  welcome(socket, { session: 's2', recovered: false });
  assert.deepEqual(
    socket.sentOfType('subscribe').map((f) => f.topic),
    ['news.sport', 'news.tech'],
  );
  assert.equal(welcomes.at(-1).recovered, false);
  assert.deepEqual(resyncs, [], 'not before the topics flow again: a refetch now could miss their events');
  const [sport, tech] = socket.sentOfType('subscribe');
  socket.receive({ type: 'subscribed', topic: 'news.sport', id: sport.id });
  assert.deepEqual(resyncs, []);
  socket.receive({ type: 'error', id: tech.id, code: 'forbidden', message: 'no longer granted', topic: 'news.tech' });
  assert.deepEqual(resyncs, [{ reason: 'not_recovered' }], 'once every restore is confirmed or refused');
  t.mock.timers.tick(60_000);
  assert.equal(resyncs.length, 1, 'told once');
});

test('recovered false: a restore left unanswered delays the resync by requestTimeout at most', async (t) => {
  const { client, server } = await connectedClient(t, { requestTimeout: 3000 });
  const resyncs = [];
  client.on('resync', (r) => resyncs.push(r));
  client.connect();
  await flush();
  welcome(server.socket, { session: 's1' });
  const held = client.subscribe('news.sport');
  server.socket.confirmSubscribes();
  await held;
  const socket = await drop(t, server);
  welcome(socket, { session: 's2', recovered: false });
  t.mock.timers.tick(2999);
  assert.deepEqual(resyncs, []);
  t.mock.timers.tick(1);
  assert.deepEqual(resyncs, [{ reason: 'not_recovered' }]);
});

test('a resync still owed at the next drop is told after the next welcome, even a recovered one', async (t) => {
  const { client, server } = await connectedClient(t);
  const resyncs = [];
  client.on('resync', (r) => resyncs.push(r));
  client.connect();
  await flush();
  welcome(server.socket, { session: 's1' });
  const held = client.subscribe('news.sport');
  server.socket.confirmSubscribes();
  await held;
  let socket = await drop(t, server);
  welcome(socket, { session: 's2', recovered: false }); // news.sport asked for again, no answer yet
  socket = await drop(t, server);
  welcome(socket, { session: 's3', recovered: true, topics: ['user.ada', 'news.sport'] });
  assert.deepEqual(resyncs, [{ reason: 'not_recovered' }]);
});

test('a server without sessions: reconnects send no resume and each one asks for a resync', async (t) => {
  const { client, server } = await connectedClient(t);
  const resyncs = [];
  client.on('resync', (r) => resyncs.push(r));
  client.connect();
  await flush();
  server.socket.welcome(); // no session field
  event(server.socket, 'a');
  const socket = await drop(t, server);
  socket.welcome();
  assert.deepEqual(socket.sent[0], { type: 'auth', token: 'tok' });
  assert.deepEqual(resyncs, [{ reason: 'no_session' }]);
});

test('recovered true with dropped topics: they are forgotten and reported like a narrowing refresh', async (t) => {
  const { client, server, errors } = await connectedClient(t);
  const welcomes = [];
  client.on('welcome', (w) => welcomes.push(w));
  client.connect();
  await flush();
  welcome(server.socket, { session: 's1' });
  const held = Promise.all([client.subscribe('news.sport'), client.subscribe('news.tech')]);
  server.socket.confirmSubscribes();
  await held;
  const socket = await drop(t, server);
  welcome(socket, { session: 's2', recovered: true, topics: ['user.ada', 'news.tech'], dropped: ['news.sport'] });
  assert.equal(errors.at(-1).code, 'forbidden');
  assert.equal(errors.at(-1).topic, 'news.sport');
  assert.deepEqual(client.topics.sort(), ['news.tech', 'user.ada']);
  assert.deepEqual(socket.sentOfType('subscribe'), [], 'the dropped topic is not asked for again');
  assert.deepEqual(welcomes.at(-1).dropped, ['news.sport']);
  assert.equal(welcomes.at(-1).recovered, true);
});

test('persistSession: a reloaded page resumes the stored session with its count', async (t) => {
  const storage = new MemoryStorage();
  const page = pageEvents(t);
  const first = await connectedClient(t, { persistSession: storage });
  first.client.connect();
  await flush();
  welcome(first.server.socket, { session: 's1' });
  assert.deepEqual(storage.saved(), { session: 's1', received: 0 }, 'stored at welcome');
  event(first.server.socket, 'a');
  event(first.server.socket, 'b');
  const writesBefore = storage.writes;
  assert.deepEqual(storage.saved(), { session: 's1', received: 0 }, 'not written on every event');
  t.mock.timers.tick(1000);
  assert.deepEqual(storage.saved(), { session: 's1', received: 2 }, 'written within a second');
  assert.equal(storage.writes, writesBefore + 1);
  event(first.server.socket, 'c');
  page.dispatchEvent(new Event('pagehide')); // the page reloads: the browser drops the socket (1001)
  assert.deepEqual(storage.saved(), { session: 's1', received: 3 });
  t.mock.timers.reset(); // the old page is gone, its timers with it

  const other = await connectedClient(t, { persistSession: storage, url: 'ws://elsewhere.test/ws' });
  other.client.connect();
  await flush();
  other.server.socket.open();
  assert.deepEqual(other.server.socket.sent[0], { type: 'auth', token: 'tok' }, 'another URL keeps its own session');
  t.mock.timers.reset();

  const reloaded = await connectedClient(t, { persistSession: storage });
  reloaded.client.connect();
  await flush();
  welcome(reloaded.server.socket, { session: 's2', recovered: true });
  assert.deepEqual(reloaded.server.socket.sent[0].resume, { session: 's1', received: 3 });
  assert.deepEqual(storage.saved(), { session: 's2', received: 3 });
});

test('persistSession: true uses the page sessionStorage', async (t) => {
  const storage = new MemoryStorage();
  storage.setItem('notifier.session ws://notifier.test/ws', JSON.stringify({ session: 'kept', received: 7 }));
  globalThis.sessionStorage = storage;
  t.after(() => delete globalThis.sessionStorage);
  const { client, server } = await connectedClient(t, { persistSession: true });
  client.connect();
  await flush();
  server.socket.open();
  assert.deepEqual(server.socket.sent[0].resume, { session: 'kept', received: 7 });
});

test('persistSession: a stale or malformed stored session is harmless', async (t) => {
  for (const stored of ['{not json', '{"session": 5, "received": 1}', '{"session": "s", "received": -1}', '[]']) {
    const storage = new MemoryStorage();
    storage.setItem('notifier.session ws://notifier.test/ws', stored);
    const { client, server } = await connectedClient(t, { persistSession: storage });
    client.connect();
    await flush();
    welcome(server.socket, { session: 'new' });
    assert.deepEqual(server.socket.sent[0], { type: 'auth', token: 'tok' }, `stored ${stored}`);
    assert.deepEqual(storage.saved(), { session: 'new', received: 0 });
    client.close();
    t.mock.timers.reset();
  }

  // Well formed but expired, or another user's: the server answers false and the page starts afresh.
  const storage = new MemoryStorage();
  storage.setItem('notifier.session ws://notifier.test/ws', JSON.stringify({ session: 'old', received: 40 }));
  const { client, server, errors } = await connectedClient(t, { persistSession: storage });
  const resyncs = [];
  client.on('resync', (r) => resyncs.push(r));
  client.connect();
  await flush();
  welcome(server.socket, { session: 'new', recovered: false });
  assert.deepEqual(server.socket.sent[0].resume, { session: 'old', received: 40 });
  assert.equal(client.state, 'open');
  assert.deepEqual(errors, []);
  assert.deepEqual(resyncs, [{ reason: 'not_recovered' }]);
  assert.deepEqual(storage.saved(), { session: 'new', received: 0 });
});

test('close() sends 1000 and forgets the session, in memory and in storage', async (t) => {
  const storage = new MemoryStorage();
  const { client, server } = await connectedClient(t, { persistSession: storage });
  const resyncs = [];
  client.on('resync', (r) => resyncs.push(r));
  client.connect();
  await flush();
  welcome(server.socket, { session: 's1' });
  event(server.socket, 'a');
  client.close();
  assert.equal(server.sockets[0].closedByClient.code, 1000);
  assert.equal(storage.saved(), null);
  t.mock.timers.tick(5000);
  assert.equal(storage.saved(), null, 'no late write brings it back');
  client.connect();
  await flush();
  welcome(server.socket, { session: 's2' });
  assert.deepEqual(server.socket.sent[0], { type: 'auth', token: 'tok' });
  assert.deepEqual(resyncs, [{ reason: 'no_session' }], 'events between close() and connect() were missed');
});

test('a terminal close forgets the session too', async (t) => {
  const storage = new MemoryStorage();
  const { client, server } = await connectedClient(t, { persistSession: storage });
  client.connect();
  await flush();
  welcome(server.socket, { session: 's1' });
  server.socket.serverClose(4501);
  assert.equal(client.state, 'closed');
  assert.equal(storage.saved(), null);
});

test('persistSession without a usable storage: the client works, sessions last as long as the page', async (t) => {
  const full = new MemoryStorage();
  full.setItem = () => {
    throw new Error('QuotaExceededError');
  };
  for (const persistSession of [true, full]) {
    // No sessionStorage in Node: `true` finds none.
    const { client, server, errors } = await connectedClient(t, { persistSession });
    client.connect();
    await flush();
    welcome(server.socket, { session: 's1' });
    event(server.socket, 'a');
    t.mock.timers.tick(1000);
    const socket = await drop(t, server);
    socket.open();
    assert.deepEqual(socket.sent[0].resume, { session: 's1', received: 1 });
    assert.deepEqual(errors, []);
    client.close();
    t.mock.timers.reset();
  }
});

test('persistSession rejects something that is not a storage', async () => {
  const { NotifierClient } = await import('../../notifier/static/notifier.js');
  assert.throws(
    () => new NotifierClient({ url: 'ws://x.test/ws', token: 't', WebSocket: class {}, persistSession: 'yes' }),
    /persistSession/,
  );
  const partial = { getItem: () => null, setItem: () => {} };
  assert.throws(
    () => new NotifierClient({ url: 'ws://x.test/ws', token: 't', WebSocket: class {}, persistSession: partial }),
    /persistSession/,
  );
});

test('a resync frame from the server is told to the page at once, and the connection goes on', async (t) => {
  const { client, server } = await connectedClient(t);
  const resyncs = [];
  const events = [];
  client.on('resync', (r) => resyncs.push(r));
  client.on('event', (e) => events.push(e.id));
  client.connect();
  await flush();
  welcome(server.socket, { session: 's1' });
  event(server.socket, 'e1');
  server.socket.receive({ type: 'resync', reason: 'routing_lost' });
  event(server.socket, 'e2');
  assert.deepEqual(resyncs, [{ reason: 'routing_lost' }]);
  assert.deepEqual(events, ['e1', 'e2']);
  assert.equal(client.state, 'open');
});
