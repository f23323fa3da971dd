// notifier browser client: one connection to the notifier service, kept alive, authenticated and subscribed: a
// WebSocket, or an HTTP stream where WebSockets are blocked.
// A dependency-free ES module; docs/protocol.md is the wire contract, docs/client.md the guide.

/**
 * @typedef {'connecting' | 'open' | 'reconnecting' | 'closed'} ConnectionState
 * @typedef {'websocket' | 'sse'} TransportName  a WebSocket to `/ws`, or the HTTP stream of `/sse`
 *
 * @typedef {object} NotifierEvent
 * @property {string} topic  the topic the event was published on
 * @property {string} id     the event id (repeats are dropped by the client)
 * @property {number} ts     publish time, milliseconds since the Unix epoch
 * @property {unknown} data  the published JSON value, unchanged
 *
 * @typedef {object} Welcome
 * @property {string} user       the token's `sub`
 * @property {string[]} topics   topics the server subscribed at connect (the personal topic `user.<sub>`)
 * @property {number} expires    the token's `exp`, Unix time in seconds
 * @property {string | null} session  this session's id, kept to resume it after a drop
 * @property {boolean} recovered  the server resumed the session: subscriptions restored, missed events follow
 * @property {string[]} dropped   on a recovery, restored topics the current token no longer grants
 *
 * @typedef {object} StateDetail
 * @property {number} [code]     close code of the connection that ended, when there was one
 * @property {string} [reason]   why the connection ended
 * @property {number} [delay]    milliseconds until the next attempt (state `reconnecting`)
 * @property {NotifierError} [error]  why the client stopped (state `closed` after a terminal failure)
 * @property {boolean} [recovered]  state `open`: the session was resumed and nothing was missed
 * @property {TransportName} [transport]  the transport of this connection, or of the next attempt
 *
 * @typedef {(event: NotifierEvent) => void} EventHandler
 *
 * @typedef {object} SessionStore  the part of the Web Storage API the client uses to keep its session
 * @property {(key: string) => string | null} getItem
 * @property {(key: string, value: string) => void} setItem
 * @property {(key: string) => void} removeItem
 *
 * @typedef {object} Resync
 * @property {'not_recovered' | 'no_session' | 'routing_lost'} reason  the server refused the resume, there was
 *   none to ask, or the server's own routing was rebuilt while connected (a broker node was lost)
 *
 * @typedef {object} NotifierOptions
 * @property {string} url  `wss://host/ws`; `https://…` and page-relative URLs such as `/ws` are accepted too
 * @property {string} [token]  a fixed token (it cannot be renewed: prefer `getToken`)
 * @property {() => Promise<string | null> | string | null} [getToken]  called before every connect and before
 *   the token expires; resolving to null or '' means "signed out" and stops the client
 * @property {boolean} [connectProxy=false]  sign in without a token: the server asks the application who the
 *   page is (its cookies; NOTIFIER_CONNECT_PROXY_URL). At the sign-in's expiry the server closes with 4001 and
 *   the client reconnects and resumes; 4504 (the application refused) stops it
 * @property {number} [minReconnectDelay=500]   backoff base, ms
 * @property {number} [maxReconnectDelay=20000] backoff cap, ms
 * @property {number} [pingInterval=25000]      ms between keep-alive pings on an open connection
 * @property {number} [pongTimeout=10000]       ms to wait for a pong before the connection counts as dead
 * @property {number} [connectTimeout=10000]    ms from dialing (including getToken) to `welcome`
 * @property {number} [requestTimeout=15000]    ms to wait for the answer to subscribe, unsubscribe or refresh
 * @property {number} [refreshBefore=60000]     renew the token this many ms before it expires (at most half
 *   of its remaining lifetime)
 * @property {number} [maxTokenRefusals=3]      consecutive token refusals (4001, 4500) before giving up
 * @property {number} [handshakeFailures=3]     consecutive sockets that never opened before an `error` event
 *   with code `handshake_failed` (the client keeps retrying)
 * @property {number} [maxSubscriptions=100]    topics one client may hold (the server's default limit)
 * @property {number} [maxPendingRequests=200]  requests awaiting an answer; past this a request fails at once
 * @property {number} [framesPerSecond=15]      outgoing frame rate, kept under the server's limit
 * @property {number} [framesBurst=30]          outgoing burst, kept under the server's limit
 * @property {number} [dedupeWindow=1000]       how many recent event ids are remembered to drop repeats (by id
 *   alone: a second event with a reused id is dropped even if its topic or data differ)
 * @property {boolean | SessionStore} [persistSession=false]  keep the session in `sessionStorage` (or this store)
 *   so a reloaded page resumes it
 * @property {typeof WebSocket} [WebSocket]     WebSocket implementation (default: the global one)
 * @property {TransportName[]} [transports=['websocket', 'sse']]  the transports to use, in order of preference
 * @property {number} [fallbackAfter=2]  attempts in a row that fail before a `welcome` without an answer of the
 *   server (a blocked WebSocket) before the client moves to the next transport
 * @property {number} [upgradeAfter=60000]  ms on the HTTP stream before the client tries the WebSocket again in
 *   the background (0: never); the session moves over with nothing lost or doubled
 * @property {string} [httpUrl]  the HTTP stream's URL (default: `url` with http(s) for ws(s) and `/sse` for `/ws`)
 * @property {typeof fetch} [fetch]  fetch implementation for the HTTP stream (default: the global one)
 */

/** Close codes of docs/protocol.md. */
export const CloseCode = Object.freeze({
  NORMAL: 1000,
  GOING_AWAY: 1001,
  ABNORMAL: 1006,
  INVALID_UTF8: 1007,
  MESSAGE_TOO_BIG: 1009,
  SERVER_RESTART: 1012,
  TRY_AGAIN_LATER: 1013,
  AUTH_TIMEOUT: 4000,
  TOKEN_EXPIRED: 4001,
  SLOW_CLIENT: 4002,
  SERVER_FULL: 4003,
  RATE_LIMITED: 4004,
  APPLICATION_UNAVAILABLE: 4005,
  INVALID_TOKEN: 4500,
  PROTOCOL_VIOLATION: 4501,
  USER_CONNECTION_LIMIT: 4502,
  DISCONNECTED: 4503,
  REFUSED_BY_APPLICATION: 4504,
});

/** @type {Readonly<Record<number, string>>} error codes the client reports for close codes it stops on */
const TERMINAL_ERROR_CODES = Object.freeze({
  [CloseCode.INVALID_UTF8]: 'invalid_utf8',
  [CloseCode.MESSAGE_TOO_BIG]: 'message_too_big',
  [CloseCode.TOKEN_EXPIRED]: 'token_expired',
  [CloseCode.INVALID_TOKEN]: 'invalid_token',
  [CloseCode.PROTOCOL_VIOLATION]: 'protocol_violation',
  [CloseCode.USER_CONNECTION_LIMIT]: 'user_connection_limit',
  [CloseCode.DISCONNECTED]: 'disconnected',
  [CloseCode.REFUSED_BY_APPLICATION]: 'refused_by_application',
});

/** Close codes after which the server is busy or unwell: wait at least a few backoff steps. */
const BUSY_CODES = new Set([
  CloseCode.TRY_AGAIN_LATER,
  CloseCode.SLOW_CLIENT,
  CloseCode.SERVER_FULL,
  CloseCode.RATE_LIMITED,
  CloseCode.APPLICATION_UNAVAILABLE,
]);
const BUSY_MIN_ATTEMPT = 2;

/** An error with a machine-readable `code`: an `error` frame's code, or one of the client's own. */
export class NotifierError extends Error {
  /**
   * @param {string} code
   * @param {string} message
   * @param {{topic?: string, closeCode?: number}} [detail]
   */
  constructor(code, message, detail = {}) {
    super(message);
    this.name = 'NotifierError';
    /** @type {string} */
    this.code = code;
    /** @type {string | undefined} */
    this.topic = detail.topic;
    /** @type {number | undefined} */
    this.closeCode = detail.closeCode;
  }
}

/**
 * Exponential backoff with full jitter: a uniform delay in [0, min(max, base * 2^attempt)).
 * @param {number} attempt  0 for the first retry
 * @param {number} base     ms
 * @param {number} max      ms
 * @param {() => number} [random]
 * @returns {number}
 */
export function backoffDelay(attempt, base, max, random = Math.random) {
  const ceiling = Math.min(max, base * 2 ** Math.min(attempt, 30));
  return Math.floor(random() * ceiling);
}

/**
 * When to renew a token: `refreshBefore` ms ahead of expiry, but never later than half its remaining life.
 * @param {number} expiresMs  expiry, ms since the epoch
 * @param {number} nowMs
 * @param {number} refreshBefore  ms
 * @returns {number} ms from now
 */
export function refreshDelay(expiresMs, nowMs, refreshBefore) {
  const remaining = expiresMs - nowMs;
  if (remaining <= 0) return 0;
  return Math.max(0, remaining - Math.min(refreshBefore, remaining / 2));
}

const DEFAULTS = Object.freeze({
  minReconnectDelay: 500,
  maxReconnectDelay: 20000,
  pingInterval: 25000,
  pongTimeout: 10000,
  connectTimeout: 10000,
  requestTimeout: 15000,
  refreshBefore: 60000,
  maxTokenRefusals: 3,
  handshakeFailures: 3,
  maxSubscriptions: 100,
  maxPendingRequests: 200,
  framesPerSecond: 15,
  framesBurst: 30,
  dedupeWindow: 1000,
  fallbackAfter: 2,
  upgradeAfter: 60000,
});

