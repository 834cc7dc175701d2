// Type declarations of notifyd-client.js, written by hand to match it (the JSDoc there is the
// reference; docs/websocket.md and docs/api.md describe the protocol and the REST API).

/** A notification, as the REST API and the WebSocket/SSE frames carry it. */
export interface NotifydMessage {
  id: string;
  /** the user's change-stream position it was created at */
  seq: number;
  title: string;
  content: string;
  /** free-form category (`comment`, `system`, ...) */
  type: string;
  /** null = a system notification */
  send_user: string | null;
  /** RFC 3339 UTC */
  send_time: string;
  /** relative or http(s); follow it through {@link safeUrl} */
  skip_url: string | null;
  is_read: boolean;
  read_at: string | null;
  /** opaque JSON from the sending service */
  data?: unknown;
}

/** The user's counters after a change. */
export interface NotifydCounts {
  seq: number;
  unread: number;
  /** messages created since the bell was last opened (the badge) */
  unseen: number;
}

export interface MessageEventDetail extends NotifydCounts {
  message: NotifydMessage;
  /** it came in a resume `sync`, not live */
  replayed: boolean;
}
export interface ReadEventDetail extends NotifydCounts {
  /** null when `all` */
  ids: string[] | null;
  all: boolean;
  replayed: boolean;
}
export interface SeenEventDetail extends NotifydCounts {
  replayed: boolean;
}
export interface DeletedEventDetail extends NotifydCounts {
  ids: string[];
  replayed: boolean;
}
/** `unread`, `archived`, `unarchived`, `snoozed` (with `until`), `unsnoozed`. */
export interface StateEventDetail extends NotifydCounts {
  ids: string[];
  until?: string;
  replayed: boolean;
}
export interface TopicEventDetail {
  topic: string;
  id: string | null;
  data: unknown;
  /** the publishing user (client publishes), null for events from a backend service */
  from: string | null;
  /** the topic's retained value, sent right after subscribing */
  retained: boolean;
}
export interface CountsEventDetail extends NotifydCounts {
  /** the frame type that changed or confirmed the counters */
  source: string;
}
export interface ResetEventDetail extends NotifydCounts {
  reason: 'initial' | 'server';
}
export interface StatusEventDetail {
  state: 'connecting' | 'open' | 'closed';
  reason?: string;
  code?: number;
  attempt?: number;
  retryInMs?: number;
}
export interface ErrorEventDetail {
  code: string;
  message: string;
  ref?: unknown;
}
export interface TokenEventDetail {
  exp: number | null;
  source: 'connect' | 'refresh';
}

export interface NotifydEventMap {
  message: MessageEventDetail;
  read: ReadEventDetail;
  seen: SeenEventDetail;
  deleted: DeletedEventDetail;
  unread: StateEventDetail;
  archived: StateEventDetail;
  unarchived: StateEventDetail;
  snoozed: StateEventDetail;
  unsnoozed: StateEventDetail;
  topic: TopicEventDetail;
  counts: CountsEventDetail;
  reset: ResetEventDetail;
  status: StatusEventDetail;
  error: ErrorEventDetail;
  token: TokenEventDetail;
  /** every per-user frame applied (raw, in seq order) */
  event: Record<string, unknown>;
}

export interface NotifydStorage {
  getItem(key: string): string | null;
  setItem(key: string, value: string): void;
  removeItem?(key: string): void;
}

export interface NotifydClientOptions {
  /** Returns a valid user JWT; required unless `anonymous`. */
  getToken?: () => string | Promise<string>;
  /** Connect without a token, as a viewer of public topics. */
  anonymous?: boolean;
  /** Base URL of notifyd (http(s)://host[:port][/prefix]); default the page's origin. */
  url?: string;
  /** Resume from this seq. */
  since?: number | null;
  /** The inbox epoch `since` belongs to. */
  epoch?: number | null;
  backoffBaseMs?: number;
  backoffMaxMs?: number;
  commandTimeoutMs?: number;
  connectTimeoutMs?: number;
  refreshToken?: boolean;
  busyRetries?: number;
  busyRetryMs?: number;
  transport?: 'auto' | 'ws' | 'sse';
  /** One server connection for all tabs (a SharedWorker or a leader tab). */
  shared?: boolean;
  /** notifyd-shared-worker.js on the page's own origin; default beside the client module. */
  sharedWorkerUrl?: string | URL;
  WebSocket?: typeof WebSocket;
  EventSource?: typeof EventSource;
  storage?: NotifydStorage | null;
  fetch?: typeof fetch;
}

