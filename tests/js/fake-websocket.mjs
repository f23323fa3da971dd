// A WebSocket stand-in the tests drive from the server's side: open it, send it frames, close it with a code.

export class FakeServer {
  constructor() {
    /** @type {FakeSocket[]} */
    this.sockets = [];
    const server = this;
    this.WebSocket = class extends FakeSocket {
      constructor(url) {
        super(url);
        server.sockets.push(this);
      }
    };
  }

  /** The most recent socket the client opened. */
  get socket() {
    return this.sockets.at(-1);
  }
}

export class FakeSocket {
  constructor(url) {
    this.url = url;
    this.readyState = 0;
    /** @type {any[]} frames the client sent, parsed */
    this.sent = [];
    /** @type {{code: number, reason: string} | null} */
    this.closedByClient = null;
    this.onopen = null;
    this.onmessage = null;
    this.onclose = null;
    this.onerror = null;
  }

  send(text) {
    if (this.readyState !== 1) throw new Error(`InvalidStateError: send in readyState ${this.readyState}`);
    this.sent.push(JSON.parse(text));
  }

  close(code = 1000, reason = '') {
    this.closedByClient = { code, reason };
    this.readyState = 3;
  }

  // The server's side.

  open() {
    this.readyState = 1;
    this.onopen?.({});
  }

  receive(frame) {
    this.onmessage?.({ data: JSON.stringify(frame) });
  }

  /** Open, check the auth frame, and welcome `user`. */
  welcome(user = 'ada', expires = Math.floor(Date.now() / 1000) + 3600) {
    this.open();
    this.receive({ type: 'welcome', user, topics: [`user.${user}`], expires });
  }

  /** The handshake failed: an error event, and (as browsers do) the close event after it unless `closeEvent` is false. */
  failHandshake({ closeEvent = true } = {}) {
    this.readyState = 3;
    this.onerror?.({});
    if (closeEvent) this.onclose?.({ code: 1006, reason: '' });
  }

  serverClose(code, reason = '') {
    this.readyState = 3;
    this.onclose?.({ code, reason });
  }

  /** Frames of one type the client sent. */
  sentOfType(type) {
    return this.sent.filter((frame) => frame.type === type);
  }

  /** Answer every subscribe frame not answered yet with `subscribed`. */
  confirmSubscribes() {
    this._answered ??= new Set();
    for (const frame of this.sentOfType('subscribe')) {
      if (this._answered.has(frame.id)) continue;
      this._answered.add(frame.id);
      this.receive({ type: 'subscribed', topic: frame.topic, id: frame.id });
    }
  }
}

/** Let pending promise callbacks run (getToken, then-chains); setImmediate is not mocked by the tests. */
export function flush() {
  return new Promise((resolve) => setImmediate(resolve));
}

/**
 * A client on a fake server with mocked timers and clock; `t` is the node:test context.
 * @param {import('node:test').TestContext} t
 * @param {object} [options]  NotifierClient options
 */
export async function connectedClient(t, options = {}) {
  const { NotifierClient } = await import('../../notifier/static/notifier.js');
  t.mock.timers.enable({ apis: ['setTimeout', 'Date'], now: 1_700_000_000_000 });
  const server = new FakeServer();
  const client = new NotifierClient({
    url: 'ws://notifier.test/ws',
    token: 'tok',
    WebSocket: server.WebSocket,
    pingInterval: 1e9, // keep-alive tests opt in; elsewhere unanswered pings would end the connection
    transports: ['websocket'], // the fallback's tests (transports.test.mjs) opt in
    ...options,
  });
  const states = [];
  const errors = [];
  client.on('state', (state, detail) => states.push({ state, ...detail }));
  client.on('error', (error) => errors.push(error));
  t.after(() => client.close());
  return { client, server, states, errors };
}
