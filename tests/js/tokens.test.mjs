import assert from 'node:assert/strict';
import { test } from 'node:test';

import { connectedClient, flush } from './fake-websocket.mjs';

function tokenSource() {
  let issued = 0;
  const source = {
    calls: 0,
    async getToken() {
      source.calls += 1;
      issued += 1;
      return `token-${issued}`;
    },
  };
  return source;
}

test('getToken is called for every connect', async (t) => {
  const tokens = tokenSource();
  const { client, server } = await connectedClient(t, { token: undefined, getToken: tokens.getToken });
  client.connect();
  await flush();
  server.socket.open();
  assert.deepEqual(server.socket.sent[0], { type: 'auth', token: 'token-1' });
  server.socket.receive({ type: 'welcome', user: 'ada', topics: ['user.ada'], expires: 1_700_003_600 });
  server.socket.serverClose(1012);
  t.mock.timers.tick(1000);
  await flush();
  server.socket.open();
  assert.deepEqual(server.socket.sent[0], { type: 'auth', token: 'token-2' });
});

test('the token is refreshed before it expires, over the open connection', async (t) => {
  const tokens = tokenSource();
  const { client, server, states } = await connectedClient(t, {
    token: undefined,
    getToken: tokens.getToken,
    refreshBefore: 60_000,
    pingInterval: 1e9,
  });
  const refreshed = [];
  client.on('refreshed', (answer) => refreshed.push(answer));
  client.connect();
  await flush();
  const now = Math.floor(Date.now() / 1000);
  server.socket.welcome('ada', now + 300);
  t.mock.timers.tick(239_000);
  await flush();
  assert.deepEqual(server.socket.sentOfType('refresh'), [], 'not yet');
  t.mock.timers.tick(1_000);
  await flush();
  const [frame] = server.socket.sentOfType('refresh');
  assert.equal(frame.token, 'token-2');
  server.socket.receive({ type: 'refreshed', id: frame.id, expires: now + 600, dropped: [] });
  await flush();
  assert.deepEqual(refreshed, [{ expires: now + 600, dropped: [] }]);
  assert.equal(client.expires, now + 600);
  t.mock.timers.tick(300_000);
  await flush();
  assert.equal(server.socket.sentOfType('refresh').length, 2, 'the renewed token is renewed in turn');
  assert.equal(server.sockets.length, 1, 'one connection throughout');
  assert.deepEqual(
    states.map((s) => s.state),
    ['connecting', 'open'],
  );
});

test('a short-lived token is refreshed halfway through its life', async (t) => {
  const tokens = tokenSource();
  const { client, server } = await connectedClient(t, { token: undefined, getToken: tokens.getToken });
  client.connect();
  await flush();
  server.socket.welcome('ada', Math.floor(Date.now() / 1000) + 10);
  t.mock.timers.tick(5_000);
  await flush();
  assert.equal(server.socket.sentOfType('refresh').length, 1);
});

test('topics the renewed token no longer grants are dropped and reported', async (t) => {
  const tokens = tokenSource();
  const { client, server, errors } = await connectedClient(t, { token: undefined, getToken: tokens.getToken });
  client.connect();
  await flush();
  server.socket.welcome('ada', Math.floor(Date.now() / 1000) + 10);
  const subscribed = client.subscribe('news.sport');
  server.socket.confirmSubscribes();
  await subscribed;
  t.mock.timers.tick(5_000);
  await flush();
  const [frame] = server.socket.sentOfType('refresh');
  server.socket.receive({ type: 'refreshed', id: frame.id, expires: 1_700_001_000, dropped: ['news.sport'] });
  await flush();
  assert.ok(!client.topics.includes('news.sport'));
  assert.equal(errors.at(-1).code, 'forbidden');
  assert.equal(errors.at(-1).topic, 'news.sport');
});

test('a refused refresh is reported and tried again while the old token lasts', async (t) => {
  const tokens = tokenSource();
  const { client, server, errors } = await connectedClient(t, { token: undefined, getToken: tokens.getToken });
  client.connect();
  await flush();
  server.socket.welcome('ada', Math.floor(Date.now() / 1000) + 100);
  t.mock.timers.tick(50_000);
  await flush();
  const [frame] = server.socket.sentOfType('refresh');
  server.socket.receive({ type: 'error', id: frame.id, code: 'invalid_token', message: 'bad signature' });
  await flush();
  assert.equal(errors.at(-1).code, 'invalid_token');
  assert.equal(client.state, 'open', 'the old token stays in force');
  t.mock.timers.tick(25_000);
  await flush();
  assert.equal(server.socket.sentOfType('refresh').length, 2);
});

test('4001 (expired): a fresh token is fetched and the client reconnects', async (t) => {
  const tokens = tokenSource();
  const { client, server, states } = await connectedClient(t, { token: undefined, getToken: tokens.getToken });
  client.connect();
  await flush();
  server.socket.welcome();
  server.socket.serverClose(4001, 'token expired');
  assert.equal(states.at(-1).state, 'reconnecting');
  t.mock.timers.tick(states.at(-1).delay);
  await flush();
  server.socket.open();
  assert.deepEqual(server.socket.sent[0], { type: 'auth', token: 'token-2' });
});

for (const [code, errorCode] of [
  [4001, 'token_expired'],
  [4500, 'invalid_token'],
]) {
  test(`${code} repeated: the client gives up after maxTokenRefusals instead of hammering`, async (t) => {
    const tokens = tokenSource();
    const { client, server, states, errors } = await connectedClient(t, {
      token: undefined,
      getToken: tokens.getToken,
      maxTokenRefusals: 3,
    });
    client.connect();
    await flush();
    for (let refusal = 1; refusal <= 3; refusal++) {
      server.socket.open();
      server.socket.serverClose(code);
      if (refusal < 3) {
        assert.equal(states.at(-1).state, 'reconnecting');
        t.mock.timers.tick(states.at(-1).delay);
        await flush();
      }
    }
    assert.equal(client.state, 'closed');
    assert.equal(errors.at(-1).code, errorCode);
    assert.equal(errors.at(-1).closeCode, code);
    assert.match(errors.at(-1).message, /3 times/);
    assert.equal(tokens.calls, 3, 'a new token for every attempt');
    t.mock.timers.tick(600_000);
    await flush();
    assert.equal(server.sockets.length, 3, 'no more attempts');
  });
}

test('4500 with a fixed token stops at once: the same token would fail again', async (t) => {
  const { client, server, errors } = await connectedClient(t);
  client.connect();
  await flush();
  server.socket.open();
  server.socket.serverClose(4500, 'invalid token');
  assert.equal(client.state, 'closed');
  assert.equal(errors.at(-1).code, 'invalid_token');
});

test('getToken returning null (signed out) stops the client', async (t) => {
  const { client, server, errors } = await connectedClient(t, { token: undefined, getToken: async () => null });
  client.connect();
  await flush();
  assert.equal(client.state, 'closed');
  assert.equal(errors.at(-1).code, 'no_token');
  assert.equal(server.sockets.length, 0);
});

test('getToken throwing is reported and retried with backoff', async (t) => {
  let calls = 0;
  const getToken = async () => {
    calls += 1;
    if (calls === 1) throw new Error('auth service down');
    return 'token-ok';
  };
  const { client, server, states, errors } = await connectedClient(t, { token: undefined, getToken });
  client.connect();
  await flush();
  assert.equal(errors.at(-1).code, 'token_unavailable');
  assert.equal(states.at(-1).state, 'reconnecting');
  t.mock.timers.tick(states.at(-1).delay);
  await flush();
  server.socket.welcome();
  assert.equal(client.state, 'open');
});