/** How often, at most, a persisted session's event count is written to storage (also on `pagehide`). */
const PERSIST_INTERVAL_MS = 1000;
/** Longest stored session id the client accepts back from storage; anything else there is ignored. */
const MAX_SESSION_ID_LENGTH = 256;

/**
 * @param {string} url
 * @returns {string}
 */
function webSocketUrl(url) {
  const base = typeof location !== 'undefined' ? location.href : undefined;
  const resolved = new URL(url, base);
  if (resolved.protocol === 'http:') resolved.protocol = 'ws:';
  else if (resolved.protocol === 'https:') resolved.protocol = 'wss:';
  if (resolved.protocol !== 'ws:' && resolved.protocol !== 'wss:') {
    throw new TypeError(`NotifierClient: url must be ws:, wss:, http: or https:, got ${url}`);
  }
  return resolved.href;
}

/**
 * The strings of a frame's list field (none when it is not a list).
 * @param {unknown} value
 * @returns {string[]}
 */
function strings(value) {
  return Array.isArray(value) ? value.filter((item) => typeof item === 'string') : [];
}

/**
 * @param {unknown} value
 * @returns {value is SessionStore}
 */
function isSessionStore(value) {
  const store = /** @type {any} */ (value);
  return Boolean(store) && ['getItem', 'setItem', 'removeItem'].every((name) => typeof store[name] === 'function');
}

/** @param {unknown} error */
function reportListenerError(error) {
  // A listener that throws must not break the client; report it the way the platform reports uncaught errors.
  const report = /** @type {any} */ (globalThis).reportError;
  if (typeof report === 'function') report(error);
  else console.error(error);
}

/**
 * @typedef {object} Subscription
 * @property {Set<EventHandler>} handlers
 * @property {boolean} confirmed  the server answered `subscribed` on the current connection
 * @property {boolean} [auto]  subscribed by the server at connect (the personal topic), not by `subscribe()`
 * @property {number} [retries]  restore attempts the broker answered `unavailable`
 * @property {Promise<void>} [ready]  settles when the topic is first confirmed (or refused)
 * @property {(() => void)} [resolve]
 * @property {((error: NotifierError) => void)} [reject]
 *
 * @typedef {object} ResumeOutcome  what a welcome said about the session
 * @property {string[]} topics     the server's subscriptions the client keeps
 * @property {boolean} recovered
 * @property {boolean} asked       the auth frame asked to resume a session
 * @property {string[]} dropped    restored topics the token no longer grants
 * @property {[string, Subscription][]} lost  the page's subscriptions among them, already forgotten
 * @property {string[]} unwanted   restored topics the page no longer holds
 *
 * @typedef {object} PendingRequest
 * @property {'subscribe' | 'unsubscribe' | 'refresh'} kind
 * @property {string} [topic]
 * @property {ReturnType<typeof setTimeout>} timer
 * @property {(frame: any) => void} [resolve]
 * @property {(error: NotifierError) => void} [reject]
 */

/**
 * A notifier connection that reconnects, renews its token, restores its subscriptions and detects dead links.
 *
 * Events: `state` (state, detail), `event` (every event, personal topic included), `error` (NotifierError),
 * `welcome` (Welcome), `subscribed` ({topic}, on every confirmation, restores included),
 * `unsubscribed` ({topic, reason: 'server'}, when the server took a topic away), `refreshed` ({expires, dropped}),
 * `resync` (Resync: events may have been missed, refetch state).
 */
export class NotifierClient {
  /** @param {NotifierOptions} options */
  constructor(options) {
    if (!options || typeof options.url !== 'string') throw new TypeError('NotifierClient: options.url is required');
    if (!options.token && typeof options.getToken !== 'function' && options.connectProxy !== true) {
      throw new TypeError('NotifierClient: pass token, getToken or connectProxy: true');
    }
    this._connectProxy = options.connectProxy === true && !options.token && typeof options.getToken !== 'function';
    this._url = options.url;
    this._token = options.token ?? null;
    this._getToken = options.getToken ?? null;
    /** @type {typeof DEFAULTS} */
    this._opts = { ...DEFAULTS };
    for (const key of /** @type {(keyof typeof DEFAULTS)[]} */ (Object.keys(DEFAULTS))) {
      const value = /** @type {any} */ (options)[key];
      if (value !== undefined) {
        if (typeof value !== 'number' || !(value >= 0)) throw new TypeError(`NotifierClient: ${key} must be >= 0`);
        /** @type {any} */ (this._opts)[key] = value;
      }
    }
    this._WebSocket = options.WebSocket ?? /** @type {any} */ (globalThis).WebSocket;
    if (options.httpUrl !== undefined && typeof options.httpUrl !== 'string') {
      throw new TypeError('NotifierClient: httpUrl must be a string');
    }
    this._httpUrl = options.httpUrl ?? null;
    /** @type {typeof fetch | null} */
    this._fetch = options.fetch ?? null;
    /** @type {TransportName[]} */
    this._transports = this._chooseTransports(options.transports);
    if (this._transports.includes('websocket') && typeof this._WebSocket !== 'function') {
      throw new TypeError(
        'NotifierClient: no WebSocket implementation: this runtime has no global WebSocket (Node before 22), so ' +
          "pass one as the WebSocket option: import { WebSocket } from 'ws'; new NotifierClient({ url, WebSocket })",
      );
    }

    /** @type {ConnectionState} */
    this._state = 'closed';
    /** @type {Map<string, Set<Function>>} */
    this._listeners = new Map();
    /** @type {Map<string, Subscription>} */
    this._subs = new Map();
    /** @type {Map<number, PendingRequest>} */
    this._pending = new Map();
    /** @type {string[]} frames waiting for the rate limiter; bounded by maxPendingRequests + 2 */
    this._outbox = [];
    this._tokens = this._opts.framesBurst;
    this._tokensAt = Date.now();
    /** @type {ReturnType<typeof setTimeout> | null} */
    this._flushTimer = null;
    /** @type {Set<string>} */
    this._seen = new Set();
    /** @type {Transport | null} the current connection's link */
    this._transport = null;
    /** @type {TransportName} the transport of the current connection, or of the next attempt */
    this._transportName = this._transports[0];
    /** attempts in a row on this transport that failed before a welcome without the server's answer */
    this._linkFailures = 0;
    /** the current connection got its welcome */
    this._welcomed = false;
    /** the current connection is a WebSocket that took over from the HTTP stream and is not welcomed yet */
    this._upgrading = false;
    /** @type {Transport | null} a WebSocket tried in the background while the HTTP stream is open */
    this._probe = null;
    /** upgrades in a row whose WebSocket opened and died before its welcome: each doubles the next wait */
    this._failedUpgrades = 0;
    this._generation = 0;
    this._nextId = 1;
    this._attempt = 0;
    this._tokenRefusals = 0;
    /** consecutive sockets that closed without ever opening (refused or unreachable) */
    this._handshakeFailures = 0;
    /** @type {string | null} */
    this._user = null;
    /** @type {number | null} */
    this._expires = null;
    /** @type {Record<string, ReturnType<typeof setTimeout> | null>} */
    this._timers = { reconnect: null, connect: null, ping: null, pong: null, refresh: null, upgrade: null, probe: null };
    this._onOnline = () => {
      if (this._state === 'reconnecting' && this._timers.reconnect !== null) {
        this._clearTimer('reconnect');
        this._dial();
      }
    };
    // Session resume: see `_initResume` and the methods after it.
    /** @type {string | null} the session of the last welcome */
    this._session = null;
    /** event frames received in that session, over all its resumes */
    this._received = 0;
    /** @type {{session: string, received: number} | null} what the pending auth frame asked to resume */
    this._resumeAsked = null;
    this._welcomedBefore = false;
    /** @type {Resync['reason'] | null} a resync the page is owed and has not been told yet */
    this._resyncReason = null;
    /** @type {SessionStore | null} where the session outlives the page (`persistSession`) */
    this._store = null;
    this._storeKey = '';
    /** @type {ReturnType<typeof setTimeout> | null} */
    this._persistTimer = null;
    this._onPageHide = () => this._persistSession();
    this._initResume(options.persistSession);
  }

  /** @returns {ConnectionState} */
  get state() {
    return this._state;
  }

  /** The signed-in user (the token's `sub`) once the server welcomed the connection. */
  get user() {
    return this._user;
  }

  /** The current token's expiry, Unix seconds, once known. */
  get expires() {
    return this._expires;
  }

  /** The topics this client holds (confirmed or waiting to be), personal topic included once welcomed. */
  get topics() {
    return [...this._subs.keys()];
  }

  /** @returns {TransportName} the transport of the current connection, or of the next attempt */
  get transport() {
    return this._transportName;
  }

  /**
   * Listen to `state`, `event`, `error`, `welcome`, `subscribed`, `refreshed` or `resync`.
   * Returns a function that removes the listener.
   * @param {string} name
   * @param {Function} listener
   * @returns {() => void}
   */
  on(name, listener) {
    let set = this._listeners.get(name);
    if (!set) this._listeners.set(name, (set = new Set()));
    set.add(listener);
    return () => this.off(name, listener);
  }

  /**
   * @param {string} name
   * @param {Function} listener
   */
  off(name, listener) {
    this._listeners.get(name)?.delete(listener);
  }

  /** Start connecting (and keep the connection up until `close()` or a terminal failure). */
  connect() {
    if (this._state !== 'closed') return;
    this._attempt = 0;
    this._tokenRefusals = 0;
    this._handshakeFailures = 0;
    this._failedUpgrades = 0;
    this._useTransport(this._transports[0]);
    if (typeof addEventListener === 'function') addEventListener('online', this._onOnline);
    this._setState('connecting');
    this._dial();
  }

