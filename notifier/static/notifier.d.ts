// Types for notifier.js, the notifier browser client (see docs/client.md).

export type ConnectionState = 'connecting' | 'open' | 'reconnecting' | 'closed';

/** How the client reaches the service: a WebSocket to `/ws`, or the HTTP stream of `/sse` where WebSockets are blocked. */
export type TransportName = 'websocket' | 'sse';

/** One event as published: topic, id (repeats are dropped by the client), publish time in ms, data unchanged. */
export interface NotifierEvent<T = unknown> {
  topic: string;
  id: string;
  ts: number;
  data: T;
}

export interface Welcome {
  user: string;
  topics: string[];
  /** Token expiry, Unix seconds. */
  expires: number;
  /** This session's id, sent back to resume it after a drop (null from a server without sessions). */
  session: string | null;
  /** The session was resumed: its subscriptions are restored and the events missed meanwhile follow. */
  recovered: boolean;
  /** On a recovery, restored topics the current token no longer grants; the client dropped them. */
  dropped: string[];
}

/** Events may have been missed: fetch the page's state anew. */
export interface Resync {
  /**
   * `not_recovered`: the server could not resume the session; `no_session`: there was none to resume;
   * `routing_lost`: the server rebuilt its routing while this connection stayed open (a broker node was lost).
   */
  reason: 'not_recovered' | 'no_session' | 'routing_lost';
}

/** The part of the Web Storage API the client uses to keep its session across a page reload. */
export interface SessionStore {
  getItem(key: string): string | null;
  setItem(key: string, value: string): void;
  removeItem(key: string): void;
}

/**
 * The part of a WebSocket the client uses. The browser's, Node 22's global one and the `ws` package's class all
 * fit, so passing `ws` type-checks without the DOM lib. The client sets the four handlers itself: it reads a
 * message event's `data` and a close event's `code` and `reason`.
 */
export interface WebSocketLike {
  send(data: string): void;
  close(code?: number, reason?: string): void;
  onopen: ((event: any) => void) | null;
  onmessage: ((event: any) => void) | null;
  onclose: ((event: any) => void) | null;
  onerror: ((event: any) => void) | null;
}

/** A WebSocket class: `new WebSocket(url)` opens a connection. */
export type WebSocketConstructor = new (url: string) => WebSocketLike;

export interface Refreshed {
  expires: number;
  /** Topics the renewed token no longer grants; the client dropped them. */
  dropped: string[];
}

export interface StateDetail {
  /** Close code of the connection that ended. */
  code?: number;
  reason?: string;
  /** Milliseconds until the next attempt (state `reconnecting`). */
  delay?: number;
  /** Why the client stopped (state `closed` after a terminal failure). */
  error?: NotifierError;
  /** State `open`: true when the session was resumed and nothing was missed. */
  recovered?: boolean;
  /** The transport of this connection, or of the next attempt (`reconnecting`). */
  transport?: TransportName;
}

export type EventHandler<T = unknown> = (event: NotifierEvent<T>) => void;

