// The HTTP stream transport on its own (transports: ['sse']): the request, frames, commands, refusals, ends.

import assert from 'node:assert/strict';
import { test } from 'node:test';

import { fallbackClient, settle } from './fake-fetch.mjs';

/** A client on the HTTP stream only, connected and welcomed as session s1. */
async function onStream(t, options = {}, welcome = {}) {
  const fixture = await fallbackClient(t, { transports: ['sse'], ...options });
  fixture.client.connect();
  await settle();
  fixture.http.stream.welcome(welcome);
  await settle();
  return fixture;
}

/** Answer each waiting subscribe command on the stream, as the server does (202, then `subscribed`). */
async function confirmCommands(http, stream = http.stream) {
  for (let command = http.waiting('POST')[0]; command; command = http.waiting('POST')[0]) {
    command.accept();
    if (command.frame.type === 'subscribe') stream.send({ type: 'subscribed', topic: command.frame.topic, id: command.frame.id });
    await settle();
  }
}

test('the stream request: derived URL, bearer token, text/event-stream, no resume on the first one', async (t) => {
  const { client, http, states } = await fallbackClient(t, { transports: ['sse'] });
  client.connect();
  await settle();
  const request = http.stream;
  assert.equal(request.url, 'https://notifier.test/sse');
  assert.equal(request.method, 'GET');
  assert.equal(request.headers.authorization, 'Bearer tok');
  assert.equal(request.headers.accept, 'text/event-stream');
  assert.equal(request.headers['last-event-id'], undefined);
  assert.equal(request.credentials, 'same-origin');
  assert.equal(client.transport, 'sse');
  assert.deepEqual(states.map((s) => [s.state, s.transport]), [['connecting', 'sse']]);

  request.welcome({ session: 's1' });
  await settle();
  assert.equal(client.state, 'open');
  assert.deepEqual(states.at(-1), { state: 'open', recovered: false, transport: 'sse' });
});

test('with connectProxy the stream carries no token and sends the cookies, also to commands', async (t) => {
  const { client, http } = await onStream(t, { token: undefined, connectProxy: true });
  assert.equal(http.stream.headers.authorization, undefined);
  assert.equal(http.stream.credentials, 'include');
  client.subscribe('news.sport').catch(() => {});
  await settle();
  assert.equal(http.commands[0].credentials, 'include');
});

test('events reach the page in order, also when frames are split across chunks and heartbeats come between', async (t) => {
  const { http, seen } = await onStream(t);
  const stream = http.stream;
  stream.event('a', { n: 1 });
  stream.write(': heartbeat\n\nid: s1:2\r\ndata: {"type":"event","topic":"user.ada","id":"b",');
  await settle();
  stream.write('"ts":1,"data":null}\r\n\r\n: heartbeat\n\n');
  stream.event('c', { n: 3 });
  await settle();
  assert.deepEqual(seen, ['a', 'b', 'c']);
});

test('commands are POSTed as text/plain to the stream key, one at a time, in order', async (t) => {
  const { client, http } = await onStream(t);
  const done = [];
  for (const topic of ['a.one', 'a.two', 'a.three']) client.subscribe(topic).then(() => done.push(topic));
  await settle();
  assert.equal(http.commands.length, 1, 'the next command waits for the answer to the previous one');
  const first = http.commands[0];
  assert.equal(first.url, 'https://notifier.test/sse/key-1');
  assert.equal(first.headers['content-type'], 'text/plain;charset=UTF-8');
  assert.equal(first.headers.authorization, undefined, 'no preflight: the key names the stream');
  assert.deepEqual(first.frame, { type: 'subscribe', id: first.frame.id, topic: 'a.one' });

  first.accept();
  await settle();
  assert.equal(http.commands.length, 2);
  http.stream.send({ type: 'subscribed', topic: 'a.one', id: first.frame.id });
  await confirmCommands(http);
  assert.deepEqual(http.commands.map((c) => c.frame.topic), ['a.one', 'a.two', 'a.three']);
  assert.deepEqual(done, ['a.one', 'a.two', 'a.three'], 'answers came on the stream, matched by id');
});

test('a token refresh goes out as a command too', async (t) => {
  const options = { token: undefined, getToken: () => 'fresh', refreshBefore: 1000 };
  const { client, http } = await onStream(t, options, { heartbeat: 3600 }); // no heartbeats written meanwhile
  const refreshed = [];
  client.on('refreshed', (r) => refreshed.push(r));
  t.mock.timers.tick(3600_000 - 1000);
  await settle();
  const command = http.commands[0];
  assert.deepEqual(command.frame, { type: 'refresh', id: command.frame.id, token: 'fresh' });
  command.accept();
  http.stream.send({ type: 'refreshed', id: command.frame.id, expires: 2_000_000_000, dropped: [] });
  await settle();
  assert.equal(refreshed.length, 1);
});

