import assert from 'node:assert/strict';
import { test } from 'node:test';

import { connectedClient, flush } from './fake-websocket.mjs';

test('with connectProxy the client signs in without a token, and resumes without one', async (t) => {
  const { client, server } = await connectedClient(t, { token: undefined, connectProxy: true });
  client.connect();
  await flush();
  server.socket.open();
  assert.deepEqual(server.socket.sent[0], { type: 'auth' });
  server.socket.receive({ type: 'welcome', user: 'ada', topics: ['user.ada'], expires: 1_700_003_600, session: 's1' });
  server.socket.serverClose(1012);
  t.mock.timers.tick(1000);
  await flush();
  server.socket.open();
  assert.deepEqual(server.socket.sent[0], { type: 'auth', resume: { session: 's1', received: 0 } });
});

test('with connectProxy, 4001 (the sign-in expired) reconnects and 4504 (refused) stops', async (t) => {
  const { client, server, errors } = await connectedClient(t, { token: undefined, connectProxy: true });
  client.connect();
  await flush();
  server.socket.welcome('ada', 1_700_003_600);
  server.socket.serverClose(4001);
  assert.equal(client.state, 'reconnecting');
  t.mock.timers.tick(1000);
  await flush();
  server.socket.welcome('ada', 1_700_007_200);
  server.socket.serverClose(4504, 'refused by the application');
  assert.equal(client.state, 'closed');
  assert.equal(errors.at(-1).code, 'refused_by_application');
});

test('without token, getToken or connectProxy the client refuses to start', async () => {
  const { NotifierClient } = await import('../../notifier/static/notifier.js');
  assert.throws(() => new NotifierClient({ url: 'ws://notifier.test/ws' }), /connectProxy/);
});