export interface NotifierOptions {
  /** `wss://host/ws`; `https://…` and page-relative URLs such as `/ws` are accepted too. */
  url: string;
  /** A fixed token; it cannot be renewed, so prefer `getToken`. */
  token?: string;
  /** Called before every connect and before the token expires; null or '' means "signed out" and stops the client. */
  getToken?: () => Promise<string | null> | string | null;
  /**
   * Sign in without a token: the server asks the application who the page is (its cookies;
   * NOTIFIER_CONNECT_PROXY_URL). At the sign-in's expiry the server closes with 4001 and the client reconnects
   * and resumes; 4504 (the application refused) stops it. Default false.
   */
  connectProxy?: boolean;
  /** Backoff base in ms (default 500). */
  minReconnectDelay?: number;
  /** Backoff cap in ms (default 20000). */
  maxReconnectDelay?: number;
  /** Ms between keep-alive pings (default 25000). */
  pingInterval?: number;
  /** Ms to wait for a pong before the connection counts as dead (default 10000). */
  pongTimeout?: number;
  /** Ms from dialing (including getToken) to `welcome` (default 10000). */
  connectTimeout?: number;
  /** Ms to wait for the answer to subscribe, unsubscribe or refresh (default 15000). */
  requestTimeout?: number;
  /** Renew the token this many ms before it expires, at most half its remaining life (default 60000). */
  refreshBefore?: number;
  /** Consecutive token refusals (close 4001 / 4500) before giving up (default 3). */
  maxTokenRefusals?: number;
  /**
   * Consecutive sockets that closed before opening (a refused Origin, a wrong URL, a server that is down)
   * before an `error` event with code `handshake_failed`; the client keeps retrying (default 3).
   */
  handshakeFailures?: number;
  /** Topics one client may hold (default 100, the server's default limit). */
  maxSubscriptions?: number;
  /** Requests awaiting an answer; past this a request fails at once with `too_many_pending` (default 200). */
  maxPendingRequests?: number;
  /** Outgoing frames per second, kept under the server's limit (default 15). */
  framesPerSecond?: number;
  /** Outgoing burst (default 30). */
  framesBurst?: number;
  /**
   * Recent event ids remembered to drop repeats (default 1000). An event whose id was seen among them is
   * dropped even if its topic or data differ: publishers must give every distinct event its own id.
   */
  dedupeWindow?: number;
  /**
   * Keep the session id and its event count in `sessionStorage` (true) or in the given store, so a reloaded
   * page resumes the session (default false).
   */
  persistSession?: boolean | SessionStore;
  /**
   * WebSocket implementation (default: the global one). Node before 22 has none: pass the `ws` package's,
   * `import { WebSocket } from 'ws'`.
   */
  WebSocket?: WebSocketConstructor;
  /**
   * The transports to use, in order of preference (default `['websocket', 'sse']`; `'sse'` is left out by default
   * when there is no fetch or no stream URL can be derived from `url`).
   */
  transports?: TransportName[];
  /**
   * Attempts in a row that fail before a `welcome` without an answer of the service (a WebSocket blocked by a
   * proxy, opened then cut, or never welcomed) before the next transport is tried (default 2).
   */
  fallbackAfter?: number;
  /**
   * Ms on the HTTP stream before a WebSocket is tried again beside it; once it opens, the session moves to it,
   * resumed, with nothing lost or doubled. A WebSocket that opens and dies before its welcome doubles the wait
   * (up to 16 times). 0 stays on the stream (default 60000).
   */
  upgradeAfter?: number;
  /** The HTTP stream's URL (default: `url` with http(s) for ws(s) and its last `/ws` replaced by `/sse`). */
  httpUrl?: string;
  /** fetch implementation for the HTTP stream (default: the global one). */
  fetch?: typeof fetch;
}

/** Close codes of docs/protocol.md. */
export declare const CloseCode: Readonly<{
  NORMAL: 1000;
  GOING_AWAY: 1001;
  ABNORMAL: 1006;
  INVALID_UTF8: 1007;
  MESSAGE_TOO_BIG: 1009;
  SERVER_RESTART: 1012;
  TRY_AGAIN_LATER: 1013;
  AUTH_TIMEOUT: 4000;
  TOKEN_EXPIRED: 4001;
  SLOW_CLIENT: 4002;
  SERVER_FULL: 4003;
  RATE_LIMITED: 4004;
  APPLICATION_UNAVAILABLE: 4005;
  INVALID_TOKEN: 4500;
  PROTOCOL_VIOLATION: 4501;
  USER_CONNECTION_LIMIT: 4502;
  DISCONNECTED: 4503;
  REFUSED_BY_APPLICATION: 4504;
}>;