  /**
   * Subscribe to `topic`. Resolves once the server confirmed it (`subscribed`); rejects with a NotifierError
   * whose `code` is the server's (`forbidden`, `invalid_topic`, `too_many_subscriptions`, `unavailable`) or the
   * client's (`timeout`, `closed`, `too_many_pending`). While disconnected it waits for the next connection.
   * The subscription is restored after every reconnect.
   * @param {string} topic
   * @param {EventHandler} [handler]  called with each event on this topic
   * @returns {Promise<void>}
   */
  subscribe(topic, handler) {
    if (typeof topic !== 'string' || topic === '') {
      return Promise.reject(new NotifierError('invalid_topic', 'topic must be a non-empty string', { topic }));
    }
    let sub = this._subs.get(topic);
    if (sub) {
      if (handler) sub.handlers.add(handler);
      sub.auto = false;
      // A topic held before (or the personal topic) counts as subscribed while it is being restored.
      return sub.confirmed || !sub.ready ? Promise.resolve() : sub.ready;
    }
    if (this._subs.size >= this._opts.maxSubscriptions) {
      const message = `at most ${this._opts.maxSubscriptions} subscriptions per client`;
      return Promise.reject(new NotifierError('too_many_subscriptions', message, { topic }));
    }
    sub = { handlers: new Set(handler ? [handler] : []), confirmed: false };
    sub.ready = new Promise((resolve, reject) => {
      /** @type {Subscription} */ (sub).resolve = resolve;
      /** @type {Subscription} */ (sub).reject = reject;
    });
    this._subs.set(topic, sub);
    if (this._state === 'open') this._sendSubscribe(topic);
    return sub.ready;
  }

  /**
   * Stop receiving `topic` (or only stop calling `handler`, when other handlers remain). Resolves once the
   * server confirmed (`unsubscribed`), at once when not connected.
   * @param {string} topic
   * @param {EventHandler} [handler]
   * @returns {Promise<void>}
   */
  unsubscribe(topic, handler) {
    const sub = this._subs.get(topic);
    if (sub && handler) {
      sub.handlers.delete(handler);
      if (sub.handlers.size > 0) return Promise.resolve();
    }
    if (sub) {
      this._subs.delete(topic);
      this._cancelRequestsFor(topic);
      sub.reject?.(new NotifierError('unsubscribed', `unsubscribed from ${topic} before it was confirmed`, { topic }));
    }
    if (this._state !== 'open') return Promise.resolve();
    return this._request('unsubscribe', { topic }).then(() => undefined);
  }

  /** Close the connection for good and reject whatever still waits; `connect()` starts again. */
  close() {
    if (this._state === 'closed') return;
    this._stop(null);
  }

  // Internals.

  /**
   * @param {string} name
   * @param {...unknown} args
   */
  _emit(name, ...args) {
    const set = this._listeners.get(name);
    if (!set) return;
    for (const listener of [...set]) {
      try {
        listener(...args);
      } catch (error) {
        reportListenerError(error);
      }
    }
  }

  /**
   * @param {ConnectionState} state
   * @param {StateDetail} [detail]
   */
  _setState(state, detail = {}) {
    if (this._state === state && state !== 'reconnecting') return;
    this._state = state;
    this._emit('state', state, { ...detail, transport: this._transportName });
  }

  /** @param {string} name */
  _clearTimer(name) {
    const timer = this._timers[name];
    if (timer !== null) clearTimeout(timer);
    this._timers[name] = null;
  }

  /**
   * @param {string} name
   * @param {number} delay
   * @param {() => void} callback
   */
  _startTimer(name, delay, callback) {
    this._clearTimer(name);
    this._timers[name] = setTimeout(() => {
      this._timers[name] = null;
      callback();
    }, delay);
  }

  /** Fetch a token and open a connection; the current attempt is abandoned if the client closes meanwhile. */
  async _dial() {
    const generation = ++this._generation;
    this._welcomed = false;
    this._startTimer('connect', this._opts.connectTimeout, () => {
      this._connectionLost(CloseCode.ABNORMAL, 'no welcome within connectTimeout');
    });
    /** @type {string | null} */
    let token;
    try {
      token = this._getToken ? await this._getToken() : this._token;
    } catch (error) {
      if (generation !== this._generation) return;
      const message = error instanceof Error ? error.message : String(error);
      this._emit('error', new NotifierError('token_unavailable', `getToken failed: ${message}`));
      this._connectionLost(CloseCode.ABNORMAL, 'getToken failed');
      return;
    }
    if (generation !== this._generation) return;
    if (!token && !this._connectProxy) {
      this._stop(new NotifierError('no_token', 'getToken returned no token: not signed in'));
      return;
    }
    try {
      if (this._transportName === 'sse') this._openStream(token);
      else this._adopt(new WebSocketTransport(this._WebSocket, webSocketUrl(this._url), this._ignoreLink()), token);
    } catch (error) {
      const message = error instanceof Error ? error.message : String(error);
      const what = this._transportName === 'sse' ? 'the HTTP stream' : 'a WebSocket';
      this._stop(new NotifierError('bad_url', `cannot open ${what}: ${message}`));
    }
  }

  /**
   * Open the HTTP stream: the token and the session to resume go with the request, not in an `auth` frame.
   * @param {string | null} token
   */
  _openStream(token) {
    const url = streamUrl(this._url, this._httpUrl);
    if (url === null) throw new TypeError(`no HTTP stream URL for ${this._url}: pass httpUrl`);
    const resume = /** @type {any} */ (this._authFrame(token)).resume;
    // Cookies go along when the application signs the page in by them (connect proxy) on another origin too.
    const credentials = this._connectProxy ? 'include' : 'same-origin';
    const fetchImpl = /** @type {typeof fetch} */ (this._fetch);
    this._adopt(new HttpStreamTransport(fetchImpl, url, { token, resume, credentials }, this._ignoreLink()), token);
  }

  /** @returns {TransportLink} a link that drops everything, until `_adopt` gives the transport the real one */
  _ignoreLink() {
    return { opened: () => {}, frame: () => {}, closed: () => {} };
  }

  /**
   * Make `transport` the current connection: its frames reach the client, its end decides what happens next.
   * A WebSocket sends `auth` once open (at once if it already is, as a probe taken over).
   * @param {Transport & {link: TransportLink}} transport
   * @param {string | null} token
   * @param {boolean} [alreadyOpen]
   */
  _adopt(transport, token, alreadyOpen = false) {
    this._transport = transport;
    const sendAuth = () => {
      this._handshakeFailures = 0;
      transport.send(JSON.stringify(this._authFrame(token)));
    };
    transport.link = {
      opened: () => {
        if (this._transport === transport && transport.name === 'websocket') sendAuth();
      },
      frame: (frame) => {
        if (this._transport === transport) this._onFrame(frame);
      },
      closed: (end) => {
        if (this._transport !== transport) return;
        this._transport = null;
        if (transport.name === 'websocket' && !end.opened) this._handshakeFailed();
        this._onClose(end.code, end.reason, end);
      },
    };
    if (alreadyOpen) sendAuth();
  }

  /**
   * A socket closed before it opened. Browsers hide why (a 403 for this page's Origin, a wrong URL, a server
   * that is down all look alike), so after a few in a row tell the page what to check; retrying goes on.
   */
  _handshakeFailed() {
    this._handshakeFailures += 1;
    if (this._handshakeFailures !== this._opts.handshakeFailures) return;
    const origin = typeof location !== 'undefined' ? location.origin : 'this page';
    this._emit('error', new NotifierError(
      'handshake_failed',
      `the WebSocket handshake failed ${this._handshakeFailures} times in a row; check that ${this._url} is ` +
        `right and the server runs, and that ${origin} is the server's own origin or listed in ` +
        'NOTIFIER_ALLOWED_ORIGINS (a refused Origin gets HTTP 403)',
    ));
  }

  /** @param {any} frame  one server frame, parsed by the transport */
  _onFrame(frame) {
    switch (frame.type) {
      case 'welcome':
        this._onWelcome(frame);
        break;
      case 'event':
        this._onEvent(frame);
        break;
      case 'pong':
        this._clearTimer('pong');
        break;
      case 'unsubscribed':
        if (frame.reason === 'server') this._onServerUnsubscribe(frame);
        else this._settle(frame.id, frame, null);
        break;
      case 'subscribed':
      case 'refreshed':
        this._settle(frame.id, frame, null);
        break;
      case 'error':
        this._onErrorFrame(frame);
        break;
      case 'resync':
        // The server rebuilt its routing (a broker node was lost): events may be missing; the topics flow again.
        this._emit('resync', { reason: typeof frame.reason === 'string' ? frame.reason : 'routing_lost' });
        break;
      default:
        break; // newer servers may add frames; ignoring them keeps old clients working
    }
  }

  /** @param {any} frame */
  _onWelcome(frame) {
    this._clearTimer('connect');
    this._attempt = 0;
    this._tokenRefusals = 0;
    this._welcomed = true;
    this._upgrading = false;
    this._linkFailures = 0;
    this._handshakeFailures = 0; // this page can reach the service: a WebSocket that failed was blocked on the way
    if (this._transportName === 'websocket') this._failedUpgrades = 0;
    this._user = typeof frame.user === 'string' ? frame.user : null;
    const resume = this._applyResume(frame);
    const serverTopics = resume.topics;
    for (const [topic, sub] of this._subs) {
      if (sub.auto && !serverTopics.includes(topic)) this._subs.delete(topic); // another user's personal topic
    }
    for (const topic of serverTopics) {
      let sub = this._subs.get(topic);
      if (!sub) {
        sub = { handlers: new Set(), confirmed: true, auto: true };
        this._subs.set(topic, sub);
      }
      this._confirm(topic, sub);
    }
    this._setState('open', { recovered: resume.recovered });
    this._emit('welcome', {
      user: this._user,
      topics: serverTopics,
      expires: frame.expires,
      session: this._session,
      recovered: resume.recovered,
      dropped: resume.dropped,
    });
    this._scheduleRefresh(frame.expires);
    if (this._transportName === 'websocket') this._schedulePing(); // the HTTP stream has the server's heartbeat
    for (const [topic, sub] of this._subs) {
      if (!sub.confirmed) this._sendSubscribe(topic);
    }
    this._afterResume(resume);
  }

