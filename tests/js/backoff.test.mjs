import assert from 'node:assert/strict';
import { test } from 'node:test';

import { backoffDelay, refreshDelay } from '../../notifier/static/notifier.js';
import { connectedClient, flush } from './fake-websocket.mjs';

test('backoff stays within [0, min(cap, base * 2^attempt))', () => {
  for (let attempt = 0; attempt < 40; attempt++) {
    const ceiling = Math.min(20000, 500 * 2 ** attempt);
    assert.equal(backoffDelay(attempt, 500, 20000, () => 0), 0);
    const highest = backoffDelay(attempt, 500, 20000, () => 0.999999);
    assert.ok(highest < ceiling && highest >= ceiling - 1, `attempt ${attempt}: ${highest} vs ${ceiling}`);
  }
});

test('backoff is fully jittered: delays spread over the whole range', () => {
  const delays = Array.from({ length: 2000 }, () => backoffDelay(5, 500, 20000));
  const ceiling = 16000;
  assert.ok(delays.every((delay) => delay >= 0 && delay < ceiling));
  // Each quarter of the range gets a fair share, so clients that lost the same server do not return together.
  for (let quarter = 0; quarter < 4; quarter++) {
    const inQuarter = delays.filter((d) => d >= (quarter * ceiling) / 4 && d < ((quarter + 1) * ceiling) / 4).length;
    assert.ok(inQuarter > 350, `quarter ${quarter} holds only ${inQuarter} of 2000`);
  }
});

test('reconnect delays grow exponentially and are capped', async (t) => {
  t.mock.method(Math, 'random', () => 0.999999);
  const { client, server, states } = await connectedClient(t, { minReconnectDelay: 100, maxReconnectDelay: 3000 });
  client.connect();
  await flush();
  const delays = [];
  for (let attempt = 0; attempt < 8; attempt++) {
    server.socket.serverClose(1006);
    const reconnecting = states.at(-1);
    assert.equal(reconnecting.state, 'reconnecting');
    delays.push(reconnecting.delay);
    const dialed = server.sockets.length;
    t.mock.timers.tick(reconnecting.delay);
    await flush();
    assert.equal(server.sockets.length, dialed + 1, 'dials again once the delay has passed');
  }
  assert.deepEqual(delays, [99, 199, 399, 799, 1599, 2999, 2999, 2999]);
});

test('a welcome resets the backoff', async (t) => {
  t.mock.method(Math, 'random', () => 0.999999);
  const { client, server, states } = await connectedClient(t, { minReconnectDelay: 100 });
  client.connect();
  await flush();
  for (let attempt = 0; attempt < 4; attempt++) {
    server.socket.serverClose(1006);
    t.mock.timers.tick(states.at(-1).delay);
    await flush();
  }
  server.socket.welcome();
  server.socket.serverClose(1006);
  assert.equal(states.at(-1).delay, 99);
});

test('refresh is planned ahead of expiry, never later than half the remaining lifetime', () => {
  assert.equal(refreshDelay(3_600_000, 0, 60_000), 3_540_000);
  assert.equal(refreshDelay(10_000, 0, 60_000), 5_000);
  assert.equal(refreshDelay(1_000, 2_000, 60_000), 0);
});
