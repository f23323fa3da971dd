// A page in TypeScript (the DOM lib): tsc --strict checks it against the package's types.
import {
  CloseCode,
  NotifierClient,
  NotifierError,
  type ConnectionState,
  type NotifierEvent,
  type StateDetail,
} from 'notifier-push-client';

interface Score {
  home: number;
  away: number;
}

const client = new NotifierClient({
  url: '/ws',
  getToken: async () => (await fetch('/api/notifier-token', { credentials: 'include' })).text(),
  persistSession: true,
});
client.on('state', (state: ConnectionState, detail: StateDetail) => {
  document.title = detail.code === CloseCode.SERVER_RESTART ? 'restarting' : state;
});
client.on('error', (error: NotifierError) => console.warn(error.code, error.topic, error.closeCode));
client.on('resync', ({ reason }) => console.info(reason));
client.connect();
await client.subscribe<Score>('news.sport', (event: NotifierEvent<Score>) => {
  const home: number = event.data.home;
  console.log(home);
});

// The page's own WebSocket class fits the option.
const withPageSocket = new NotifierClient({ url: '/ws', token: 'a-token', WebSocket });
withPageSocket.close();

// The types are really checked: each of these is an error.
// @ts-expect-error url is required
new NotifierClient({ token: 'a-token' });
// @ts-expect-error a number is not a WebSocket class
new NotifierClient({ url: '/ws', token: 'a-token', WebSocket: 42 });
// @ts-expect-error no such event
client.on('no-such-event', () => {});
