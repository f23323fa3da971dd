// A fetch stand-in the tests drive from the server's side, for the HTTP stream (`/sse`): every request waits
// until the test answers it; a stream's body is a real ReadableStream the test writes chunks into.

import { FakeServer, flush } from './fake-websocket.mjs';

const encoder = new TextEncoder();

export class FakeHttp {
  constructor() {
    /** @type {FakeRequest[]} every request, oldest first */
    this.requests = [];
    this.fetch = (input, init = {}) => {
      const request = new FakeRequest(String(input), init);
      this.requests.push(request);
      return request.response;
    };
  }

  /** The GET requests: one per stream the client opened. */
  get streams() {
    return this.requests.filter((request) => request.method === 'GET');
  }

  /** The most recent stream. */
  get stream() {
    return this.streams.at(-1);
  }

  /** The commands (POST) the client sent, in order. */
  get commands() {
    return this.requests.filter((request) => request.method === 'POST');
  }

  /** Requests of `method` not answered yet. */
  waiting(method) {
    return this.requests.filter((request) => request.method === method && !request.answered);
  }
}

export class FakeRequest {
  constructor(url, init) {
    this.url = url;
    this.method = init.method ?? 'GET';
    /** @type {Record<string, string>} header names in lower case */
    this.headers = Object.fromEntries(Object.entries(init.headers ?? {}).map(([k, v]) => [k.toLowerCase(), v]));
    this.body = init.body;
    this.credentials = init.credentials;
    this.keepalive = init.keepalive === true;
    this.signal = init.signal;
    this.answered = false;
    /** @type {ReadableStreamDefaultController | null} */
    this._controller = null;
    this.response = new Promise((resolve, reject) => {
      this._resolve = resolve;
      this._reject = reject;
    });
    this.signal?.addEventListener('abort', () => {
      const error = new DOMException('The operation was aborted.', 'AbortError');
      if (!this.answered) {
        this.answered = true;
        this._reject(error);
      } else if (this._controller) {
        try {
          this._controller.error(error);
        } catch {
          // already closed
        }
      }
    });
  }

  get aborted() {
    return this.signal?.aborted === true;
  }

  /** The POSTed frame, parsed. */
  get frame() {
    return JSON.parse(this.body);
  }

  /** Answer with `status`, a JSON body and headers. */
  respond(status, body = null, headers = {}) {
    this._answer(
      new Response(body === null ? null : JSON.stringify(body), {
        status,
        headers: { 'Content-Type': 'application/json', ...headers },
      }),
    );
  }

  /** A command's normal answer. */
  accept() {
    this.respond(202, { accepted: true });
  }

  /** The network failed (fetch rejects with a TypeError, as browsers and Node do). */
  fail(message = 'fetch failed') {
    this.answered = true;
    this._reject(new TypeError(message));
  }

  /** Start the stream: 200 text/event-stream; `write` sends the body chunk by chunk. */
  open(headers = {}) {
    const body = new ReadableStream({
      start: (controller) => {
        this._controller = controller;
      },
    });
    this._answer(new Response(body, { status: 200, headers: { 'Content-Type': 'text/event-stream; charset=utf-8', ...headers } }));
  }

  /** One chunk of the body, exactly as given. */
  write(text) {
    if (this.aborted) return; // the client went away: what the server writes is lost
    this._controller.enqueue(encoder.encode(text));
  }

  /** One server frame as the contract sends it: an optional `id:` line, one `data:` line, a blank line. */
  send(frame, id) {
    this.write(`${id === undefined ? '' : `id: ${id}\n`}data: ${JSON.stringify(frame)}\n\n`);
  }

  /** Open (if not yet) and welcome `user` with this stream's key and heartbeat. */
  welcome({ user = 'ada', session = 's1', recovered = false, topics = [`user.${user}`], stream = 'key-1', heartbeat = 15, received = 0, dropped } = {}) {
    if (!this._controller) this.open();
    const frame = {
      type: 'welcome',
      user,
      topics,
      expires: Math.floor(Date.now() / 1000) + 3600,
      session,
      recovered,
      stream,
      heartbeat,
    };
    if (dropped) frame.dropped = dropped;
    this.send(frame, `${session}:${received}`);
  }

  /** An event frame with the contract's `id: <session>:<n>`. */
  event(id, { topic = 'user.ada', session = 's1', n } = {}) {
    this.send({ type: 'event', topic, id, ts: 1, data: id }, n === undefined ? undefined : `${session}:${n}`);
  }

  /** The server ends the stream with a `close` message. */
  close(code, reason = '') {
    this.send({ type: 'close', code, reason });
    this.end();
  }

  /** The response ends (without a `close` message, an abnormal close). */
  end() {
    try {
      this._controller.close();
    } catch {
      // already errored by an abort
    }
  }

  _answer(response) {
    if (this.answered) throw new Error(`${this.method} ${this.url} was already answered`);
    this.answered = true;
    this._resolve(response);
  }
}

/** Let the stream readers, fetch continuations and then-chains run to rest. */
export async function settle() {
  for (let i = 0; i < 5; i += 1) await flush();
}

/**
 * A client with both transports on fakes, with mocked timers and clock; `t` is the node:test context.
 * @param {import('node:test').TestContext} t
 * @param {object} [options]  NotifierClient options
 */
export async function fallbackClient(t, options = {}) {
  const { NotifierClient } = await import('../../notifier/static/notifier.js');
  t.mock.timers.enable({ apis: ['setTimeout', 'Date'], now: 1_700_000_000_000 });
  const server = new FakeServer();
  const http = new FakeHttp();
  const client = new NotifierClient({
    url: 'wss://notifier.test/ws',
    token: 'tok',
    WebSocket: server.WebSocket,
    fetch: http.fetch,
    pingInterval: 1e9,
    ...options,
  });
  const states = [];
  const errors = [];
  const seen = [];
  const resyncs = [];
  client.on('state', (state, detail) => states.push({ state, ...detail }));
  client.on('error', (error) => errors.push(error));
  client.on('event', (event) => seen.push(event.id));
  client.on('resync', (resync) => resyncs.push(resync.reason));
  t.after(() => client.close());
  return { client, server, http, states, errors, seen, resyncs };
}
