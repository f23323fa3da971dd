// A Node program in TypeScript, without the DOM lib: tsc --strict checks it against the package's types, with
// the `ws` package's class and Node 22's global WebSocket as the WebSocket option.
import { WebSocket as NodeWebSocket } from 'ws';
import { NotifierClient, type NotifierEvent, type WebSocketConstructor } from 'notifier-push-client';

const client = new NotifierClient({
  url: 'ws://127.0.0.1:8000/ws',
  getToken: () => process.env.NOTIFIER_TOKEN ?? null,
  WebSocket: NodeWebSocket,
});
client.on('event', (event: NotifierEvent) => console.log(event.topic, event.data));
client.connect();
await client.subscribe<{ text: string }>('news.sport', (event) => console.log(event.data.text.length));
client.close();

// Node 22 and newer: the global WebSocket fits as well.
const global: WebSocketConstructor = globalThis.WebSocket;
new NotifierClient({ url: 'ws://127.0.0.1:8000/ws', token: 'a-token', WebSocket: global }).close();

// @ts-expect-error a number is not a WebSocket class
new NotifierClient({ url: 'ws://127.0.0.1:8000/ws', token: 'a-token', WebSocket: 42 });
