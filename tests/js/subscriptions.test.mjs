import assert from 'node:assert/strict';
import { test } from 'node:test';

import { connectedClient, flush } from './fake-websocket.mjs';

test('subscribe resolves on subscribed and routes the topic to its handler', async (t) => {
  const { client, server } = await connectedClient(t);
  client.connect();
  await flush();
  server.socket.welcome();
  const seen = [];
  const subscribed = client.subscribe('news.sport', (event) => seen.push(event.data));
  const [frame] = server.socket.sentOfType('subscribe');
  assert.equal(frame.topic, 'news.sport');
  server.socket.receive({ type: 'subscribed', topic: 'news.sport', id: frame.id });
  await subscribed;
  server.socket.receive({ type: 'event', topic: 'news.sport', id: 'e1', ts: 1, data: 'goal' });
  server.socket.receive({ type: 'event', topic: 'user.ada', id: 'e2', ts: 1, data: 'private' });
  assert.deepEqual(seen, ['goal']);
});

test('subscribe rejects with the error frame code and topic, and the topic is not restored later', async (t) => {
  const { client, server } = await connectedClient(t);
  client.connect();
  await flush();
  server.socket.welcome();
  const refused = client.subscribe('user.bob');
  const [frame] = server.socket.sentOfType('subscribe');
  server.socket.receive({
    type: 'error',
    id: frame.id,
    code: 'forbidden',
    message: 'this token does not grant that topic',
    topic: 'user.bob',
  });
  await assert.rejects(refused, (error) => {
    assert.equal(error.name, 'NotifierError');
    assert.equal(error.code, 'forbidden');
    assert.equal(error.topic, 'user.bob');
    assert.equal(error.message, 'this token does not grant that topic');
    return true;
  });
  assert.ok(!client.topics.includes('user.bob'));
  server.socket.serverClose(1012);
  t.mock.timers.tick(1000);
  await flush();
  server.socket.welcome();
  assert.deepEqual(server.socket.sentOfType('subscribe'), []);
});

test('every subscription is restored after a reconnect, and events flow again', async (t) => {
  const { client, server } = await connectedClient(t);
  client.connect();
  await flush();
  server.socket.welcome();
  const seen = [];
  const first = Promise.all(['news.sport', 'news.tech', 'user.ada.orders'].map((topic) => client.subscribe(topic, (e) => seen.push(e.topic))));
  server.socket.confirmSubscribes();
  await first;

  const confirmed = [];
  client.on('subscribed', ({ topic }) => confirmed.push(topic));
  server.socket.serverClose(1006);
  assert.equal(client.state, 'reconnecting');
  t.mock.timers.tick(1000);
  await flush();
  assert.equal(server.sockets.length, 2);
  server.socket.welcome();
  const restored = server.socket.sentOfType('subscribe').map((frame) => frame.topic).sort();
  // The personal topic comes with the welcome; everything else is asked for again.
  assert.deepEqual(restored, ['news.sport', 'news.tech', 'user.ada.orders']);
  server.socket.confirmSubscribes();
  assert.deepEqual(confirmed.sort(), ['news.sport', 'news.tech', 'user.ada', 'user.ada.orders']);
  server.socket.receive({ type: 'event', topic: 'news.tech', id: 'after', ts: 1, data: {} });
  assert.deepEqual(seen, ['news.tech']);
});

test('subscribe while disconnected waits for the connection, then resolves', async (t) => {
  const { client, server } = await connectedClient(t);
  const subscribed = client.subscribe('news.sport');
  client.connect();
  await flush();
  server.socket.welcome();
  server.socket.confirmSubscribes();
  await subscribed;
  assert.ok(client.topics.includes('news.sport'));
});

