import assert from 'node:assert/strict';
import { test } from 'node:test';

import { connectedClient, flush } from './fake-websocket.mjs';

test('pings on an interval; answered pings keep the connection', async (t) => {
  const { client, server } = await connectedClient(t, { pingInterval: 10_000, pongTimeout: 3_000 });
  client.connect();
  await flush();
  server.socket.welcome();
  for (let round = 1; round <= 3; round++) {
    t.mock.timers.tick(10_000);
    const pings = server.socket.sentOfType('ping');
    assert.equal(pings.length, round);
    t.mock.timers.tick(1_000);
    server.socket.receive({ type: 'pong', id: pings.at(-1).id });
    t.mock.timers.tick(2_000);
  }
  assert.equal(client.state, 'open');
  assert.equal(server.sockets.length, 1);
});

test('no pong within pongTimeout: the connection is dropped and the client reconnects', async (t) => {
  const { client, server, states } = await connectedClient(t, { pingInterval: 10_000, pongTimeout: 3_000 });
  client.connect();
  await flush();
  server.socket.welcome();
  t.mock.timers.tick(10_000);
  assert.equal(server.socket.sentOfType('ping').length, 1);
  t.mock.timers.tick(2_999);
  assert.equal(client.state, 'open');
  t.mock.timers.tick(1);
  assert.equal(states.at(-1).state, 'reconnecting');
  assert.ok(server.sockets[0].closedByClient, 'the dead socket is closed, not left dangling');
  // Whatever the dead socket does later is ignored.
  server.sockets[0].serverClose(1006);
  server.sockets[0].receive({ type: 'event', topic: 'user.ada', id: 'late', ts: 1, data: 1 });
  t.mock.timers.tick(states.at(-1).delay);
  await flush();
  assert.equal(server.sockets.length, 2);
  server.socket.welcome();
  assert.equal(client.state, 'open');
});
