// A Node program that uses the package as its README says: connects to NOTIFIER_URL with NOTIFIER_TOKEN,
// subscribes TOPIC and, at the first event on it, closes the client and lets the process end by itself.
// Each step is a JSON line on stdout. USE_WS=1 passes the `ws` package's WebSocket; otherwise the runtime's
// global one is used (Node 22), or the constructor throws.
import { NotifierClient } from 'notifier-push-client';

const say = (line) => console.log(JSON.stringify(line));
const options = { url: process.env.NOTIFIER_URL, token: process.env.NOTIFIER_TOKEN };
if (process.env.USE_WS === '1') options.WebSocket = (await import('ws')).WebSocket;
const client = new NotifierClient(options);
client.on('error', (error) => say({ error: error.code, message: error.message }));
client.on('state', (state) => say({ state }));
client.connect();
await client.subscribe(process.env.TOPIC, (event) => {
  say({ event });
  client.close();
});
say({ subscribed: process.env.TOPIC });