test('a resubscription the broker cannot confirm yet is retried, not dropped', async (t) => {
  const { client, server, errors } = await connectedClient(t);
  client.connect();
  await flush();
  server.socket.welcome();
  const subscribed = client.subscribe('news.sport');
  server.socket.confirmSubscribes();
  await subscribed;
  server.socket.serverClose(1006);
  t.mock.timers.tick(1000);
  await flush();
  server.socket.welcome();
  const [again] = server.socket.sentOfType('subscribe');
  server.socket.receive({ type: 'error', id: again.id, code: 'unavailable', message: 'broker unavailable', topic: 'news.sport' });
  assert.equal(errors.at(-1).code, 'unavailable');
  t.mock.timers.tick(20_000);
  assert.equal(server.socket.sentOfType('subscribe').length, 2);
  server.socket.confirmSubscribes();
  assert.ok(client.topics.includes('news.sport'));
});

test('unsubscribe resolves on unsubscribed and the topic is not restored', async (t) => {
  const { client, server } = await connectedClient(t);
  client.connect();
  await flush();
  server.socket.welcome();
  const subscribed = client.subscribe('news.sport');
  server.socket.confirmSubscribes();
  await subscribed;
  const unsubscribed = client.unsubscribe('news.sport');
  const [frame] = server.socket.sentOfType('unsubscribe');
  server.socket.receive({ type: 'unsubscribed', topic: 'news.sport', id: frame.id });
  await unsubscribed;
  server.socket.serverClose(1006);
  t.mock.timers.tick(1000);
  await flush();
  server.socket.welcome();
  assert.deepEqual(server.socket.sentOfType('subscribe'), []);
});

test('requests are bounded: past the limit they fail at once with too_many_pending', async (t) => {
  const { client, server } = await connectedClient(t, { maxPendingRequests: 3 });
  client.connect();
  await flush();
  server.socket.welcome();
  const waiting = ['a.1', 'a.2', 'a.3'].map((topic) => client.subscribe(topic));
  await assert.rejects(client.subscribe('a.4'), { code: 'too_many_pending', topic: 'a.4' });
  assert.equal(server.socket.sentOfType('subscribe').length, 3);
  server.socket.confirmSubscribes();
  await Promise.all(waiting);
});

test('topics are bounded by maxSubscriptions', async (t) => {
  const { client } = await connectedClient(t, { maxSubscriptions: 2 });
  client.subscribe('a.1');
  client.subscribe('a.2');
  await assert.rejects(client.subscribe('a.3'), { code: 'too_many_subscriptions' });
  client.close();
});

test('an unanswered subscribe times out with code timeout', async (t) => {
  const { client, server } = await connectedClient(t, { requestTimeout: 3000 });
  client.connect();
  await flush();
  server.socket.welcome();
  const subscribed = client.subscribe('news.sport');
  t.mock.timers.tick(3000);
  await assert.rejects(subscribed, { code: 'timeout', topic: 'news.sport' });
  assert.ok(!client.topics.includes('news.sport'));
});

test('restoring many topics stays under the server frame rate (no 4004)', async (t) => {
  const { client, server } = await connectedClient(t, { framesPerSecond: 15, framesBurst: 30 });
  client.connect();
  await flush();
  server.socket.welcome();
  // 99 topics plus the personal one: the server's default limit of 100 per connection.
  const all = Array.from({ length: 99 }, (_, i) => client.subscribe(`news.n${i}`));
  assert.equal(server.socket.sentOfType('subscribe').length, 30, 'the burst goes out at once');
  t.mock.timers.tick(1000);
  const afterOneSecond = server.socket.sentOfType('subscribe').length;
  assert.ok(afterOneSecond >= 44 && afterOneSecond <= 46, `${afterOneSecond} sent after 1 s`);
  for (let step = 0; step < 200; step++) t.mock.timers.tick(50);
  assert.equal(server.socket.sentOfType('subscribe').length, 99);
  await assert.rejects(client.subscribe('news.one-too-many'), { code: 'too_many_subscriptions' });
  server.socket.confirmSubscribes();
  await Promise.all(all);
});