  /** @param {any} frame */
  _onEvent(frame) {
    this._countReceived();
    if (typeof frame.topic !== 'string') return;
    if (typeof frame.id === 'string') {
      if (this._seen.has(frame.id)) return; // delivery is at least once; a repeat carries the same id
      this._seen.add(frame.id);
      if (this._seen.size > this._opts.dedupeWindow) {
        const oldest = this._seen.values().next().value;
        if (oldest !== undefined) this._seen.delete(oldest);
      }
    }
    /** @type {NotifierEvent} */
    const event = { topic: frame.topic, id: frame.id, ts: frame.ts, data: frame.data };
    this._emit('event', event);
    const sub = this._subs.get(frame.topic);
    if (!sub) return;
    for (const handler of [...sub.handlers]) {
      try {
        handler(event);
      } catch (error) {
        reportListenerError(error);
      }
    }
  }

  /**
   * The server took a topic from this connection (its backend asked it to): drop it for good, so it is not
   * restored after a reconnect, and tell the page.
   * @param {any} frame
   */
  _onServerUnsubscribe(frame) {
    if (typeof frame.topic !== 'string') return;
    const topic = frame.topic;
    const sub = this._subs.get(topic);
    this._subs.delete(topic);
    this._cancelRequestsFor(topic);
    sub?.reject?.(new NotifierError('unsubscribed', `the server unsubscribed this client from ${topic}`, { topic }));
    this._emit('unsubscribed', { topic, reason: 'server' });
  }

  /** @param {any} frame */
  _onErrorFrame(frame) {
    const code = typeof frame.code === 'string' ? frame.code : 'error';
    const message = typeof frame.message === 'string' ? frame.message : code;
    const error = new NotifierError(code, message, { topic: typeof frame.topic === 'string' ? frame.topic : undefined });
    if (frame.id === null || frame.id === undefined || !this._pending.has(frame.id)) {
      this._emit('error', error);
      return;
    }
    this._settle(frame.id, null, error);
  }

  /**
   * Answer a pending request by id.
   * @param {unknown} id
   * @param {any} frame
   * @param {NotifierError | null} error
   */
  _settle(id, frame, error) {
    if (typeof id !== 'number') return;
    const request = this._pending.get(id);
    if (!request) return;
    this._pending.delete(id);
    clearTimeout(request.timer);
    if (request.kind === 'subscribe') {
      const sub = this._subs.get(/** @type {string} */ (request.topic));
      if (!sub) return;
      const topic = /** @type {string} */ (request.topic);
      if (!error) {
        this._confirm(topic, sub);
      } else if (error.code === 'unavailable' && !sub.reject) {
        // Restoring after a reconnect and the broker did not confirm the binding yet: keep trying, with backoff.
        this._emit('error', error);
        this._retrySubscribe(topic, sub);
      } else {
        this._subs.delete(topic);
        if (sub.reject) sub.reject(error);
        else this._emit('error', error);
      }
      return;
    }
    if (error) request.reject?.(error);
    else request.resolve?.(frame);
  }

  /**
   * @param {string} topic
   * @param {Subscription} sub
   */
  _confirm(topic, sub) {
    sub.confirmed = true;
    this._emit('subscribed', { topic });
    sub.resolve?.();
    sub.resolve = undefined;
    sub.reject = undefined;
  }

  /**
   * @param {string} topic
   * @param {Subscription} sub
   */
  _retrySubscribe(topic, sub) {
    const generation = this._generation;
    sub.retries = (sub.retries ?? 0) + 1;
    const delay = backoffDelay(sub.retries, this._opts.minReconnectDelay, this._opts.maxReconnectDelay);
    setTimeout(() => {
      if (generation === this._generation && this._subs.get(topic) === sub) this._sendSubscribe(topic);
    }, delay);
  }

  /** @param {string} topic */
  _sendSubscribe(topic) {
    const sub = this._subs.get(topic);
    if (!sub) return;
    for (const request of this._pending.values()) {
      if (request.kind === 'subscribe' && request.topic === topic) return; // already asked on this connection
    }
    this._request('subscribe', { topic }).catch((error) => {
      if (this._subs.get(topic) !== sub) return;
      this._subs.delete(topic);
      if (sub.reject) sub.reject(error);
      else this._emit('error', error);
    });
  }

  /** @param {string} topic */
  _cancelRequestsFor(topic) {
    for (const [id, request] of this._pending) {
      if (request.kind === 'subscribe' && request.topic === topic) {
        clearTimeout(request.timer);
        this._pending.delete(id);
      }
    }
  }