test('a command refused as too big fails its request; the stream goes on', async (t) => {
  const { client, http, states } = await onStream(t);
  const refused = client.subscribe('x'.repeat(10));
  await settle();
  http.commands[0].respond(413, { error: 'frame_too_big', message: 'over 65536 bytes' });
  await assert.rejects(refused, { code: 'frame_too_big' });
  assert.equal(client.state, 'open');
  assert.equal(http.streams.length, 1);
  assert.equal(http.stream.aborted, false);
  assert.equal(states.at(-1).state, 'open');
});

test('an unknown stream key makes the client drop the stream and resume on a new one', async (t) => {
  const { client, http, states } = await onStream(t);
  http.stream.event('a', { n: 1 });
  client.subscribe('news.sport').catch(() => {});
  await settle();
  http.commands[0].respond(404, { error: 'unknown_stream', message: 'no such stream' });
  await settle();
  assert.equal(http.streams[0].aborted, true);
  assert.equal(states.at(-1).state, 'reconnecting');
  assert.equal(states.at(-1).code, 1006);
  t.mock.timers.tick(states.at(-1).delay);
  await settle();
  assert.equal(http.streams.length, 2);
  assert.equal(http.stream.headers['last-event-id'], 's1:1');
});

test('a 503 command is sent again after Retry-After, then the rest follow in order', async (t) => {
  const { client, http } = await onStream(t);
  client.subscribe('a.one');
  client.subscribe('a.two');
  await settle();
  http.commands[0].respond(503, { error: 'unavailable', message: 'no answer' }, { 'Retry-After': '2' });
  await settle();
  t.mock.timers.tick(1999);
  await settle();
  assert.equal(http.commands.length, 1);
  t.mock.timers.tick(1);
  await settle();
  assert.deepEqual(http.commands.map((c) => c.frame.topic), ['a.one', 'a.one']);
  await confirmCommands(http);
  assert.deepEqual(http.commands.map((c) => c.frame.topic), ['a.one', 'a.one', 'a.two']);
  assert.equal(http.streams.length, 1);
});

test('a command that cannot be sent ends the stream; the client resumes on a new one', async (t) => {
  const { client, http, states } = await onStream(t);
  client.subscribe('a.one').catch(() => {});
  await settle();
  http.commands[0].fail();
  await settle();
  assert.equal(states.at(-1).state, 'reconnecting');
  assert.equal(http.streams[0].aborted, true);
});

test('a close message is the close code: 1012 resumes, 4503 stops', async (t) => {
  const { client, http, states, errors } = await onStream(t);
  http.stream.event('a', { n: 1 });
  http.stream.event('b', { n: 2 });
  http.stream.close(1012, 'server restarting');
  await settle();
  assert.deepEqual(
    [states.at(-1).state, states.at(-1).code, states.at(-1).reason],
    ['reconnecting', 1012, 'server restarting'],
  );
  t.mock.timers.tick(states.at(-1).delay);
  await settle();
  assert.equal(http.stream.headers['last-event-id'], 's1:2', 'the session and every event received');
  http.stream.welcome({ session: 's2', recovered: true, received: 2 });
  await settle();
  http.stream.close(4503, 'revoked');
  await settle();
  assert.equal(client.state, 'closed');
  assert.equal(errors.at(-1).code, 'disconnected');
  assert.equal(errors.at(-1).closeCode, 4503);
});

test('a stream that ends without a close message is an abnormal close, resumed', async (t) => {
  const { http, states } = await onStream(t);
  http.stream.event('a', { n: 1 });
  http.stream.end();
  await settle();
  assert.deepEqual([states.at(-1).state, states.at(-1).code], ['reconnecting', 1006]);
  t.mock.timers.tick(states.at(-1).delay);
  await settle();
  assert.equal(http.stream.headers['last-event-id'], 's1:1');
});

test('a stream silent for twice its heartbeat is dropped and resumed; heartbeats keep it', async (t) => {
  const { client, http, states } = await onStream(t);
  const stream = http.stream;
  for (let i = 0; i < 5; i += 1) {
    t.mock.timers.tick(14_000);
    stream.write(': heartbeat\n\n');
    await settle();
  }
  assert.equal(client.state, 'open', 'heartbeats every 14 s keep a 15 s stream alive');
  stream.event('a', { n: 1 });
  await settle();
  t.mock.timers.tick(29_999);
  await settle();
  assert.equal(client.state, 'open');
  t.mock.timers.tick(1);
  await settle();
  assert.equal(stream.aborted, true);
  assert.deepEqual([states.at(-1).state, states.at(-1).code], ['reconnecting', 1006]);
  assert.match(states.at(-1).reason, /silent for 30 s/);
  t.mock.timers.tick(states.at(-1).delay);
  await settle();
  assert.equal(http.stream.headers['last-event-id'], 's1:1');
});

