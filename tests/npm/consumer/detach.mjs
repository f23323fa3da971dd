// Sockets the client abandons or closes while they are still connecting, with the `ws` package: a server that
// accepts TCP but never answers the handshake makes the client give up twice (connectTimeout), then the client
// is closed while it dials a third time. Node's `ws` emits 'error' for each of those sockets; the process must
// live through them all and end by itself. Prints the states seen, as JSON.
import net from 'node:net';
import { WebSocket } from 'ws';
import { NotifierClient } from 'notifier-push-client';

const accepted = new Set();
const silent = net.createServer((socket) => accepted.add(socket)); // accepts, never answers
await new Promise((resolve) => silent.listen(0, '127.0.0.1', resolve));
const url = `ws://127.0.0.1:${silent.address().port}/ws`;
const client = new NotifierClient({
  url,
  token: 'never-read',
  WebSocket,
  connectTimeout: 100,
  minReconnectDelay: 10,
  maxReconnectDelay: 20,
});
const states = [];
const abandonedTwice = new Promise((resolve) => {
  client.on('state', (state) => {
    states.push(state);
    if (states.filter((seen) => seen === 'reconnecting').length === 2) resolve();
  });
});
client.connect();
await abandonedTwice;
await new Promise((resolve) => setTimeout(resolve, 60)); // past maxReconnectDelay: the third socket is dialing
client.close();
await new Promise((resolve) => setTimeout(resolve, 200)); // a closed socket's 'error' comes on a later tick
for (const socket of accepted) socket.destroy();
silent.close();
console.log(JSON.stringify({ states }));