export interface NotifydPage {
  messages: NotifydMessage[];
  next_before: number | null;
}

/** An error from the server (error frame or HTTP error body) or from the client itself. */
export class NotifydError extends Error {
  constructor(code: string, message: string, extra?: { status?: number; field?: string; ref?: unknown; retryAfterMs?: number });
  name: 'NotifydError';
  /** `forbidden`, `validation_failed`, `unauthorized`, `busy`, `timeout`, `disconnected`, `closed`, `network`, ... */
  code: string;
  /** HTTP status, for REST errors */
  status: number | undefined;
  /** a REST error's `Retry-After` (429, 503) in ms, capped at 60 s */
  retryAfterMs: number | undefined;
  /** the invalid field, for `validation_failed` */
  field: string | undefined;
  ref: unknown;
}

export class NotifydClient {
  constructor(options: NotifydClientOptions);
  /** base http(s) URL without trailing slash */
  readonly baseUrl: string;
  /** the last applied seq (persist it to resume across page loads) */
  readonly seq: number | null;
  /** the inbox epoch of `seq` */
  readonly epoch: number | null;
  /** the latest counters, null before the first `hello` */
  readonly counts: NotifydCounts | null;
  readonly state: 'connecting' | 'open' | 'closed';
  readonly transport: 'ws' | 'sse' | null;

  /** Adds a listener; returns a function that removes it. */
  on<K extends keyof NotifydEventMap>(type: K, listener: (detail: NotifydEventMap[K]) => void): () => void;
  off<K extends keyof NotifydEventMap>(type: K, listener: (detail: NotifydEventMap[K]) => void): void;

  /** Starts connecting (and keeps reconnecting until close()). */
  connect(): void;
  /** Closes the connection for good (until connect() again); pending commands are rejected. */
  close(): void;
  /** Drops the current connection and reconnects (with `since`). */
  reconnect(): void;

  markRead(ids: string[]): Promise<NotifydCounts>;
  markUnread(ids: string[]): Promise<NotifydCounts>;
  archive(ids: string[]): Promise<NotifydCounts>;
  unarchive(ids: string[]): Promise<NotifydCounts>;
  /** `until`: a Date or an RFC 3339 string. */
  snooze(ids: string[], until: Date | string): Promise<NotifydCounts>;
  markAllRead(): Promise<NotifydCounts>;
  markAllSeen(): Promise<NotifydCounts>;

  subscribe(topics: string[]): Promise<{ topics: string[] }>;
  unsubscribe(topics: string[]): Promise<Record<string, unknown>>;
  publish(topic: string, data: unknown): Promise<{ id: string }>;
  send(
    toUser: string,
    message: { title: string; content?: string; type?: string; skip_url?: string | null; data?: unknown },
    opts?: { key?: string },
  ): Promise<{ id: string; replayed?: boolean }>;

  /** One page of the user's notifications, newest first (`before`: the previous page's `next_before`). */
  fetchPage(opts?: { limit?: number; before?: number | null; unreadOnly?: boolean }): Promise<NotifydPage>;
  fetchCounts(): Promise<NotifydCounts>;
  deleteMessage(id: string): Promise<void>;
}

/** The hub a SharedWorker or a leader tab runs for `shared: true` clients (used by notifyd-shared-worker.js). */
export class NotifydHub {
  constructor(args: {
    options: NotifydClientOptions;
    getToken: () => string | Promise<string>;
    post: (m: unknown) => void;
    storage?: NotifydStorage | null;
    onPeerGone?: (tab: string) => void;
  });
  start(): void;
  close(): void;
  readonly peers: number;
  fromPeer(tab: string, m: unknown): void;
  askToken(): Promise<string>;
}

/** `url` if it is safe to navigate to (relative, or absolute http/https), else null. */
export function safeUrl(url: string | null | undefined, base?: string): string | null;
/** The wait a 1013 close asks for (`retry_after=` in its reason), capped; undefined for other closes. */
export function retryAfterMs(code: number, reason: string): number | undefined;
/** The `exp` claim of a JWT (payload only, not verified), or null. */
export function tokenExp(token: unknown): number | null;
/** When to refresh a token that expires at `expSec` (milliseconds from now), or null. */
export function refreshDelayMs(expSec: number, nowMs?: number, rnd?: number): number | null;
/** The localStorage key the `auto` transport choice is remembered under for this notifyd. */
export function transportKey(baseUrl: string): string;
/** The `sub` claim of a JWT (payload only, not verified), or null. */
export function tokenSub(token: unknown): string | null;

export default NotifydClient;