test('close() sends DELETE with keepalive and drops the stream only after it', async (t) => {
  const { client, http, states } = await onStream(t);
  const stream = http.stream;
  client.close();
  await settle();
  const [deletion] = http.waiting('DELETE');
  assert.equal(deletion.url, 'https://notifier.test/sse/key-1');
  assert.equal(deletion.keepalive, true);
  assert.equal(stream.aborted, false, 'a stream dropped first would only park the session');
  assert.equal(states.at(-1).state, 'closed');
  deletion.respond(204);
  await settle();
  assert.equal(stream.aborted, true);
});

test('a lost connection drops the stream without DELETE: the session parks for the resume', async (t) => {
  const { http } = await onStream(t, { requestTimeout: 1e9 });
  http.stream.end();
  await settle();
  assert.deepEqual(http.waiting('DELETE'), []);
});

test('HTTP refusals: the JSON code is the close code; 4500 with a fixed token stops at once', async (t) => {
  const { client, http, errors } = await fallbackClient(t, { transports: ['sse'] });
  client.connect();
  await settle();
  http.stream.respond(401, { error: 'invalid_token', code: 4500, message: 'bad signature' });
  await settle();
  assert.equal(client.state, 'closed');
  assert.equal(errors.at(-1).code, 'invalid_token');
  assert.equal(errors.at(-1).closeCode, 4500);
  t.mock.timers.tick(600_000);
  await settle();
  assert.equal(http.streams.length, 1);
});

test('HTTP refusals: a malformed resume (400, 4501) stops; 4502 stops', async (t) => {
  for (const [status, code, error] of [[400, 4501, 'protocol_violation'], [429, 4502, 'user_connection_limit']]) {
    const { client, http, errors } = await fallbackClient(t, { transports: ['sse'] });
    client.connect();
    await settle();
    http.stream.respond(status, { error: 'x', code, message: 'm' }, { 'Retry-After': '1' });
    await settle();
    assert.equal(client.state, 'closed', `${code}`);
    assert.equal(errors.at(-1).code, error);
    t.mock.timers.reset();
  }
});

test('HTTP refusals: a refused Origin stops with origin_not_allowed instead of retrying', async (t) => {
  const { client, http, errors } = await fallbackClient(t, { transports: ['sse'] });
  client.connect();
  await settle();
  http.stream.respond(403, { error: 'origin_not_allowed', message: 'origin https://evil.example not allowed' });
  await settle();
  assert.equal(client.state, 'closed');
  assert.equal(errors.at(-1).code, 'origin_not_allowed');
  assert.match(errors.at(-1).message, /NOTIFIER_ALLOWED_ORIGINS/);
});

test('HTTP refusals: a busy service is retried no sooner than its Retry-After, on the same transport', async (t) => {
  const { client, http, states } = await fallbackClient(t, { transports: ['sse'] });
  client.connect();
  await settle();
  http.stream.respond(429, { error: 'too_many_new_connections', message: 'slow down' }, { 'Retry-After': '3' });
  await settle();
  assert.equal(states.at(-1).state, 'reconnecting');
  assert.equal(states.at(-1).code, 1013);
  assert.ok(states.at(-1).delay >= 3000, `delay ${states.at(-1).delay}`);
  t.mock.timers.tick(states.at(-1).delay);
  await settle();
  assert.equal(http.streams.length, 2);
  http.stream.respond(503, { error: 'instance_full', code: 4003, message: 'full' }, { 'Retry-After': '1' });
  await settle();
  assert.deepEqual([client.state, states.at(-1).code], ['reconnecting', 4003]);
});

test('token refusals on the stream renew the token and stop after maxTokenRefusals', async (t) => {
  const { client, http, states, errors } = await fallbackClient(t, {
    transports: ['sse'],
    token: undefined,
    getToken: () => 'tok',
  });
  client.connect();
  for (let i = 0; i < 3; i += 1) {
    await settle();
    http.stream.respond(401, { error: 'token_expired', code: 4001, message: 'expired' });
    await settle();
    if (client.state === 'reconnecting') t.mock.timers.tick(states.at(-1).delay);
  }
  assert.equal(client.state, 'closed');
  assert.equal(errors.at(-1).code, 'token_expired');
  assert.equal(http.streams.length, 3);
});