  /**
   * Send a request frame and wait for its answer; bounded in number and in time.
   * Subscribe answers are handled in `_settle`; the returned promise only rejects for client-side failures.
   * @param {'subscribe' | 'unsubscribe' | 'refresh'} kind
   * @param {Record<string, unknown>} fields
   * @returns {Promise<any>}
   */
  _request(kind, fields) {
    if (this._pending.size >= this._opts.maxPendingRequests) {
      const message = `more than ${this._opts.maxPendingRequests} requests await an answer`;
      return Promise.reject(new NotifierError('too_many_pending', message, { topic: /** @type {any} */ (fields).topic }));
    }
    const id = this._nextId++;
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        if (!this._pending.delete(id)) return;
        const error = new NotifierError('timeout', `no answer to ${kind} within ${this._opts.requestTimeout} ms`, {
          topic: /** @type {any} */ (fields).topic,
        });
        if (kind === 'subscribe') {
          const topic = /** @type {string} */ (fields.topic);
          const sub = this._subs.get(topic);
          if (sub) {
            this._subs.delete(topic);
            sub.reject?.(error);
            if (!sub.reject) this._emit('error', error);
            this._send({ type: 'unsubscribe', topic }); // the server may still bind it later
          }
        }
        reject(error);
      }, this._opts.requestTimeout);
      /** @type {PendingRequest} */
      const request = { kind, topic: /** @type {any} */ (fields).topic, timer, resolve, reject };
      if (kind === 'subscribe') request.reject = undefined; // settled through the subscription
      this._pending.set(id, request);
      this._send({ type: kind, id, ...fields });
    });
  }

  /**
   * Queue one frame behind the outgoing rate limit (a token bucket under the server's frames-per-second limit).
   * @param {Record<string, unknown>} frame
   */
  _send(frame) {
    if (this._outbox.length > this._opts.maxPendingRequests + 2) return; // cannot happen while requests are bounded
    this._outbox.push(JSON.stringify(frame));
    this._flush();
  }

  _flush() {
    const transport = this._transport;
    if (!transport) {
      this._outbox.length = 0;
      return;
    }
    const now = Date.now();
    const rate = this._opts.framesPerSecond;
    this._tokens = Math.min(this._opts.framesBurst, this._tokens + ((now - this._tokensAt) / 1000) * rate);
    this._tokensAt = now;
    while (this._outbox.length > 0 && this._tokens >= 1) {
      this._tokens -= 1;
      transport.send(/** @type {string} */ (this._outbox.shift()));
    }
    if (this._outbox.length > 0 && this._flushTimer === null && rate > 0) {
      const wait = Math.ceil(((1 - this._tokens) / rate) * 1000);
      this._flushTimer = setTimeout(() => {
        this._flushTimer = null;
        this._flush();
      }, wait);
    }
  }

  _schedulePing() {
    this._startTimer('ping', this._opts.pingInterval, () => {
      if (this._state !== 'open') return;
      this._send({ type: 'ping', id: this._nextId++ });
      this._startTimer('pong', this._opts.pongTimeout, () => {
        this._connectionLost(CloseCode.ABNORMAL, `no pong within ${this._opts.pongTimeout} ms`);
      });
      this._schedulePing();
    });
  }

  /** @param {unknown} expires  Unix seconds */
  _scheduleRefresh(expires) {
    this._clearTimer('refresh');
    if (typeof expires !== 'number') return;
    this._expires = expires;
    if (!this._getToken) return; // a fixed token cannot be renewed; the server closes with 4001 when it expires
    const delay = refreshDelay(expires * 1000, Date.now(), this._opts.refreshBefore);
    this._startTimer('refresh', delay, () => this._refresh());
  }

  async _refresh() {
    const generation = this._generation;
    const getToken = /** @type {() => Promise<string | null> | string | null} */ (this._getToken);
    try {
      const token = await getToken();
      if (generation !== this._generation || this._state !== 'open') return;
      if (!token) {
        this._stop(new NotifierError('no_token', 'getToken returned no token: not signed in'));
        return;
      }
      /** @type {{expires: number, dropped: string[]}} */
      const answer = await this._request('refresh', { token });
      if (generation !== this._generation) return;
      const dropped = Array.isArray(answer.dropped) ? answer.dropped : [];
      for (const topic of dropped) {
        const sub = this._subs.get(topic);
        this._subs.delete(topic);
        if (sub) {
          this._emit('error', new NotifierError('forbidden', 'the renewed token no longer grants this topic', { topic }));
        }
      }
      this._emit('refreshed', { expires: answer.expires, dropped });
      this._scheduleRefresh(answer.expires);
    } catch (error) {
      if (generation !== this._generation || this._state !== 'open') return;
      const failure =
        error instanceof NotifierError
          ? error
          : new NotifierError('token_unavailable', `getToken failed: ${error instanceof Error ? error.message : error}`);
      this._emit('error', failure);
      // The old token stays in force: try again in a while, until the server ends the connection with 4001.
      const remaining = (this._expires ?? 0) * 1000 - Date.now();
      if (remaining > 1000) this._startTimer('refresh', Math.max(1000, remaining / 2), () => this._refresh());
    }
  }

  /**
   * Forget the current connection (closing it if still open, its session left to resume) and decide what to do
   * next.
   * @param {number} code
   * @param {string} reason
   */
  _connectionLost(code, reason) {
    this._dropTransport(4999, reason);
    this._onClose(code, reason);
  }

  /**
   * Close the current connection's link, if any, without hearing from it again.
   * @param {number} code  1000 ends the session on the server; any other leaves it to resume
   * @param {string} [reason]
   */
  _dropTransport(code, reason) {
    const transport = this._transport;
    this._transport = null;
    transport?.close(code, reason);
  }

  /**
   * The connection ended with `code`: reconnect (how soon depends on the code, on which transport depends on
   * how it failed) or stop.
   * @param {number} code
   * @param {string} reason
   * @param {Partial<LinkEnd>} [end]  what the transport knows beyond the code
   */
  _onClose(code, reason, end = {}) {
    this._dropTransport(4999, reason); // already gone when its own end brought us here
    this._endConnection();
    const welcomed = this._welcomed;
    const upgrading = this._upgrading;
    this._welcomed = false;
    this._upgrading = false;
    if (this._state === 'closed') return;

    if (end.error === 'origin_not_allowed') {
      // The service said it itself (a WebSocket's 403 hides why): retrying would be refused the same way.
      const origin = typeof location !== 'undefined' ? location.origin : 'this page';
      this._stop(new NotifierError('origin_not_allowed', `the service refused ${origin}: it must be the ` +
        `service's own origin or listed in NOTIFIER_ALLOWED_ORIGINS (${reason})`));
      return;
    }
    const terminal = TERMINAL_ERROR_CODES[code];
    if (code === CloseCode.TOKEN_EXPIRED || code === CloseCode.INVALID_TOKEN) {
      this._tokenRefusals += 1;
      const renewable = this._getToken || (this._connectProxy && code === CloseCode.TOKEN_EXPIRED);
      if (!renewable || this._tokenRefusals >= this._opts.maxTokenRefusals) {
        const why = this._getToken ? `refused ${this._tokenRefusals} times in a row` : 'and no getToken to renew it';
        this._stop(new NotifierError(terminal, `token ${code === 4001 ? 'expired' : 'rejected'} (${code}), ${why}`, {
          closeCode: code,
        }));
        return;
      }
    } else if (terminal || (code >= 4500 && code <= 4999)) {
      const errorCode = terminal ?? 'terminal_close';
      this._stop(new NotifierError(errorCode, `server closed the connection: ${code} ${reason || ''}`.trim(), {
        closeCode: code,
      }));
      return;
    }

    if (!welcomed && !answeredByServer(code)) {
      if (upgrading) {
        // The WebSocket opened but died before its welcome: still blocked. Back to the stream at once, resuming.
        this._failedUpgrades += 1;
        this._useTransport('sse');
        this._setState('reconnecting', { code, reason, delay: 0 });
        this._startTimer('reconnect', 0, () => this._dial());
        return;
      }
      this._linkFailed();
    } else {
      this._linkFailures = 0;
    }
    if (BUSY_CODES.has(code)) this._attempt = Math.max(this._attempt, BUSY_MIN_ATTEMPT);
    let delay = backoffDelay(this._attempt, this._opts.minReconnectDelay, this._opts.maxReconnectDelay);
    if (end.retryAfter !== undefined) delay = Math.max(delay, Math.min(end.retryAfter, this._opts.maxReconnectDelay));
    this._attempt += 1;
    this._setState('reconnecting', { code, reason, delay });
    this._startTimer('reconnect', delay, () => this._dial());
  }

  // Choosing the transport: the first of `transports` until `fallbackAfter` attempts in a row fail on the way to
  // the service (a proxy that blocks WebSockets), then the next one. On the HTTP stream, every `upgradeAfter` ms
  // a WebSocket is tried in the background; once it opens, the session moves to it with a resume.

  /**
   * @param {TransportName[] | undefined} requested
   * @returns {TransportName[]}
   */
  _chooseTransports(requested) {
    if (this._httpUrl !== null) streamUrl(this._url, this._httpUrl, PLACEHOLDER_BASE); // throws on a bad one
    this._fetch ??= typeof globalThis.fetch === 'function' ? (input, init) => globalThis.fetch(input, init) : null;
    if (requested === undefined) {
      // The HTTP stream by default wherever it can work: a fetch, and a URL to derive its own from.
      let derived = null;
      try {
        derived = streamUrl(this._url, this._httpUrl, PLACEHOLDER_BASE);
      } catch {
        // a bad URL stops the client at connect
      }
      return this._fetch && derived !== null ? ['websocket', 'sse'] : ['websocket'];
    }
    const known = ['websocket', 'sse'];
    if (!Array.isArray(requested) || requested.length === 0 || new Set(requested).size !== requested.length ||
        !requested.every((name) => known.includes(name))) {
      throw new TypeError("NotifierClient: transports must list 'websocket' and/or 'sse', each once");
    }
    if (requested.includes('sse')) {
      if (!this._fetch) throw new TypeError('NotifierClient: no fetch implementation for the HTTP stream');
      if (streamUrl(this._url, this._httpUrl, PLACEHOLDER_BASE) === null) {
        throw new TypeError("NotifierClient: pass httpUrl: the HTTP stream's URL cannot be derived from url");
      }
    }
    return [...requested];
  }

  /**
   * Dial `name` from the next attempt on, with a fresh count of failures; on the HTTP stream, plan the upgrade.
   * @param {TransportName} name
   */
  _useTransport(name) {
    this._transportName = name;
    this._linkFailures = 0;
    this._scheduleUpgrade();
  }

  /** One more attempt failed on the way; after `fallbackAfter` in a row, the next attempt uses the next transport. */
  _linkFailed() {
    this._linkFailures += 1;
    if (this._transports.length < 2 || this._linkFailures < Math.max(1, this._opts.fallbackAfter)) return;
    const next = this._transports[(this._transports.indexOf(this._transportName) + 1) % this._transports.length];
    this._useTransport(next);
  }

  _scheduleUpgrade() {
    this._clearTimer('upgrade');
    const after = this._opts.upgradeAfter;
    if (this._transportName !== 'sse' || !this._transports.includes('websocket')) return;
    if (!(after > 0) || !Number.isFinite(after)) return;
    // A proxy that lets the upgrade through and then cuts it costs the page a resume each time: try less often.
    const wait = after * 2 ** Math.min(this._failedUpgrades, MAX_UPGRADE_DOUBLINGS);
    this._startTimer('upgrade', wait, () => {
      if (this._state === 'open') this._probeWebSocket();
      else this._scheduleUpgrade(); // reconnecting: the stream comes first, the upgrade waits for it
    });
  }

  /**
   * Try a WebSocket beside the open HTTP stream. Until it opens nothing changes (a blocked WebSocket fails
   * unseen); once open, the stream is dropped, its session left parked, and the WebSocket resumes it with the
   * events received so far, so nothing is lost or doubled. If it then dies before its welcome, the stream is
   * dialed again at once.
   */
  async _probeWebSocket() {
    const generation = this._generation;
    /** @type {string | null} */
    let token;
    try {
      token = this._getToken ? await this._getToken() : this._token;
    } catch {
      token = null;
    }
    const stillOnStream = () => generation === this._generation && this._state === 'open' && this._probe === null;
    if (!stillOnStream() || (!token && !this._connectProxy)) {
      if (generation === this._generation) this._scheduleUpgrade();
      return;
    }
    /** @type {WebSocketTransport} */
    let probe;
    try {
      probe = new WebSocketTransport(this._WebSocket, webSocketUrl(this._url), this._ignoreLink());
    } catch {
      return; // the URL cannot change: no upgrade
    }
    this._probe = probe;
    const giveUp = () => {
      if (this._probe !== probe) return;
      this._probe = null;
      this._clearTimer('probe');
      probe.close(CloseCode.NORMAL);
      this._scheduleUpgrade();
    };
    this._startTimer('probe', this._opts.connectTimeout, giveUp);
    probe.link = {
      opened: () => {
        if (this._probe !== probe) return;
        if (generation !== this._generation || this._state !== 'open') {
          giveUp(); // the stream dropped meanwhile; its own reconnect goes on
          return;
        }
        this._probe = null;
        this._clearTimer('probe');
        this._dropTransport(CloseCode.GOING_AWAY, 'moving to a WebSocket');
        this._endConnection();
        this._transportName = 'websocket';
        this._linkFailures = 0;
        this._upgrading = true;
        this._welcomed = false;
        this._setState('reconnecting', { reason: 'moving to a WebSocket', delay: 0 });
        this._startTimer('connect', this._opts.connectTimeout, () => {
          this._connectionLost(CloseCode.ABNORMAL, 'no welcome within connectTimeout');
        });
        this._adopt(probe, token, true);
      },
      frame: () => {},
      closed: giveUp,
    };
  }

  /** Everything that belongs to one connection ends with it; subscriptions wait for the next one. */
  _endConnection() {
    this._generation += 1;
    for (const name of ['connect', 'ping', 'pong', 'refresh']) this._clearTimer(name);
    if (this._flushTimer !== null) clearTimeout(this._flushTimer);
    this._flushTimer = null;
    this._outbox.length = 0;
    for (const request of this._pending.values()) {
      clearTimeout(request.timer);
      // An unsubscribe is done once the connection is gone: the next one will not restore the topic.
      if (request.kind === 'unsubscribe') request.resolve?.({ type: 'unsubscribed', topic: request.topic });
      else if (request.kind === 'refresh') {
        request.reject?.(new NotifierError('disconnected', 'connection lost before the refresh answer'));
      }
    }
    this._pending.clear();
    for (const sub of this._subs.values()) sub.confirmed = false;
  }

  /**
   * Stop for good: state `closed`; with an error, emit it and reject everything that waits.
   * @param {NotifierError | null} error
   */
  _stop(error) {
    this._dropTransport(CloseCode.NORMAL);
    this._probe?.close(CloseCode.NORMAL);
    this._probe = null;
    this._endConnection();
    for (const name of ['reconnect', 'upgrade', 'probe']) this._clearTimer(name);
    this._welcomed = false;
    this._upgrading = false;
    if (typeof removeEventListener === 'function') removeEventListener('online', this._onOnline);
    this._forgetSession(); // closed with 1000 (or terminally): the server ends the session
    const rejection = error ?? new NotifierError('closed', 'the client was closed');
    for (const [topic, sub] of this._subs) {
      if (sub.reject) {
        // The caller learns it failed, so it is not restored either; confirmed topics wait for `connect()`.
        sub.reject(rejection);
        this._subs.delete(topic);
      }
      if (sub.auto) this._subs.delete(topic); // the next connection's welcome says which personal topic applies
    }
    this._state = 'closed';
    if (error) this._emit('error', error);
    const transport = this._transportName;
    this._emit('state', 'closed', error ? { error, code: error.closeCode, transport } : { transport });
  }

  // Session resume (docs/protocol.md, "Resuming a session"): the server keeps a dropped session for a while and
  // replays what it missed when the client comes back with the session id and how many events it received.

  /**
   * Open the store of `persistSession` and take up the session a previous page kept there.
   * @param {boolean | SessionStore | undefined} persist
   */
  _initResume(persist) {
    if (persist === undefined || persist === false) return;
    if (persist === true) {
      try {
        this._store = /** @type {any} */ (globalThis).sessionStorage ?? null; // may throw in sandboxed frames
      } catch {
        this._store = null;
      }
    } else if (isSessionStore(persist)) {
      this._store = persist;
    } else {
      throw new TypeError('NotifierClient: persistSession must be a boolean or a Storage-like object');
    }
    if (!this._store) return; // no sessionStorage here: sessions live as long as the page
    let url = this._url;
    try {
      url = webSocketUrl(this._url);
    } catch {
      // a bad URL stops the client at connect; the raw string is as good a key until then
    }
    this._storeKey = `notifier.session ${url}`;
    this._loadSession();
  }

  /** Take up the session a previous page stored; anything malformed there is removed and ignored. */
  _loadSession() {
    const store = /** @type {SessionStore} */ (this._store);
    try {
      const text = store.getItem(this._storeKey);
      if (text === null) return;
      const saved = JSON.parse(text);
      const session = saved?.session;
      const received = saved?.received;
      const valid =
        typeof session === 'string' &&
        session.length > 0 &&
        session.length <= MAX_SESSION_ID_LENGTH &&
        Number.isSafeInteger(received) &&
        received >= 0;
      if (valid) {
        this._session = session;
        this._received = received;
      } else {
        store.removeItem(this._storeKey);
      }
    } catch {
      // unreadable storage or JSON: start without a session (a stale or foreign one is refused by the server)
    }
  }

  /**
   * The first frame of a connection: `auth`, with `resume` when there is a session to resume.
   * Without a token (`connectProxy`) the server asks the application who the client is.
   * @param {string | null} token
   * @returns {Record<string, unknown>}
   */
  _authFrame(token) {
    const frame = token ? { type: 'auth', token } : { type: 'auth' };
    if (this._session === null) {
      this._resumeAsked = null;
      return frame;
    }
    this._resumeAsked = { session: this._session, received: this._received };
    return { ...frame, resume: { ...this._resumeAsked } };
  }

  /**
   * Take the welcome's session fields; on a recovery, drop the topics the server no longer grants and keep out
   * of the restored ones those the page let go of meanwhile.
   * @param {any} frame
   * @returns {ResumeOutcome}
   */
  _applyResume(frame) {
    const asked = this._resumeAsked !== null;
    const recovered = frame.recovered === true && asked; // a recovery of nothing asked for is not one
    this._resumeAsked = null;
    const listed = strings(frame.topics);
    const session = typeof frame.session === 'string' && frame.session !== '' ? frame.session : null;
    this._session = session;
    if (!recovered) this._received = 0; // a fresh session counts from its first event
    this._persistSession();
    if (session !== null && this._store && typeof addEventListener === 'function') {
      addEventListener('pagehide', this._onPageHide);
    }
    if (!recovered) return { topics: listed, recovered, asked, dropped: [], lost: [], unwanted: [] };

    const dropped = strings(frame.dropped);
    /** @type {[string, Subscription][]} */
    const lost = [];
    for (const topic of dropped) {
      const sub = this._subs.get(topic);
      if (!sub) continue;
      this._subs.delete(topic); // before the welcome resubscribes what is left unconfirmed
      this._cancelRequestsFor(topic);
      lost.push([topic, sub]);
    }
    const personal = this._user === null ? null : `user.${this._user}`;
    /** @type {string[]} */
    const topics = [];
    /** @type {string[]} */
    const unwanted = [];
    for (const topic of listed) {
      if (this._subs.has(topic) || topic === personal) topics.push(topic);
      else unwanted.push(topic); // unsubscribed while disconnected: the server still had it
    }
    return { topics, recovered, asked, dropped, lost, unwanted };
  }

  /**
   * After the welcome: report dropped topics, let go of unwanted restored ones, and tell the page when events
   * may have been missed.
   * @param {ResumeOutcome} resume
   */
  _afterResume(resume) {
    for (const [topic, sub] of resume.lost) {
      const error = new NotifierError('forbidden', 'the current token no longer grants this topic', { topic });
      if (sub.reject) sub.reject(error);
      else this._emit('error', error);
    }
    for (const topic of resume.unwanted) {
      this._request('unsubscribe', { topic }).catch(() => {}); // a later connection will not restore it anyway
    }
    const welcomedBefore = this._welcomedBefore;
    this._welcomedBefore = true;
    if (!resume.recovered && (welcomedBefore || resume.asked)) {
      this._resyncReason ??= resume.asked ? 'not_recovered' : 'no_session';
    }
    // A resync not yet told stays owed, even when this connection recovered the session that came after it.
    if (this._resyncReason !== null) this._resyncWhenRestored();
  }

  /**
   * Emit `resync` once every topic being subscribed again is confirmed or refused, so that what the page
   * fetches in answer is followed by every later event; at the latest after `requestTimeout`.
   */
  _resyncWhenRestored() {
    const generation = this._generation;
    const waiting = [...this._subs].filter(([, sub]) => !sub.confirmed);
    /** @type {ReturnType<typeof setTimeout> | null} */
    let timer = null;
    const check = (/** @type {boolean} */ deadline) => {
      if (generation !== this._generation || this._resyncReason === null) {
        stop(); // connection lost or client closed: the next welcome decides again
        return;
      }
      if (!deadline && !waiting.every(([topic, sub]) => sub.confirmed || this._subs.get(topic) !== sub)) return;
      stop();
      const reason = this._resyncReason;
      this._resyncReason = null;
      this._emit('resync', { reason });
    };
    const onChange = () => check(false);
    const offSubscribed = this.on('subscribed', onChange);
    const offError = this.on('error', onChange);
    const stop = () => {
      offSubscribed();
      offError();
      if (timer !== null) clearTimeout(timer);
    };
    timer = setTimeout(() => check(true), this._opts.requestTimeout);
    check(false);
  }

  /** One more event frame received in this session (repeats included: the server counts what it sent). */
  _countReceived() {
    if (this._session === null) return;
    this._received += 1;
    if (this._store && this._persistTimer === null) {
      this._persistTimer = setTimeout(() => this._persistSession(), PERSIST_INTERVAL_MS);
    }
  }

  /** Write the session and its count to storage now (throttled from `_countReceived`; on `pagehide`). */
  _persistSession() {
    if (this._persistTimer !== null) clearTimeout(this._persistTimer);
    this._persistTimer = null;
    if (!this._store) return;
    try {
      if (this._session === null) this._store.removeItem(this._storeKey);
      else this._store.setItem(this._storeKey, JSON.stringify({ session: this._session, received: this._received }));
    } catch {
      // storage full or denied: a reload then starts a fresh session, as without persistSession
    }
  }

  /** Closed on purpose or for good: the server ends the session, so nothing is left to resume. */
  _forgetSession() {
    this._session = null;
    this._received = 0;
    this._resumeAsked = null;
    this._resyncReason = null; // connect() again tells the page at its welcome
    this._persistSession();
    if (typeof removeEventListener === 'function') removeEventListener('pagehide', this._onPageHide);
  }
}