/**
 * An error with a machine-readable code: an `error` frame's code (`forbidden`, `invalid_topic`,
 * `too_many_subscriptions`, `unavailable`, `invalid_token`, `token_expired`) or one of the client's own
 * (`timeout`, `closed`, `unsubscribed`, `too_many_pending`, `token_unavailable`, `no_token`, `bad_url`,
 * `handshake_failed`, `origin_not_allowed`, `frame_too_big`,
 * `message_too_big`, `invalid_utf8`, `protocol_violation`, `user_connection_limit`, `disconnected`, `terminal_close`).
 */
export declare class NotifierError extends Error {
  constructor(code: string, message: string, detail?: { topic?: string; closeCode?: number });
  readonly code: string;
  /** The topic the error is about, when it is about one. */
  readonly topic: string | undefined;
  /** The close code that stopped the client, for errors that stopped it. */
  readonly closeCode: number | undefined;
}

/** Exponential backoff with full jitter: uniform in [0, min(max, base * 2^attempt)). */
export declare function backoffDelay(attempt: number, base: number, max: number, random?: () => number): number;

/** Ms from now until a token expiring at `expiresMs` should be renewed. */
export declare function refreshDelay(expiresMs: number, nowMs: number, refreshBefore: number): number;

export declare class NotifierClient {
  constructor(options: NotifierOptions);
  readonly state: ConnectionState;
  /** The token's `sub`, once welcomed. */
  readonly user: string | null;
  /** The current token's expiry, Unix seconds, once known. */
  readonly expires: number | null;
  /** Topics held (confirmed or waiting), the personal topic included once welcomed. */
  readonly topics: string[];
  /** The transport of the current connection, or of the next attempt. */
  readonly transport: TransportName;

  on(name: 'state', listener: (state: ConnectionState, detail: StateDetail) => void): () => void;
  on(name: 'event', listener: EventHandler): () => void;
  on(name: 'error', listener: (error: NotifierError) => void): () => void;
  on(name: 'welcome', listener: (welcome: Welcome) => void): () => void;
  /** The server confirmed a topic: after `subscribe()`, and again for each topic restored after a reconnect. */
  on(name: 'subscribed', listener: (subscription: { topic: string }) => void): () => void;
  on(name: 'refreshed', listener: (refreshed: Refreshed) => void): () => void;
  /** The server took a topic away (its backend asked it to); the topic is dropped and not restored. */
  on(name: 'unsubscribed', listener: (unsubscribed: { topic: string; reason: 'server' }) => void): () => void;
  /**
   * A (re)connection could not resume the session: events may have been missed. Emitted once the topics
   * subscribed again are confirmed or refused, so state fetched in answer is followed by every later event.
   */
  on(name: 'resync', listener: (resync: Resync) => void): () => void;
  off(name: string, listener: (...args: any[]) => void): void;

  /** Start connecting; the client then stays connected until `close()` or a terminal failure. */
  connect(): void;
  /** Resolves on `subscribed`; rejects with a NotifierError carrying the `error` frame's code. */
  subscribe<T = unknown>(topic: string, handler?: EventHandler<T>): Promise<void>;
  /** Resolves on `unsubscribed` (at once when not connected). With a handler, only that handler is removed. */
  unsubscribe<T = unknown>(topic: string, handler?: EventHandler<T>): Promise<void>;
  /** Close for good with 1000, which ends the session; waiting subscribes reject with `closed`. */
  close(): void;
}

/** One message of a `text/event-stream`: its data lines joined, the last event id, its event type. */
export interface EventStreamMessage {
  data: string;
  id: string;
  event: string;
}

/**
 * The client's `text/event-stream` reader: push decoded text in chunks of any size; `onMessage` is called per
 * message. Lines may end in CRLF, LF or CR; comments are skipped. Throws RangeError on a line over 8 Mi characters.
 */
export declare class EventStreamParser {
  constructor(onMessage: (message: EventStreamMessage) => void);
  /** The id of the last message that had one, as EventSource's `lastEventId`. */
  readonly lastEventId: string;
  push(text: string): void;
}