// Transports: how frames travel. The client above speaks the protocol; a transport only carries its frames and
// says how its link ended. Both end a link the same way, with a WebSocket close code: the HTTP stream's refusals
// and `close` messages carry one (docs/protocol.md, "Browser side (HTTP stream)").

/**
 * @typedef {object} TransportLink  what a transport tells the client
 * @property {() => void} opened  the link is up: a WebSocket waits for `auth`, the HTTP stream for its `welcome`
 * @property {(frame: any) => void} frame  one server frame, parsed
 * @property {(end: LinkEnd) => void} closed  the link ended by itself (not after `close()`); nothing follows
 *
 * @typedef {object} LinkEnd
 * @property {number} code   the close code: the server's, or 1006 when the link failed without one
 * @property {string} reason
 * @property {boolean} opened  the link came up before it ended
 * @property {string} [error]  an HTTP refusal's `error`
 * @property {number} [retryAfter]  ms an HTTP refusal asked to wait
 *
 * @typedef {object} Transport
 * @property {TransportName} name
 * @property {(text: string) => void} send  one client frame, after the server's `welcome`
 * @property {(code: number, reason?: string) => void} close  end the link; 1000 ends the session, any other code
 *   leaves it parked for a resume
 */

/** @type {Set<number>} close codes only the server sends: a link that ends with one reached the service */
const SERVER_CLOSE_CODES = new Set([
  CloseCode.INVALID_UTF8,
  CloseCode.MESSAGE_TOO_BIG,
  CloseCode.SERVER_RESTART,
  CloseCode.TRY_AGAIN_LATER,
]);

/**
 * Whether a link that ended with `code` before its `welcome` reached the service (a refusal, a busy instance)
 * rather than failing on the way (a proxy that blocks WebSockets, a server that is down).
 * @param {number} code
 */
function answeredByServer(code) {
  return SERVER_CLOSE_CODES.has(code) || (code >= 4000 && code <= 4999);
}

/** Upgrades whose WebSocket opened and died double the wait before the next one, at most this many times. */
const MAX_UPGRADE_DOUBLINGS = 4;
/** Resolves page-relative URLs where there is no page (Node), to check them in the constructor. */
const PLACEHOLDER_BASE = 'http://page.invalid/';
/** Longest line the HTTP stream reader buffers (a frame is one line): past it the stream counts as broken. */
const MAX_STREAM_LINE_CHARS = 8 * 1024 * 1024;
/** An unreachable instance behind a command's 503 is asked again this many times before the stream is redialed. */
const COMMAND_RETRIES = 2;
const MAX_COMMAND_RETRY_MS = 5000;

/**
 * The HTTP stream's URL: `httpUrl`, or else the WebSocket URL with http(s) for ws(s) and its last path segment
 * `ws` replaced by `sse` (`wss://host/ws` → `https://host/sse`). Null when that segment is not `ws`.
 * @param {string} url  the WebSocket URL
 * @param {string | null} httpUrl
 * @param {string} [base]  what relative URLs are resolved against (default: the page's location)
 * @returns {string | null}
 */
function streamUrl(url, httpUrl, base = typeof location !== 'undefined' ? location.href : undefined) {
  if (httpUrl !== null) {
    const resolved = new URL(httpUrl, base);
    if (resolved.protocol !== 'http:' && resolved.protocol !== 'https:') {
      throw new TypeError(`NotifierClient: httpUrl must be http: or https:, got ${httpUrl}`);
    }
    return resolved.href;
  }
  const resolved = new URL(url, base);
  if (!/(^|\/)ws$/.test(resolved.pathname)) return null;
  resolved.pathname = resolved.pathname.replace(/ws$/, 'sse');
  if (resolved.protocol === 'ws:') resolved.protocol = 'http:';
  else if (resolved.protocol === 'wss:') resolved.protocol = 'https:';
  return resolved.href;
}

/**
 * `Retry-After` in ms (seconds or an HTTP date); undefined when absent or unreadable.
 * @param {string | null} value
 * @returns {number | undefined}
 */
function retryAfterMs(value) {
  if (value === null || value.trim() === '') return undefined;
  const seconds = Number(value);
  if (Number.isFinite(seconds)) return Math.max(0, seconds * 1000);
  const date = Date.parse(value);
  return Number.isNaN(date) ? undefined : Math.max(0, date - Date.now());
}

/**
 * A `text/event-stream` reader (the HTML standard's parsing rules): feed it decoded text in chunks of any size;
 * it calls `onMessage` once per message with its data lines joined, and keeps the last event id. Lines may end
 * in CRLF, LF or CR, also when a chunk ends between CR and LF; comment lines are skipped.
 */
export class EventStreamParser {
  /** @param {(message: {data: string, id: string, event: string}) => void} onMessage */
  constructor(onMessage) {
    this._onMessage = onMessage;
    /** the id of the last message that had one (`id:` lines), as EventSource's `lastEventId` */
    this.lastEventId = '';
    this._buffer = '';
    /** @type {string[]} */
    this._data = [];
    this._event = '';
    /** the last chunk ended in CR: a LF that starts the next one ends the same line */
    this._afterCR = false;
  }

  /** @param {string} text */
  push(text) {
    if (text === '') return;
    if (this._afterCR) {
      this._afterCR = false;
      if (text.startsWith('\n')) text = text.slice(1);
    }
    const pending = this._buffer + text;
    let lineStart = 0;
    let cr = pending.indexOf('\r');
    let lf = pending.indexOf('\n');
    while (cr !== -1 || lf !== -1) {
      let end;
      if (cr === -1 || (lf !== -1 && lf < cr)) {
        end = lf;
      } else {
        end = cr;
        if (cr + 1 === pending.length) this._afterCR = true;
        else if (pending[cr + 1] === '\n') lf = cr + 1; // CRLF: the LF ends the same line
      }
      this._line(pending.slice(lineStart, end));
      lineStart = end === cr && lf === cr + 1 ? cr + 2 : end + 1;
      if (cr !== -1 && cr < lineStart) cr = pending.indexOf('\r', lineStart);
      if (lf !== -1 && lf < lineStart) lf = pending.indexOf('\n', lineStart);
    }
    this._buffer = pending.slice(lineStart);
    if (this._buffer.length > MAX_STREAM_LINE_CHARS) {
      throw new RangeError(`a stream line longer than ${MAX_STREAM_LINE_CHARS} characters`);
    }
  }

  /** @param {string} line */
  _line(line) {
    if (line === '') {
      this._dispatch();
      return;
    }
    if (line.startsWith(':')) return; // a comment: the server's heartbeat
    const colon = line.indexOf(':');
    const field = colon === -1 ? line : line.slice(0, colon);
    let value = colon === -1 ? '' : line.slice(colon + 1);
    if (value.startsWith(' ')) value = value.slice(1);
    if (field === 'data') this._data.push(value);
    else if (field === 'id' && !value.includes('\0')) this.lastEventId = value;
    else if (field === 'event') this._event = value;
    // `retry` and unknown fields are ignored: the client keeps its own backoff
  }

  _dispatch() {
    const event = this._event || 'message';
    this._event = '';
    if (this._data.length === 0) return;
    const data = this._data.join('\n');
    this._data = [];
    this._onMessage({ data, id: this.lastEventId, event });
  }
}

/** A WebSocket to `/ws`; the client sends `auth` once it opens. */
class WebSocketTransport {
  /**
   * @param {typeof WebSocket} WebSocketImpl
   * @param {string} url
   * @param {TransportLink} link
   */
  constructor(WebSocketImpl, url, link) {
    /** @type {TransportName} */
    this.name = 'websocket';
    this.link = link;
    this._opened = false;
    const ws = new WebSocketImpl(url);
    this._ws = ws;
    ws.onopen = () => {
      this._opened = true;
      this.link.opened();
    };
    ws.onmessage = (message) => {
      /** @type {any} */
      let frame;
      try {
        frame = JSON.parse(String(message.data));
      } catch {
        return; // the server sends JSON only; ignore anything else rather than fail the connection
      }
      if (frame && typeof frame === 'object') this.link.frame(frame);
    };
    ws.onclose = (closeEvent) => {
      this._detach();
      this.link.closed({ code: closeEvent.code, reason: closeEvent.reason, opened: this._opened });
    };
    ws.onerror = () => {
      // Browsers follow with a close event that carries what can be known; some other implementations send
      // none after a refused handshake, so one that never opened ends here, as the close would say: 1006.
      if (this._opened) return;
      this._detach();
      this.link.closed({ code: CloseCode.ABNORMAL, reason: '', opened: false });
    };
  }

  /** @param {string} text */
  send(text) {
    this._ws.send(text);
  }

  /**
   * @param {number} code
   * @param {string} [reason]
   */
  close(code, reason = '') {
    this._detach();
    try {
      this._ws.close(code, reason.slice(0, 100));
    } catch {
      // already closing
    }
  }

  _detach() {
    const ws = this._ws;
    ws.onopen = ws.onmessage = ws.onclose = null;
    // Errors stay ignored: Node's `ws` emits an 'error' event without a listener (closing a socket that is still
    // connecting emits one), which would end the process.
    ws.onerror = () => {};
  }
}

/**
 * The HTTP stream of `/sse` (docs/protocol.md, "Browser side (HTTP stream)"), read with fetch: server frames
 * arrive as one SSE message each; client frames are POSTed to `/sse/<stream>`, one at a time in order. A
 * stream silent for twice the welcome's `heartbeat` is dead.
 */
class HttpStreamTransport {
  /**
   * @param {typeof fetch} fetchImpl
   * @param {string} url
   * @param {{token: string | null, resume: {session: string, received: number} | undefined,
   *   credentials: RequestCredentials}} auth
   * @param {TransportLink} link
   */
  constructor(fetchImpl, url, auth, link) {
    /** @type {TransportName} */
    this.name = 'sse';
    this.link = link;
    this._fetch = fetchImpl;
    this._url = url;
    this._credentials = auth.credentials;
    this._abort = new AbortController();
    this._opened = false;
    this._ended = false;
    /** @type {string | null} the key of this stream, from the welcome; commands go to `<url>/<key>` */
    this._commandUrl = null;
    /** @type {string[]} client frames not yet accepted, oldest first */
    this._commands = [];
    this._posting = false;
    this._silenceLimit = 0;
    this._heardAt = 0;
    /** @type {ReturnType<typeof setTimeout> | null} */
    this._silenceTimer = null;
    /** @type {(() => void) | null} ends the wait before a command is sent again */
    this._wakeRetry = null;
    // After the constructor returns: the client gives the transport its link first.
    Promise.resolve().then(() => this._read(auth));
  }

  /** @param {string} text */
  send(text) {
    if (this._ended) return;
    this._commands.push(text);
    this._postCommands();
  }

  /**
   * @param {number} code
   * @param {string} [_reason]
   */
  close(code, _reason) {
    if (this._ended) return;
    this._finish();
    const commandUrl = this._commandUrl;
    if (code !== CloseCode.NORMAL || commandUrl === null) {
      this._abort.abort(); // the server parks the session, as after a dropped WebSocket
      return;
    }
    // The DELETE ends the session; a stream dropped first would only park it, so the stream waits for the answer.
    const abort = () => this._abort.abort();
    try {
      const ended = this._fetch(commandUrl, { method: 'DELETE', credentials: this._credentials, keepalive: true });
      Promise.resolve(ended).then(abort, abort);
    } catch {
      abort();
    }
  }

  /**
   * @param {{token: string | null, resume: {session: string, received: number} | undefined}} auth
   */
  async _read(auth) {
    /** @type {Record<string, string>} */
    const headers = { Accept: 'text/event-stream' };
    if (auth.token) headers.Authorization = `Bearer ${auth.token}`;
    if (auth.resume) headers['Last-Event-ID'] = `${auth.resume.session}:${auth.resume.received}`;
    /** @type {Response} */
    let response;
    try {
      response = await this._fetch(this._url, {
        method: 'GET',
        headers,
        credentials: this._credentials,
        cache: 'no-store',
        signal: this._abort.signal,
      });
    } catch (error) {
      this._lost(`the HTTP stream could not be opened: ${error instanceof Error ? error.message : error}`, false);
      return;
    }
    if (this._ended) return;
    if (response.status !== 200) {
      await this._refused(response);
      return;
    }
    const type = response.headers.get('Content-Type') ?? '';
    if (!type.toLowerCase().startsWith('text/event-stream') || !response.body) {
      this._abort.abort();
      this._lost(`the HTTP stream answered 200 with ${type || 'no Content-Type'}, not text/event-stream`, false);
      return;
    }
    this._opened = true;
    this._heardAt = Date.now();
    this.link.opened();
    const parser = new EventStreamParser((message) => this._onMessage(message.data));
    const reader = response.body.getReader();
    const decoder = new TextDecoder();
    try {
      for (;;) {
        const { value, done } = await reader.read();
        if (this._ended) return;
        if (done) break;
        this._heardAt = Date.now(); // data or a heartbeat comment: the stream is alive
        parser.push(decoder.decode(value, { stream: true }));
        if (this._ended) return; // a `close` message, or the client closed while a frame was handled
      }
      parser.push(decoder.decode());
    } catch (error) {
      if (this._ended) return;
      this._abort.abort();
      this._lost(`the HTTP stream broke: ${error instanceof Error ? error.message : error}`, true);
      return;
    }
    if (!this._ended) this._lost('the HTTP stream ended without a close message', true);
  }

  /**
   * A refusal before the stream started: the JSON body's `code` is the close code of the same refusal on a
   * WebSocket. One without a code from the service itself (admission: 429, 503) is a busy server (1013).
   * Anything else (a proxy's page, a server without `/sse`) is a failed link.
   * @param {Response} response
   */
  async _refused(response) {
    /** @type {any} */
    let body = null;
    try {
      body = await response.json();
    } catch {
      // not the service's JSON: a proxy or another server answered
    }
    if (this._ended) return;
    const error = typeof body?.error === 'string' ? body.error : undefined;
    const message = typeof body?.message === 'string' ? body.message : `HTTP ${response.status}`;
    /** @type {number} */
    let code = CloseCode.ABNORMAL;
    if (Number.isInteger(body?.code)) code = body.code;
    else if (error && (response.status === 429 || response.status === 503)) code = CloseCode.TRY_AGAIN_LATER;
    this._end({
      code,
      reason: error ? `${error}: ${message}` : `the HTTP stream was refused: ${message}`,
      opened: false,
      error,
      retryAfter: retryAfterMs(response.headers.get('Retry-After')),
    });
  }

  /** @param {string} data */
  _onMessage(data) {
    if (this._ended) return; // the rest of a chunk after a `close` message, or after the client closed
    /** @type {any} */
    let frame;
    try {
      frame = JSON.parse(data);
    } catch {
      return; // the server sends JSON only
    }
    if (!frame || typeof frame !== 'object') return;
    if (frame.type === 'close') {
      this._abort.abort();
      const code = Number.isInteger(frame.code) ? frame.code : CloseCode.ABNORMAL;
      this._end({ code, reason: typeof frame.reason === 'string' ? frame.reason : '', opened: true });
      return;
    }
    if (frame.type === 'welcome' && this._commandUrl === null) this._onWelcome(frame);
    this.link.frame(frame);
  }

  /** @param {any} frame */
  _onWelcome(frame) {
    if (typeof frame.stream === 'string' && frame.stream !== '') {
      const url = new URL(this._url);
      url.pathname = `${url.pathname.replace(/\/$/, '')}/${encodeURIComponent(frame.stream)}`;
      url.search = '';
      this._commandUrl = url.href;
    }
    if (typeof frame.heartbeat === 'number' && frame.heartbeat > 0) {
      this._silenceLimit = 2 * frame.heartbeat * 1000;
      this._watchSilence();
    }
    this._postCommands();
  }

  _watchSilence() {
    const silent = Date.now() - this._heardAt;
    if (silent >= this._silenceLimit) {
      this._abort.abort();
      this._lost(`the HTTP stream was silent for ${this._silenceLimit / 1000} s (twice its heartbeat)`, true);
      return;
    }
    this._silenceTimer = setTimeout(() => {
      this._silenceTimer = null;
      if (!this._ended) this._watchSilence();
    }, this._silenceLimit - silent);
  }

  /** Send the waiting commands one at a time, each after the previous one's answer: the server runs them in order. */
  async _postCommands() {
    if (this._posting || this._commandUrl === null) return;
    this._posting = true;
    try {
      let retries = 0;
      while (this._commands.length > 0 && !this._ended) {
        const outcome = await this._post(this._commands[0]);
        if (this._ended) return;
        if (outcome === 'retry' && retries < COMMAND_RETRIES) {
          retries += 1;
          continue;
        }
        if (outcome !== 'done') {
          this._abort.abort();
          this._lost(outcome === 'retry' ? 'the instance holding the HTTP stream did not answer' : outcome, true);
          return;
        }
        retries = 0;
        this._commands.shift();
      }
    } finally {
      this._posting = false;
    }
  }

  /**
   * POST one client frame. 'done' when it is settled (accepted, or answered as its frame), 'retry' after a 503,
   * otherwise why the stream cannot go on.
   * @param {string} text
   * @returns {Promise<string>}
   */
  async _post(text) {
    /** @type {Response} */
    let response;
    try {
      response = await this._fetch(/** @type {string} */ (this._commandUrl), {
        method: 'POST',
        headers: { 'Content-Type': 'text/plain;charset=UTF-8' }, // a simple request: no CORS preflight
        body: text,
        credentials: this._credentials,
        cache: 'no-store',
      });
    } catch (error) {
      return `a command could not be sent: ${error instanceof Error ? error.message : error}`;
    }
    if (response.ok) {
      await response.text().catch(() => ''); // read to its end, so the connection can serve the next command
      return 'done';
    }
    /** @type {any} */
    const body = await response.json().catch(() => null);
    const message = typeof body?.message === 'string' ? body.message : `HTTP ${response.status}`;
    if (response.status === 413) {
      // The frame never reached the session and the stream goes on: its request fails as an error frame would.
      this.link.frame({ type: 'error', id: frameId(text), code: 'frame_too_big', message });
      return 'done';
    }
    if (response.status === 429) {
      // The server closes the stream with 4004 (a `close` message follows); what waits would only be refused too.
      this._commands.splice(1);
      return 'done';
    }
    if (response.status === 503) {
      const wait = Math.min(retryAfterMs(response.headers.get('Retry-After')) ?? 1000, MAX_COMMAND_RETRY_MS);
      await new Promise((resolve) => {
        const timer = setTimeout(resolve, wait);
        this._wakeRetry = () => {
          clearTimeout(timer);
          resolve(undefined);
        };
      });
      this._wakeRetry = null;
      return 'retry';
    }
    return `a command was answered ${response.status} (${typeof body?.error === 'string' ? body.error : message})`;
  }

  /**
   * The link failed without a close code of the server's: 1006, as a dropped WebSocket.
   * @param {string} reason
   * @param {boolean} opened
   */
  _lost(reason, opened) {
    this._end({ code: CloseCode.ABNORMAL, reason, opened: opened && this._opened });
  }

  /** @param {LinkEnd} end */
  _end(end) {
    if (this._ended) return;
    this._finish();
    this.link.closed(end);
  }

  _finish() {
    this._ended = true;
    this._commands.length = 0;
    if (this._silenceTimer !== null) clearTimeout(this._silenceTimer);
    this._silenceTimer = null;
    this._wakeRetry?.();
  }
}

/**
 * The `id` of a client frame's JSON text, to answer it when it could not be sent.
 * @param {string} text
 * @returns {unknown}
 */
function frameId(text) {
  try {
    return JSON.parse(text).id ?? null;
  } catch {
    return null;
  }
}
