// notifyd-client.js: the browser client of notifyd (an ES module, no build step, no dependencies).
// Served by notifyd at /client/notifyd-client.js. Protocol: docs/websocket.md; REST: docs/api.md.
//
//   import { NotifydClient } from '/client/notifyd-client.js';
//   const client = new NotifydClient({
//     url: 'https://notify.example.com',              // default: the page's origin
//     getToken: async () => (await fetch('/my-app/notifyd-token')).text(),
//   });
//   client.on('reset', async () => render((await client.fetchPage({ limit: 20 })).messages));
//   client.on('message', ({ message }) => prepend(message));
//   client.on('counts', ({ unseen }) => setBadge(unseen));
//   client.connect();
//
// What it does for you: keeps the last applied `seq` and resumes with `?since=` after any
// disconnect (so nothing is missed and nothing is applied twice), reconnects forever with capped
// exponential backoff and full jitter (at once when the browser comes back online), sends an
// application ping every `heartbeat_s` and drops a connection that stayed silent for two of them,
// and matches command replies to their commands by `ref`.
//
// Transports (option `transport`, docs/websocket.md "Transports and shared connections"): a
// WebSocket (`/ws`), or Server-Sent Events (`/sse`, with a ticket; commands over REST) where a
// WebSocket cannot get through; `auto` (the default) falls back to SSE and remembers that for the
// notifyd origin for 24 h. `shared: true` keeps one connection for all tabs of the user (a
// SharedWorker running this same client, notifyd-shared-worker.js, or a leader tab).
//
// Token lifetime: the server closes a socket with 4001 when its token's `exp` passes, unless the
// client sent a fresh one in-band first. So the client reads `exp` from the JWT it got from
// `getToken` (the payload only, no verification), calls `getToken` again before `exp` and sends
// `{"type":"auth","token":...}`; after a refused refresh or a 4001 close it reconnects at once
// (no backoff) with a token from `getToken`, resuming with `since` as after any drop.

/**
 * A notification, as the REST API and the WebSocket frames carry it.
 * @typedef {Object} NotifydMessage
 * @property {string} id
 * @property {number} seq            the user's change-stream position it was created at
 * @property {string} title
 * @property {string} content
 * @property {string} type           free-form category (`comment`, `system`, ...)
 * @property {string|null} send_user null = a system notification
 * @property {string} send_time      RFC 3339 UTC
 * @property {string|null} skip_url  relative or http(s); follow it with {@link safeUrl}
 * @property {boolean} is_read
 * @property {string|null} read_at
 * @property {*} [data]              opaque JSON from the sending service
 */

/**
 * The user's counters after a change. Every per-user frame carries them.
 * @typedef {Object} NotifydCounts
 * @property {number} seq     the user's change-stream position
 * @property {number} unread  unread messages
 * @property {number} unseen  messages created since the bell was last opened (the badge)
 */

/**
 * @typedef {NotifydCounts & {message: NotifydMessage, replayed: boolean}} MessageEventDetail
 *   `message`: a notification arrived. `replayed` = it came in a resume `sync`, not live.
 * @typedef {NotifydCounts & {ids: string[]|null, all: boolean, replayed: boolean}} ReadEventDetail
 *   `read`: messages were marked read (`all` = read-all, then `ids` is null), by any session.
 * @typedef {NotifydCounts & {replayed: boolean}} SeenEventDetail
 *   `seen`: the bell was opened somewhere (unseen is now 0).
 * @typedef {NotifydCounts & {ids: string[], replayed: boolean}} DeletedEventDetail
 *   `deleted`: messages were deleted.
 * @typedef {NotifydCounts & {ids: string[], until?: string, replayed: boolean}} StateEventDetail
 *   `unread`, `archived`, `unarchived`, `snoozed` (with `until`), `unsnoozed`: inbox states
 *   changed (docs/api.md). Archived and snoozed messages leave the inbox list; unarchived,
 *   unsnoozed and unread ones are back, unread.
 * @typedef {{topic: string, id: string|null, data: *, from: string|null, retained: boolean}} TopicEventDetail
 *   `topic`: an event on a subscribed topic. `retained` = the topic's last value, sent right after
 *   subscribing (then live ones follow); `from` = the publishing user for client publishes (set by
 *   the server from the token), null for events from a backend service. An id already emitted
 *   for that topic is dropped (the server delivers at least once).
 * @typedef {NotifydCounts & {source: string}} CountsEventDetail
 *   `counts`: the counters changed or were confirmed (`source` = the frame type).
 * @typedef {NotifydCounts & {reason: 'initial'|'server'}} ResetEventDetail
 *   `reset`: drop the list and reload the first page with {@link NotifydClient#fetchPage}.
 *   `initial` = first connection of this client (it had no seq); `server` = the server could not
 *   replay what was missed (too far behind, older than retention, or the database was restored).
 * @typedef {Object} StatusEventDetail
 *   `status`: the connection state changed.
 * @property {'connecting'|'open'|'closed'} state  `open` = the server's `hello` arrived
 * @property {string} [reason]     why it closed (`server close`, `heartbeat timeout`, ...)
 * @property {number} [code]       the WebSocket close code, when there was one
 * @property {number} [attempt]    consecutive failed attempts so far
 * @property {number} [retryInMs]  when the next attempt starts (absent after close())
 * @typedef {{code: string, message: string, ref?: *}} ErrorEventDetail
 *   `error`: an error frame not tied to a command of this client, a listener that threw, or
 *   `getToken` failing during an in-band refresh (code `token`).
 * @typedef {{exp: number|null, source: 'connect'|'refresh'}} TokenEventDetail
 *   `token`: the socket now runs on a token that expires at `exp` (unix seconds; null = no `exp`
 *   could be read, so no refresh is scheduled). `connect` = at `hello`; `refresh` = the server
 *   acknowledged an in-band `auth`.
 * @typedef {Object} NotifydEventMap
 * @property {MessageEventDetail} message
 * @property {ReadEventDetail} read
 * @property {SeenEventDetail} seen
 * @property {DeletedEventDetail} deleted
 * @property {StateEventDetail} unread
 * @property {StateEventDetail} archived
 * @property {StateEventDetail} unarchived
 * @property {StateEventDetail} snoozed
 * @property {StateEventDetail} unsnoozed
 * @property {TopicEventDetail} topic
 * @property {CountsEventDetail} counts
 * @property {ResetEventDetail} reset
 * @property {StatusEventDetail} status
 * @property {ErrorEventDetail} error
 * @property {TokenEventDetail} token
 * @property {Object} event  every per-user frame applied (raw, in seq order), for logging
 */

/**
 * @typedef {Object} NotifydClientOptions
 * @property {() => (string|Promise<string>)} [getToken]  returns a valid user JWT; called before every
 *   connection attempt and REST call, and before the socket's token expires (in-band refresh), so
 *   it must not hand back a cached token close to its `exp`. Its promise is abandoned (`timeout`)
 *   after `connectTimeoutMs`. Required unless `anonymous`.
 * @property {boolean} [anonymous=false] connect without a token, as a viewer of public topics
 *   (servers with `NOTIFYD_PUBLIC_TOPICS`): only subscribe/unsubscribe work; no inbox, no counts.
 * @property {string} [url]             base URL of notifyd (http(s)://host[:port][/prefix]); default
 *   the page's origin. The WebSocket URL is derived from it (ws(s)://.../ws).
 * @property {number|null} [since]      resume from this seq (e.g. kept in sessionStorage); default
 *   none: the first `hello` triggers a `reset` with reason `initial`
 * @property {number|null} [epoch]      the inbox epoch `since` belongs to ({@link NotifydClient#epoch},
 *   kept beside it): if the user's inbox was erased and began again meanwhile, the resume is a
 *   `reset`, not the new inbox's events after `since`
 * @property {number} [backoffBaseMs=500]   first retry delay cap
 * @property {number} [backoffMaxMs=30000]  cap of the retry delay
 * @property {number} [commandTimeoutMs=15000] a command not answered by then is rejected (`timeout`)
 * @property {number} [connectTimeoutMs=10000] an attempt without `hello` by then is abandoned
 * @property {boolean} [refreshToken=true] send a fresh token in-band before `exp`; false = let the
 *   server close with 4001 at `exp` and reconnect at once with a new token instead
 * @property {number} [busyRetries=3] a command answered `busy` (too many commands in flight on this
 *   socket) is sent again up to this many times, after `busyRetryMs`, then twice that, ... (with
 *   jitter); after that its promise rejects with code `busy`
 * @property {number} [busyRetryMs=200] first wait before resending a `busy` command
 * @property {'auto'|'ws'|'sse'} [transport='auto'] `ws`: WebSocket only; `sse`: Server-Sent Events
 *   only (`GET /sse` with a ticket; commands over REST); `auto`: WebSocket first, and SSE when no
 *   `hello` came within 5 s or the first two attempts ended before one (a proxy that strips
 *   `Upgrade`). That fallback is remembered for the notifyd origin for 24 h (localStorage).
 * @property {boolean} [shared=false] one server connection for all tabs of this browser profile,
 *   origin and user: a SharedWorker ({@link NotifydClientOptions.sharedWorkerUrl}) holds it, or,
 *   where there is none, one leader tab elected with Web Locks relays over BroadcastChannel
 * @property {string|URL} [sharedWorkerUrl] the worker script (`notifyd-shared-worker.js`, shipped
 *   beside this file) on the page's own origin; default beside this module
 * @property {typeof WebSocket} [WebSocket] WebSocket implementation (default the global one)
 * @property {typeof EventSource} [EventSource] EventSource implementation (default the global one)
 * @property {{getItem: Function, setItem: Function, removeItem?: Function}|null} [storage] where the
 *   `auto` choice is remembered (default localStorage; null = nowhere)
 * @property {typeof fetch} [fetch]         fetch implementation (default the global one)
 */

/** An error from the server (error frame or HTTP error body) or from the client itself. */
export class NotifydError extends Error {
  /**
   * @param {string} code     `forbidden`, `validation_failed`, `unauthorized`, `busy`, `timeout`,
   *                          `disconnected`, `closed`, `network`, ... (docs/websocket.md, docs/api.md)
   * @param {string} message
   * @param {{status?: number, field?: string, ref?: *, retryAfterMs?: number}} [extra]
   */
  constructor(code, message, extra = {}) {
    super(message);
    this.name = 'NotifydError';
    /** @type {string} */
    this.code = code;
    /** @type {number|undefined} HTTP status, for REST errors */
    this.status = extra.status;
    /** @type {number|undefined} a REST error's `Retry-After` (429, 503), in ms, capped at 60 s */
    this.retryAfterMs = extra.retryAfterMs;
    /** @type {string|undefined} the invalid field, for `validation_failed` */
    this.field = extra.field;
    this.ref = extra.ref;
  }
}

/**
 * `url` if it is safe to navigate to (relative, or absolute http/https), else null.
 * Notifications carry `skip_url`; the server refuses other schemes, and this is the second fence
 * (a row written around the API must still never become a `javascript:` link).
 * @param {string|null|undefined} url
 * @param {string} [base] default: the page's URL
 * @returns {string|null} the absolute URL to navigate to
 */
export function safeUrl(url, base) {
  if (typeof url !== 'string' || url === '') return null;
  // eslint-disable-next-line no-control-regex
  if (/[\u0000-\u001f\u007f\s\\]/.test(url) || url.startsWith('//')) return null;
  let parsed;
  try {
    parsed = new URL(url, base ?? globalThis.location?.href);
  } catch {
    return null;
  }
  return parsed.protocol === 'http:' || parsed.protocol === 'https:' ? parsed.href : null;
}

const PER_USER_TYPES = new Set([
  'message.created',
  'message.read',
  'message.read_all',
  'message.seen_all',
  'message.deleted',
  // Inbox states (docs/api.md): each also a seq of the user's stream, so a client that did not
  // know them would see a hole in seq and reconnect forever.
  'message.unread',
  'message.archived',
  'message.unarchived',
  'message.snoozed',
  'message.unsnoozed',
]);

/** Event ids remembered per topic to drop repeats. */
const TOPIC_IDS_KEPT = 256;

/** Close codes the client closes with (4000-4999 are free for applications). */
const CLOSE_HEARTBEAT = 4000;
const CLOSE_CONNECT_TIMEOUT = 4002;
const CLOSE_GAP = 4003;
const CLOSE_TOKEN_REFRESH = 4004; // an in-band refresh failed: reconnect with a fresh token
/** The server's close code for a token whose `exp` passed (contract §7). */
const CLOSE_TOKEN_EXPIRED = 4001;
/** The server is busy (a reconnect storm): its close reason names when to come back. */
const CLOSE_TRY_AGAIN_LATER = 1013;
/** The longest `retry_after` honoured (a bad value must not park the client for hours). */
const RETRY_AFTER_MAX_MS = 60_000;

/**
 * The `retry_after=<ms>` in a 1013 close reason (already jittered by the server), else undefined.
 * @param {number} code @param {string} reason
 */
export function retryAfterMs(code, reason) {
  if (code !== CLOSE_TRY_AGAIN_LATER) return undefined;
  const m = /retry_after=(\d+)/.exec(reason || '');
  return m ? Math.min(Number(m[1]), RETRY_AFTER_MAX_MS) : undefined;
}

/** Refresh at least this long before `exp` when the token lives long enough for it. */
const REFRESH_LEAD_MS = 30_000;
/** Never schedule a refresh sooner than this (a token about to expire must not spin). */
const MIN_REFRESH_MS = 500;
/** setTimeout fires at once for delays over 2^31-1 ms (24.8 days): re-arm daily instead. */
const MAX_TIMER_MS = 86_400_000;
/** Two immediate reconnects (after 4001) closer than this: the second one uses the backoff. */
const IMMEDIATE_RETRY_GAP_MS = 1_000;

/**
 * The `exp` claim (unix seconds) of a JWT, read from its payload without verifying anything (the
 * client only uses it to know when to refresh; the server verifies). Null if it has none.
 * @param {*} token
 * @returns {number|null}
 */
export function tokenExp(token) {
  if (typeof token !== 'string') return null;
  const parts = token.split('.');
  if (parts.length !== 3 || parts[1] === '') return null;
  try {
    let b64 = parts[1].replace(/-/g, '+').replace(/_/g, '/');
    b64 += '='.repeat((4 - (b64.length % 4)) % 4);
    const bytes = Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
    const payload = JSON.parse(new TextDecoder().decode(bytes));
    return payload && Number.isFinite(payload.exp) ? payload.exp : null;
  } catch {
    return null;
  }
}

/**
 * How long to wait before refreshing a token that expires at `expSec`: 80% of the remaining
 * lifetime but at least 30 s before `exp`; a token too short for both is refreshed half way. Up
 * to 10% earlier at random, so tabs that connected together do not all call getToken at once.
 * Null when `exp` has already passed by this clock (the server's 4001 brings a fresh token then).
 * @param {number} expSec  unix seconds
 * @param {number} [nowMs] default Date.now()
 * @param {number} [rnd]   in [0, 1), default Math.random()
 * @returns {number|null} milliseconds
 */
export function refreshDelayMs(expSec, nowMs = Date.now(), rnd = Math.random()) {
  const remaining = expSec * 1000 - nowMs;
  if (!Number.isFinite(remaining) || remaining <= 0) return null;
  let delay = Math.min(0.8 * remaining, remaining - REFRESH_LEAD_MS);
  if (delay < remaining / 2) delay = remaining / 2;
  delay *= 1 - 0.1 * rnd;
  return Math.max(MIN_REFRESH_MS, Math.floor(delay));
}

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

/** `auto`: a WebSocket attempt without `hello` by then means the fallback to SSE (contract §10). */
const AUTO_HELLO_MS = 5_000;
/** `auto`: this many WebSocket attempts ended before any `hello`: the fallback to SSE. */
const AUTO_EARLY_FAILURES = 2;
/** How long the fallback to SSE is remembered for a notifyd origin. */
const AUTO_REMEMBER_MS = 24 * 3600 * 1000;
/** The localStorage key prefix of the remembered transport (followed by the notifyd origin). */
const TRANSPORT_KEY = 'notifyd:transport:';
/** Frame types an SSE stream carries as `event:` names (EventSource needs a listener per name). */
const SSE_EVENTS = ['hello', 'sync', 'topic.event', ...PER_USER_TYPES];

/** The localStorage key the `auto` choice for `baseUrl` is kept under. */
export function transportKey(baseUrl) {
  let origin = baseUrl;
  try {
    origin = new URL(baseUrl).origin;
  } catch {
    /* keep the raw string */
  }
  return TRANSPORT_KEY + origin;
}

/** The `sub` claim of a JWT (unverified, like {@link tokenExp}), or null. */
export function tokenSub(token) {
  if (typeof token !== 'string') return null;
  const parts = token.split('.');
  if (parts.length !== 3) return null;
  try {
    let b64 = parts[1].replace(/-/g, '+').replace(/_/g, '/');
    b64 += '='.repeat((4 - (b64.length % 4)) % 4);
    const bytes = Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
    const payload = JSON.parse(new TextDecoder().decode(bytes));
    return payload && typeof payload.sub === 'string' ? payload.sub : null;
  } catch {
    return null;
  }
}

/**
 * An EventSource dressed as the part of a WebSocket the client uses: `onmessage` gets every
 * frame (whatever its `event:` name), `onclose` the end of the stream. There is nothing to send
 * upstream (commands go over REST), so `readyState` is never 1 for {@link NotifydClient#_send}.
 * The EventSource is closed on its first error: the client reconnects itself, with a fresh
 * ticket, `since`, its backoff and its status events, as after any WebSocket drop.
 */
class SseConn {
  constructor(ES, url) {
    this.kind = 'sse';
    this.readyState = 0;
    this.onmessage = null;
    this.onclose = null;
    this.onerror = null;
    const es = new ES(url);
    this.es = es;
    const deliver = (ev) => this.onmessage?.({ data: ev.data });
    for (const name of SSE_EVENTS) es.addEventListener(name, deliver);
    es.addEventListener('message', deliver);
    es.addEventListener('error', (ev) => {
      // `event: error` from the server is a MessageEvent with data (token_expired, ...); a
      // failed or lost connection is a plain Event.
      if (typeof ev.data === 'string') {
        deliver(ev);
        return;
      }
      es.close();
      this.readyState = 3;
      this.onclose?.({ code: 1006, reason: 'event stream lost' });
    });
  }

  send() {
    throw new Error('an event stream has no upstream');
  }

  close() {
    this.readyState = 3;
    this.es.close();
  }
}

/**
 * The notifyd client. One instance per user session (per tab); it owns one connection (WebSocket
 * or event stream) at a time, or, with `shared: true`, talks to the hub that owns it.
 */
export class NotifydClient {
  /** @param {NotifydClientOptions} options */
  constructor(options) {
    this._anonymous = options?.anonymous === true;
    if (!options || (!this._anonymous && typeof options.getToken !== 'function')) {
      throw new TypeError('NotifydClient: options.getToken (a function) is required');
    }
    this._getToken = options.getToken;
    const base = options.url ?? globalThis.location?.origin;
    if (!base) throw new TypeError('NotifydClient: options.url is required outside a browser');
    /** @type {string} base http(s) URL without trailing slash */
    this.baseUrl = String(base).replace(/\/+$/, '');
    this._backoffBase = options.backoffBaseMs ?? 500;
    this._backoffMax = options.backoffMaxMs ?? 30_000;
    this._commandTimeout = options.commandTimeoutMs ?? 15_000;
    this._connectTimeout = options.connectTimeoutMs ?? 10_000;
    this._refreshEnabled = options.refreshToken ?? true;
    this._busyRetries = options.busyRetries ?? 3;
    this._busyRetryMs = options.busyRetryMs ?? 200;
    this._WS = options.WebSocket ?? globalThis.WebSocket;
    this._ES = options.EventSource ?? globalThis.EventSource;
    const mode = options.transport ?? 'auto';
    if (!['auto', 'ws', 'sse'].includes(mode)) {
      throw new TypeError("NotifydClient: options.transport must be 'auto', 'ws' or 'sse'");
    }
    /** @type {'auto'|'ws'|'sse'} */
    this._mode = mode;
    this._storage = options.storage !== undefined ? options.storage : safeLocalStorage();
    /** `auto` fell back to SSE (this client, or remembered for the origin) */
    this._fellBack = mode === 'auto' && this._rememberedSse();
    this._wsEverOpen = false; // a WebSocket reached `hello` in this client: auto stays on it
    this._wsEarlyFailures = 0;
    /** @type {'ws'|'sse'|null} the transport of the current connection */
    this._transport = null;
    this._sharedOpt = options.shared === true;
    /** true while this tab's connection is a hub's (shared: true) */
    this._remote = false;
    this._sharedWorkerUrl = options.sharedWorkerUrl;
    /** the options a hub (worker or leader tab) builds its own client from */
    this._options = options;
    /** set by a hub: topic ids are not filtered here (each tab filters its own) */
    this._keepTopicRepeats = options._keepTopicRepeats === true;
    this._fetch = options.fetch ?? globalThis.fetch?.bind(globalThis);
    /** @type {{token: string, until: number}|null} the token REST calls reuse until `until` (ms) */
    this._restToken = null;
    /** @type {Promise<{token: string, fresh: boolean}>|null} a getToken for REST under way */
    this._restTokenCall = null;

    /** @type {number|null} */
    this._seq = Number.isSafeInteger(options.since) && options.since >= 0 ? options.since : null;
    /** @type {number|null} a resume's `hello` epoch, taken once an event follows it */
    this._helloEpoch = null;
    /** @type {number|null} which inbox `_seq` counts in (set by the initial `hello` and resets) */
    this._epoch =
      this._seq !== null && Number.isSafeInteger(options.epoch) && options.epoch >= 0 ? options.epoch : null;
    /** @type {NotifydCounts|null} */
    this._counts = null;
    /** @type {Map<string, Set<Function>>} */
    this._listeners = new Map();
    /** @type {WebSocket|null} */
    this._ws = null;
    this._state = 'closed';
    this._wanted = false; // connect() called and close() not
    this._attempt = 0;
    this._retryTimer = null;
    this._connectTimer = null;
    this._heartbeatTimer = null;
    this._heartbeatMs = 25_000;
    this._lastHeard = 0;
    this._nextRef = 0;
    this._gen = 0; // connection attempt generation
    this._pingAt = null; // when the oldest unanswered ping was sent
    /** @type {number|null} `exp` (unix s) of the token the current socket runs on */
    this._tokenExp = null;
    this._refreshTimer = null;
    this._refreshAt = 0; // Date.now() value the refresh is due at
    this._lastImmediate = 0; // when the last no-backoff reconnect started
    /** @type {Map<string, {resolve: Function, reject: Function, timer: *}>} */
    this._pending = new Map();
    /** @type {Set<Function>} waiting for the next `hello` */
    this._openWaiters = new Set();
    /** topics acked by the server, re-subscribed after every reconnect */
    this._topics = new Set();
    /** @type {Map<string, Set<string>>} per topic, the ids of the last events emitted */
    this._topicIds = new Map();

    this._onOnline = () => this._retryNow('online');
    this._onVisible = () => {
      if (globalThis.document?.visibilityState === 'visible') this._retryNow('visible');
    };
  }

  // ---------------------------------------------------------------- state

  /** @returns {number|null} the last applied seq (persist it to resume across page loads) */
  get seq() {
    return this._seq;
  }

  /** @returns {number|null} the inbox epoch of {@link NotifydClient#seq}: keep it beside `seq` */
  get epoch() {
    return this._epoch;
  }

  /** @returns {NotifydCounts|null} the latest counters, null before the first `hello` */
  get counts() {
    return this._counts ? { ...this._counts } : null;
  }

  /** @returns {'connecting'|'open'|'closed'} */
  get state() {
    return this._state;
  }

  /** @returns {'ws'|'sse'|null} the transport of the last connection (or of the shared one) */
  get transport() {
    return this._transport;
  }

  // ---------------------------------------------------------------- transport choice

  _rememberedSse() {
    try {
      const raw = this._storage?.getItem(transportKey(this.baseUrl));
      if (!raw) return false;
      const v = JSON.parse(raw);
      return v?.transport === 'sse' && Number.isFinite(v.until) && v.until > Date.now();
    } catch {
      return false;
    }
  }

  _rememberSse() {
    try {
      const v = JSON.stringify({ transport: 'sse', until: Date.now() + AUTO_REMEMBER_MS });
      this._storage?.setItem(transportKey(this.baseUrl), v);
    } catch {
      /* storage full or denied: the fallback is decided again next time */
    }
  }

  /** `POST /api/v1/me/tickets` with `token`: a ticket for `GET /sse` (valid <= 5 min). */
  async _mintTicket(token) {
    if (!this._fetch) throw new NotifydError('network', 'no fetch available');
    const res = await this._fetch(`${this.baseUrl}/api/v1/me/tickets`, {
      method: 'POST',
      headers: { Authorization: `Bearer ${token}`, Accept: 'application/json' },
    });
    let json = null;
    try {
      json = await res.json();
    } catch {
      /* not JSON */
    }
    if (!res.ok || typeof json?.ticket !== 'string') {
      throw new NotifydError(String(json?.error?.code ?? `http_${res.status}`), 'could not get an SSE ticket', {
        status: res.status,
      });
    }
    return json.ticket;
  }

  /**
   * Over SSE the topics are fixed per stream: checks `topics` with `HEAD /sse` (403 for one not
   * allowed, without opening a session), then reopens the stream with them, resuming with
   * `since` (nothing is lost or doubled; retained values come again and repeats are dropped).
   */
  async _sseTopics(topics) {
    const q = new URLSearchParams();
    if (!this._anonymous) q.set('ticket', await this._mintTicket(await this._fetchToken()));
    if (topics.length > 0) q.set('topics', topics.join(','));
    if (topics.length > 0 || !this._anonymous) {
      let res;
      try {
        res = await this._fetch(`${this.baseUrl}/sse?${q}`, { method: 'HEAD' });
      } catch (e) {
        throw new NotifydError('network', String(e?.message ?? e));
      }
      if (!res.ok) {
        const code = res.status === 403 ? 'forbidden' : res.status === 422 ? 'validation_failed' : `http_${res.status}`;
        throw new NotifydError(code, `topics refused (${res.status})`, { status: res.status });
      }
    }
    this._topics = new Set(topics);
    for (const t of this._topicIds.keys()) if (!this._topics.has(t)) this._topicIds.delete(t);
    if (this._ws) this._teardown(1000, 'topics changed');
    clearTimeout(this._retryTimer);
    this._retryTimer = null;
    this._open('topics changed');
    await this._whenOpen();
  }

  // ---------------------------------------------------------------- events

  /**
   * Adds a listener. Listeners get the detail object directly.
   * @template {keyof NotifydEventMap} K
   * @param {K} type
   * @param {(detail: NotifydEventMap[K]) => void} listener
   * @returns {() => void} a function that removes the listener
   */
  on(type, listener) {
    let set = this._listeners.get(type);
    if (!set) this._listeners.set(type, (set = new Set()));
    set.add(listener);
    return () => this.off(type, listener);
  }

  /**
   * Removes a listener added with {@link NotifydClient#on}.
   * @template {keyof NotifydEventMap} K
   * @param {K} type
   * @param {(detail: NotifydEventMap[K]) => void} listener
   */
  off(type, listener) {
    this._listeners.get(type)?.delete(listener);
  }

  _emit(type, detail) {
    const set = this._listeners.get(type);
    if (!set) return;
    for (const fn of [...set]) {
      try {
        fn(detail);
      } catch (e) {
        if (type === 'error') console.error(e);
        else {
          console.error('notifyd-client: a listener threw', e);
          this._emit('error', { code: 'listener', message: String(e?.message ?? e) });
        }
      }
    }
  }

  _status(state, extra = {}) {
    this._state = state;
    this._emit('status', { state, ...extra });
  }

  // ---------------------------------------------------------------- connection

  /** Starts connecting (and keeps reconnecting until {@link NotifydClient#close}). */
  connect() {
    if (this._wanted) return;
    this._wanted = true;
    if (this._sharedOpt && !this._anonymous) {
      this._startShared();
      return;
    }
    globalThis.addEventListener?.('online', this._onOnline);
    globalThis.document?.addEventListener?.('visibilitychange', this._onVisible);
    this._open();
  }

  /** Closes the connection for good (until connect() again); pending commands are rejected. */
  close() {
    // A REST token is this session's: a client closed at logout must not keep one.
    this._restToken = null;
    this._restTokenCall = null;
    if (!this._wanted) return;
    this._wanted = false;
    if (this._remote) {
      this._stopShared();
      for (const w of this._openWaiters) w(new NotifydError('closed', 'the client was closed'));
      this._openWaiters.clear();
      this._status('closed', { reason: 'client closed' });
      return;
    }
    this._gen += 1;
    globalThis.removeEventListener?.('online', this._onOnline);
    globalThis.document?.removeEventListener?.('visibilitychange', this._onVisible);
    clearTimeout(this._retryTimer);
    this._retryTimer = null;
    this._teardown(1000, 'client closed');
    this._rejectAll('closed', 'the client was closed');
    for (const w of this._openWaiters) w(new NotifydError('closed', 'the client was closed'));
    this._openWaiters.clear();
    this._status('closed', { reason: 'client closed' });
  }

  async _open(why) {
    this._retryTimer = null;
    if (!this._wanted || this._ws) return;
    const gen = ++this._gen;
    this._status('connecting', why ? { attempt: this._attempt, reason: why } : { attempt: this._attempt });
    let token = null;
    if (!this._anonymous) {
      try {
        token = await this._fetchToken();
      } catch (e) {
        if (gen === this._gen) this._scheduleRetry({ reason: `getToken failed: ${e?.message ?? e}` });
        return;
      }
    }
    // close() or another attempt happened while the token was being fetched.
    if (gen !== this._gen || !this._wanted || this._ws) return;
    this._tokenExp = token === null ? null : tokenExp(token);
    const sse = this._mode === 'sse' || (this._mode === 'auto' && this._fellBack);
    const q = new URLSearchParams();
    if (sse) {
      if (token !== null) {
        // EventSource cannot set headers and a JWT must not sit in a URL: a short-lived ticket.
        let ticket;
        try {
          ticket = await this._mintTicket(token);
        } catch (e) {
          if (gen === this._gen) this._scheduleRetry({ reason: `ticket failed: ${e?.message ?? e}` });
          return;
        }
        if (gen !== this._gen || !this._wanted || this._ws) return;
        q.set('ticket', ticket);
      }
      if (this._topics.size > 0) q.set('topics', [...this._topics].join(','));
    } else if (token !== null) {
      q.set('token', String(token));
    }
    if (this._seq !== null) q.set('since', String(this._seq));
    // Epoch 0 with events applied cannot say whose they were (the server would answer with a
    // reset): sent as unknown, and learnt from this connection's hello (see _onHello).
    if (this._seq !== null && this._epoch !== null && !(this._epoch === 0 && this._seq > 0)) {
      q.set('epoch', String(this._epoch));
    }
    let ws;
    try {
      if (sse) {
        if (!this._ES) throw new Error('no EventSource available');
        ws = new SseConn(this._ES, `${this.baseUrl}/sse?${q}`);
      } else {
        ws = new this._WS(`${this.baseUrl.replace(/^http/i, 'ws')}/ws?${q}`);
      }
    } catch (e) {
      this._scheduleRetry({ reason: `bad url: ${e?.message ?? e}` });
      return;
    }
    this._ws = ws;
    this._transport = sse ? 'sse' : 'ws';
    this._hello = false;
    this._helloEpoch = null;
    // `auto` on a WebSocket that never reached hello: 5 s decide the fallback.
    const probing = !sse && this._mode === 'auto' && !this._wsEverOpen;
    this._connectTimer = setTimeout(
      () => {
        if (this._ws === ws && !this._hello) this._drop(ws, CLOSE_CONNECT_TIMEOUT, 'connect timeout');
      },
      probing ? Math.min(this._connectTimeout, AUTO_HELLO_MS) : this._connectTimeout,
    );
    ws.onmessage = (ev) => {
      if (this._ws !== ws) return;
      this._lastHeard = Date.now();
      let frame;
      try {
        frame = JSON.parse(ev.data);
      } catch {
        this._emit('error', { code: 'bad_frame', message: 'the server sent a frame that is not JSON' });
        return;
      }
      if (frame && typeof frame === 'object') this._onFrame(ws, frame);
    };
    ws.onclose = (ev) => {
      if (this._ws !== ws) return;
      // 4001: the token expired (a refresh did not happen in time, or refreshToken is off). That
      // says nothing about the network, so reconnect at once with a fresh token.
      const immediate = ev.code === CLOSE_TOKEN_EXPIRED;
      // 1013 with retry_after: the server says when it can take us (a storm of resumes).
      this._drop(ws, ev.code, ev.reason || closeReason(ev.code), true, immediate, retryAfterMs(ev.code, ev.reason));
    };
    // onerror is always followed by onclose; nothing to do here.
    ws.onerror = () => {};
  }

  /**
   * Forgets `ws` (closing it if still open) and schedules the next attempt: at once when
   * `immediate` (token trouble, not network trouble), after `retryAfter` ms when the server named
   * it (1013 in a storm), else after the backoff.
   */
  _drop(ws, code, reason, alreadyClosed = false, immediate = false, retryAfter = undefined) {
    if (this._ws !== ws) return;
    const wasOpen = this._hello;
    this._teardown(code, reason, alreadyClosed);
    this._rejectAll('disconnected', `connection lost (${reason}); the command may or may not have been applied`);
    if (!this._wanted) return;
    if (!wasOpen && ws.kind !== 'sse' && this._mode === 'auto' && !this._wsEverOpen && !this._fellBack && this._ES) {
      // Contract §10: no hello within 5 s, or the first two attempts ended before one: SSE.
      this._wsEarlyFailures += 1;
      if (code === CLOSE_CONNECT_TIMEOUT || this._wsEarlyFailures >= AUTO_EARLY_FAILURES) {
        this._fellBack = true;
        this._scheduleRetry({ reason: `${reason}; falling back to SSE`, code }, 0);
        return;
      }
    }
    // A connection that reached `hello` was healthy: its first retry waits at most backoffBase.
    if (wasOpen) this._attempt = 0;
    const now = Date.now();
    // Only a connection that got `hello` earns a no-backoff retry, and never twice within a
    // second: a getToken that keeps returning nearly expired tokens must not spin.
    if (immediate && wasOpen && now - this._lastImmediate >= IMMEDIATE_RETRY_GAP_MS) {
      this._lastImmediate = now;
      this._scheduleRetry({ reason, code }, 0);
    } else if (retryAfter !== undefined) {
      this._attempt += 1;
      this._scheduleRetry({ reason, code }, retryAfter);
    } else {
      this._scheduleRetry({ reason, code });
    }
  }

  _teardown(code, reason, alreadyClosed = false) {
    clearTimeout(this._connectTimer);
    clearInterval(this._heartbeatTimer);
    clearTimeout(this._refreshTimer);
    this._connectTimer = this._heartbeatTimer = this._refreshTimer = null;
    const ws = this._ws;
    this._ws = null;
    this._hello = false;
    this._helloEpoch = null;
    if (ws) {
      ws.onmessage = ws.onclose = ws.onerror = null;
      if (!alreadyClosed) {
        try {
          // Browsers only accept 1000 and 3000-4999 from scripts.
          ws.close(code === 1000 || (code >= 3000 && code <= 4999) ? code : 1000, reason.slice(0, 120));
        } catch {
          /* already closing */
        }
      }
    }
  }

  /** @param {number} [delayMs] skip the backoff (and leave the attempt count alone) */
  _scheduleRetry(info, delayMs) {
    if (!this._wanted || this._retryTimer) return;
    let delay = delayMs;
    if (delay === undefined) {
      // Full jitter: uniform in [0, min(max, base * 2^attempt)].
      const cap = Math.min(this._backoffMax, this._backoffBase * 2 ** Math.min(this._attempt, 30));
      delay = Math.floor(Math.random() * cap);
      this._attempt += 1;
    }
    this._status('closed', { ...info, attempt: this._attempt, retryInMs: delay });
    this._retryTimer = setTimeout(() => this._open(), delay);
  }

  /** Skips the backoff wait (the network is back, the tab is visible again). */
  _retryNow(why) {
    if (!this._wanted || !this._retryTimer) return;
    clearTimeout(this._retryTimer);
    this._retryTimer = null;
    this._attempt = 0;
    this._open(why);
  }

  /** Drops the current connection and reconnects (with `since`), e.g. after a long sleep. */
  reconnect() {
    if (!this._wanted) return;
    if (this._remote) {
      this._hubCall('reconnect', []).catch(() => {});
      return;
    }
    if (this._ws) this._drop(this._ws, 1000, 'reconnect requested');
    this._retryNow('reconnect requested');
  }

  _startHeartbeat(ws) {
    clearInterval(this._heartbeatTimer);
    this._lastHeard = Date.now();
    this._pingAt = null;
    this._heartbeatTimer = setInterval(() => {
      if (this._ws !== ws) return;
      const now = Date.now();
      // Any frame counts as an answer. A ping still unanswered two intervals later means the
      // connection is dead (measured from the ping, so throttled timers in hidden tabs do not
      // count as silence).
      if (this._pingAt !== null && this._lastHeard < this._pingAt) {
        if (now - this._pingAt >= 1.5 * this._heartbeatMs) {
          this._drop(ws, CLOSE_HEARTBEAT, 'heartbeat timeout');
          return;
        }
      } else {
        this._pingAt = now;
      }
      this._send({ type: 'ping', ref: `p${++this._nextRef}` });
    }, this._heartbeatMs);
  }

  // ---------------------------------------------------------------- token lifetime

  /** getToken, abandoned after connectTimeoutMs (it usually does a network round trip). */
  async _fetchToken() {
    let timer;
    const timeout = new Promise((_, reject) => {
      timer = setTimeout(
        () => reject(new NotifydError('timeout', `getToken did not answer within ${this._connectTimeout} ms`)),
        this._connectTimeout,
      );
    });
    try {
      return String(await Promise.race([this._getToken(), timeout]));
    } finally {
      clearTimeout(timer);
    }
  }

  /** Arms the in-band refresh of the token `ws` runs on (no-op without a readable `exp`). */
  _scheduleRefresh(ws) {
    clearTimeout(this._refreshTimer);
    this._refreshTimer = null;
    if (!this._refreshEnabled || this._tokenExp === null) return;
    const delay = refreshDelayMs(this._tokenExp);
    if (delay === null) return; // past exp by our clock: the server's 4001 brings a new token
    this._refreshAt = Date.now() + delay;
    this._armRefresh(ws);
  }

  _armRefresh(ws) {
    this._refreshTimer = setTimeout(() => {
      this._refreshTimer = null;
      if (this._ws !== ws) return;
      // A long-lived token's refresh lies beyond one timer's reach: wait again.
      if (Date.now() < this._refreshAt - 50) this._armRefresh(ws);
      else this._refresh(ws);
    }, Math.min(MAX_TIMER_MS, Math.max(0, this._refreshAt - Date.now())));
  }

  /** Gets a fresh token and sends it in-band (`auth`); reconnects if the server refuses it. */
  async _refresh(ws) {
    if (this._ws !== ws || !this._hello) return;
    let token;
    try {
      token = await this._fetchToken();
    } catch (e) {
      if (this._ws !== ws) return;
      this._emit('error', { code: 'token', message: `getToken failed during refresh: ${e?.message ?? e}` });
      // Try again later (at most 80% of what is left); if exp passes first, the server closes
      // with 4001 and the reconnect asks getToken again, with backoff if it keeps failing.
      this._scheduleRefresh(ws);
      return;
    }
    if (this._ws !== ws || !this._hello) return;
    const exp = tokenExp(token);
    if (exp !== null && this._tokenExp !== null && exp <= this._tokenExp) {
      // getToken handed back the token we have (an app-side cache): ask again later.
      this._scheduleRefresh(ws);
      return;
    }
    let ack;
    try {
      ack = await this._command({ type: 'auth', token });
    } catch (e) {
      if (this._ws !== ws || e.code === 'disconnected' || e.code === 'closed') return;
      // Refused (`unauthorized`: another user, a bad or not-yet-valid token), still `busy` after
      // the retries, or unanswered: this socket dies at exp anyway, so start over now with a
      // fresh token (resuming with since); the new connection's handshake judges that token.
      this._drop(ws, CLOSE_TOKEN_REFRESH, `token refresh failed (${e.code})`, false, true);
      return;
    }
    if (this._ws !== ws) return;
    this._tokenExp = Number.isFinite(ack.exp) ? ack.exp : exp;
    this._emit('token', { exp: this._tokenExp, source: 'refresh' });
    this._scheduleRefresh(ws);
  }

  _send(frame) {
    if (!this._ws || this._ws.readyState !== 1) return false;
    try {
      this._ws.send(JSON.stringify(frame));
      return true;
    } catch {
      return false;
    }
  }

  // ---------------------------------------------------------------- frames

  _onFrame(ws, f) {
    switch (f.type) {
      case 'hello':
        return this._onHello(ws, f);
      case 'sync':
        if (f.reset) return this._reset('server', f);
        for (const ev of Array.isArray(f.events) ? f.events : []) {
          if (!this._apply(ws, ev, true)) return;
        }
        return;
      case 'topic.event':
        return this._onTopicEvent(f);
      case 'error':
        if (ws.kind === 'sse' && f.error?.code === 'token_expired') {
          // The stream's JWT expired: reconnect at once with a fresh token (as after a 4001).
          this._drop(ws, CLOSE_TOKEN_EXPIRED, 'token expired', false, true);
          return;
        }
        return this._onReply(f);
      case 'ack':
        return this._onReply(f);
      case 'pong':
        return;
      default:
        if (PER_USER_TYPES.has(f.type)) this._apply(ws, f, false);
        // Unknown frame types are ignored (forward compatibility).
        return;
    }
  }

  _onHello(ws, f) {
    clearTimeout(this._connectTimer);
    this._connectTimer = null;
    this._hello = true;
    this._attempt = 0;
    const sse = ws.kind === 'sse';
    if (sse) {
      if (this._mode === 'auto') this._rememberSse();
    } else {
      this._wsEverOpen = true;
    }
    if (Number.isFinite(f.heartbeat_s) && f.heartbeat_s > 0) this._heartbeatMs = f.heartbeat_s * 1000;
    // An event stream cannot be pinged (its `: ping` comments never reach script), and its token
    // cannot be refreshed in-band: it ends at exp with `token_expired` and is reopened at once.
    if (!sse) this._startHeartbeat(ws);
    this._status('open', { user: f.user, seq: f.seq });
    if (!this._anonymous) {
      this._emit('token', { exp: this._tokenExp, source: 'connect' });
      if (!sse) this._scheduleRefresh(ws);
      this._emit('_hello', { resumed: this._seq !== null });
      if (this._seq === null) {
        this._reset('initial', f);
      } else {
        // From seq 0 any inbox's events are the right ones: the hello's epoch is safe to take.
        // From a later seq it is taken only once the resume went on without a reset (the
        // first event after this hello, in `_apply`): a connection lost between the hello and
        // its `sync` must not pair the old `since` with the new epoch.
        const epoch = Number.isSafeInteger(f.epoch) ? f.epoch : null;
        if (this._seq === 0) this._epoch = epoch;
        else this._helloEpoch = epoch;
        // If seq moved on, a `sync` with the missed events (or a reset) follows right away.
        this._setCounts(f, 'hello');
      }
    }
    // Re-subscribe to the topics this client had (topics are per connection; an event stream
    // was opened with them).
    const topics = sse ? [] : [...this._topics];
    for (let i = 0; i < topics.length; i += 100) {
      const chunk = topics.slice(i, i + 100);
      this._command({ type: 'subscribe', topics: chunk }).catch((e) => {
        if (e.code !== 'disconnected' && e.code !== 'closed') {
          this._emit('error', { code: e.code, message: `re-subscribe failed: ${e.message}` });
        }
      });
    }
    for (const w of this._openWaiters) w(null);
    this._openWaiters.clear();
  }

  /** Emits a topic event unless its id was already emitted for that topic (at-least-once). */
  _onTopicEvent(f) {
    if (typeof f.topic !== 'string') return;
    const id = typeof f.id === 'string' ? f.id : null;
    if (id !== null && !this._keepTopicRepeats) {
      let seen = this._topicIds.get(f.topic);
      if (!seen) this._topicIds.set(f.topic, (seen = new Set()));
      if (seen.has(id)) return;
      seen.add(id);
      // Bounded: forget the oldest ids (a Set iterates in insertion order).
      if (seen.size > TOPIC_IDS_KEPT) seen.delete(seen.values().next().value);
    }
    this._emit('topic', {
      topic: f.topic,
      id,
      data: f.data,
      from: typeof f.from === 'string' ? f.from : null,
      retained: f.retained === true,
    });
  }

  _reset(reason, f) {
    this._seq = Number.isSafeInteger(f.seq) ? f.seq : 0;
    // Only a reset (or the first hello) moves the epoch: a resume's `hello` comes before its
    // `sync`, and a drop between them must not pair the old `since` with the new epoch.
    this._epoch = Number.isSafeInteger(f.epoch) ? f.epoch : null;
    this._helloEpoch = null;
    // Acknowledgements count in the inbox they were made in: none carries over a reset.
    this._ackSeq = null;
    this._setCounts(f, reason === 'initial' ? 'hello' : 'sync');
    this._emit('reset', { reason, seq: this._seq, unread: f.unread, unseen: f.unseen });
  }

  _setCounts(f, source) {
    if (!Number.isFinite(f.unread) || !Number.isFinite(f.unseen)) return;
    this._counts = { seq: this._seq ?? f.seq, unread: f.unread, unseen: f.unseen };
    this._emit('counts', { ...this._counts, source });
  }

  /**
   * Applies one per-user event. Returns false when the connection was dropped (a hole in seq).
   */
  _apply(ws, ev, replayed) {
    if (!ev || !PER_USER_TYPES.has(ev.type) || !Number.isSafeInteger(ev.seq)) return true;
    if (this._seq !== null && ev.seq <= this._seq) return true; // duplicate: already applied
    if (this._seq !== null && ev.seq !== this._seq + 1) {
      // A tab of a shared connection fetches what it missed (it joined late, or a hub changed).
      if (this._remote) {
        this._repairGap();
        return false;
      }
      // The server promises no holes; if one shows anyway, resume from what we have.
      this._drop(ws, CLOSE_GAP, `gap in seq: expected ${this._seq + 1}, got ${ev.seq}`);
      return false;
    }
    this._seq = ev.seq;
    if (this._helloEpoch !== null) {
      // The resume went on in the hello's inbox: its epoch is this stream's.
      this._epoch = this._helloEpoch;
      this._helloEpoch = null;
    }
    const c = { seq: ev.seq, unread: ev.unread, unseen: ev.unseen };
    switch (ev.type) {
      case 'message.created':
        if (ev.message && typeof ev.message === 'object') {
          this._emit('message', { ...c, message: ev.message, replayed });
        }
        break;
      case 'message.read':
        this._emit('read', { ...c, ids: Array.isArray(ev.ids) ? ev.ids : [], all: false, replayed });
        break;
      case 'message.read_all':
        this._emit('read', { ...c, ids: null, all: true, replayed });
        break;
      case 'message.seen_all':
        this._emit('seen', { ...c, replayed });
        break;
      case 'message.deleted':
        this._emit('deleted', { ...c, ids: Array.isArray(ev.ids) ? ev.ids : [], replayed });
        break;
      case 'message.unread':
      case 'message.archived':
      case 'message.unarchived':
      case 'message.snoozed':
      case 'message.unsnoozed': {
        // 'unread', 'archived', 'unarchived', 'snoozed' (with `until`), 'unsnoozed'.
        const detail = { ...c, ids: Array.isArray(ev.ids) ? ev.ids : [], replayed };
        if (ev.type === 'message.snoozed') detail.until = ev.until;
        this._emit(ev.type.slice('message.'.length), detail);
        break;
      }
    }
    this._setCounts(ev, ev.type);
    this._emit('event', ev);
    this._emit('_applied', { ev, replayed });
    this._acknowledge(ev.seq);
    return true;
  }

  /**
   * Tells the server the app was handed every user frame up to `seq`, so Web Push leaves those
   * alone (docs/push.md). One acknowledgement per burst (it covers every seq up to it): on the
   * socket right after the burst, over REST (`POST /api/v1/me/received`) half a second after
   * one on SSE. A tab of a shared connection leaves it to the connection's own client.
   */
  _acknowledge(seq) {
    if (this._remote) return;
    this._ackSeq = Math.max(this._ackSeq ?? 0, seq);
    if (this._ackTimer) return;
    const sse = this._transport === 'sse';
    this._ackTimer = setTimeout(() => {
      this._ackTimer = null;
      const upTo = this._ackSeq;
      if (upTo === null) return; // a reset came meanwhile: nothing of the new inbox to say
      if (this._transport === 'sse') {
        this._rest('POST', '/api/v1/me/received', { seq: upTo }).catch(() => {});
      } else {
        this._send({ type: 'received', seq: upTo });
      }
    }, sse ? 500 : 0);
  }

  _onReply(f) {
    const ref = typeof f.ref === 'string' ? f.ref : null;
    const p = ref !== null ? this._pending.get(ref) : undefined;
    if (!p) {
      if (f.type === 'error') {
        const err = f.error ?? {};
        this._emit('error', { code: String(err.code ?? 'error'), message: String(err.message ?? ''), ref: f.ref });
      }
      return;
    }
    this._pending.delete(ref);
    clearTimeout(p.timer);
    if (f.type === 'ack') {
      const { type: _t, ref: _r, ...rest } = f;
      p.resolve(rest);
    } else {
      const err = f.error ?? {};
      p.reject(new NotifydError(String(err.code ?? 'error'), String(err.message ?? 'command failed'), { ref }));
    }
  }

  _rejectAll(code, message) {
    for (const [ref, p] of this._pending) {
      clearTimeout(p.timer);
      p.reject(new NotifydError(code, message, { ref }));
    }
    this._pending.clear();
  }

  // ---------------------------------------------------------------- shared connection (tab side)
  //
  // With `shared: true` this client owns no connection: a hub does (a SharedWorker, or the leader
  // tab), running a plain NotifydClient and relaying to every tab what it applied. Each tab
  // applies those events with its own seq (repeats dropped, a hole fetched over REST), filters
  // topic events by its own subscriptions, and sends its commands to the hub. Messages:
  // tab -> hub `{op: 'hello'|'bye'|'call'|'token', tab, ...}`, hub -> tab `{t: ..., to?}`.

  async _startShared() {
    this._remote = true;
    this._hubCalls ??= new Map();
    this._tabId = `t${Math.random().toString(36).slice(2)}${Date.now().toString(36)}`;
    this._status('connecting', { attempt: 0 });
    let token;
    for (let attempt = 0; ; attempt++) {
      try {
        token = await this._fetchToken();
        break;
      } catch (e) {
        if (!this._wanted) return;
        this._emit('error', { code: 'token', message: `getToken failed: ${e?.message ?? e}` });
        await sleep(Math.random() * Math.min(this._backoffMax, this._backoffBase * 2 ** Math.min(attempt, 30)));
      }
      if (!this._wanted) return;
    }
    if (!this._wanted) return;
    // One connection per browser profile, notifyd origin and user.
    const key = `notifyd|${this.baseUrl}|${tokenSub(token) ?? ''}`;
    this._pageHide = () => this._hubPost?.({ op: 'bye', tab: this._tabId });
    globalThis.addEventListener?.('pagehide', this._pageHide);
    const SW = globalThis.SharedWorker;
    if (typeof SW === 'function') {
      try {
        const url = this._sharedWorkerUrl ?? new URL('./notifyd-shared-worker.js', import.meta.url);
        const worker = new SW(url, { type: 'module', name: key });
        const port = worker.port;
        this._port = port;
        port.onmessage = (e) => this._onHub(e.data);
        // The script did not load (wrong URL, another origin): leader tabs instead.
        worker.onerror = () => {
          if (this._port !== port || this._welcomed) return;
          port.close();
          this._port = null;
          this._electLeader(key);
        };
        this._hubPost = (m) => port.postMessage(m);
        port.start();
        this._sayHello();
        return;
      } catch {
        this._port = null; // e.g. a SecurityError for a worker URL on another origin
      }
    }
    this._electLeader(key);
  }

  /** Where there is no SharedWorker: the tab holding the Web Lock `key` is the hub. */
  _electLeader(key) {
    if (!globalThis.navigator?.locks || typeof globalThis.BroadcastChannel !== 'function') {
      // Nothing to share with: this tab connects on its own.
      this._remote = false;
      this._open();
      return;
    }
    const ch = new BroadcastChannel(key);
    this._channel = ch;
    ch.onmessage = (e) => {
      const m = e.data;
      if (!m || typeof m !== 'object') return;
      if (typeof m.op === 'string') this._hub?.fromPeer(m.tab, m);
      else if (m.to == null || m.to === this._tabId) this._onHub(m);
    };
    this._hubPost = (m) => {
      if (this._hub) this._hub.fromPeer(this._tabId, m);
      else ch.postMessage(m);
    };
    this._lockAbort = new AbortController();
    navigator.locks
      .request(key, { signal: this._lockAbort.signal }, () => {
        if (!this._wanted) return undefined;
        return new Promise((release) => {
          this._releaseLock = release;
          this._becomeLeader(ch);
        });
      })
      .catch(() => {});
    this._sayHello();
  }

  _becomeLeader(ch) {
    const hub = new NotifydHub({
      options: this._hubOptions(),
      getToken: this._getToken,
      storage: this._storage,
      post: (m) => {
        if (m.to == null || m.to === this._tabId) this._onHub(m);
        if (m.to !== this._tabId) ch.postMessage(m);
      },
    });
    this._hub = hub;
    // Commands sent to the previous leader may or may not have been applied.
    this._failHubCalls('disconnected', 'the shared connection moved to another tab');
    hub.fromPeer(this._tabId, { op: 'hello', tab: this._tabId, topics: [...this._topics] });
    ch.postMessage({ t: 'leader', tab: this._tabId });
    hub.start();
  }

  _stopShared() {
    this._hubPost?.({ op: 'bye', tab: this._tabId });
    globalThis.removeEventListener?.('pagehide', this._pageHide);
    if (this._hub) {
      this._hub.close();
      this._hub = null;
    }
    this._releaseLock?.();
    this._releaseLock = null;
    this._lockAbort?.abort();
    this._channel?.close();
    this._channel = null;
    this._port?.close();
    this._port = null;
    this._hubPost = null;
    this._welcomed = false;
    this._failHubCalls('closed', 'the client was closed');
  }

  /** What a hub builds its client from (structured-cloneable: no functions). */
  _hubOptions() {
    return {
      url: this.baseUrl,
      transport: this._mode,
      backoffBaseMs: this._backoffBase,
      backoffMaxMs: this._backoffMax,
      commandTimeoutMs: this._commandTimeout,
      connectTimeoutMs: this._connectTimeout,
      refreshToken: this._refreshEnabled,
      busyRetries: this._busyRetries,
      busyRetryMs: this._busyRetryMs,
      since: this._seq,
      epoch: this._epoch,
    };
  }

  _sayHello() {
    let remembered = null;
    try {
      remembered = this._storage?.getItem(transportKey(this.baseUrl)) ?? null;
    } catch {
      /* no storage */
    }
    this._hubPost?.({
      op: 'hello',
      tab: this._tabId,
      topics: [...this._topics],
      options: this._hubOptions(),
      remembered,
    });
  }

  _failHubCalls(code, message) {
    if (!this._hubCalls) return;
    for (const [, p] of this._hubCalls) {
      clearTimeout(p.timer);
      p.reject(new NotifydError(code, message));
    }
    this._hubCalls.clear();
  }

  /** A command run by the hub's client; resolves or rejects as it did there. */
  async _hubCall(method, args) {
    // As on a connection of its own: a command waits for the (shared) connection to be open.
    await this._whenOpen();
    if (!this._wanted || !this._hubPost) throw new NotifydError('closed', 'the client was closed');
    const id = `h${++this._nextRef}`;
    return new Promise((resolve, reject) => {
      // The hub's own command timeout runs inside this one.
      const timer = setTimeout(() => {
        this._hubCalls.delete(id);
        reject(new NotifydError('timeout', `no answer to ${method} from the shared connection`));
      }, this._commandTimeout * 2);
      this._hubCalls.set(id, { resolve, reject, timer });
      this._hubPost({ op: 'call', tab: this._tabId, id, method, args });
    });
  }

  async _remoteTopics(kind, topics) {
    if (kind === 'subscribe') {
      const added = topics.filter((t) => !this._topics.has(t));
      // Known before the ack: the retained values follow it at once.
      for (const t of added) this._topics.add(t);
      try {
        return await this._hubCall('subscribe', [topics]);
      } catch (e) {
        for (const t of added) this._topics.delete(t);
        throw e;
      }
    }
    for (const t of topics) {
      this._topics.delete(t);
      this._topicIds.delete(t);
    }
    return this._hubCall('unsubscribe', [topics]);
  }

  /** Fetches the events after this tab's seq over REST (a hole in what the hub relayed). */
  async _repairGap() {
    if (this._repairing) return;
    this._repairing = true;
    try {
      const r = await this._rest('GET', `/api/v1/me/changes?since=${this._seq}`);
      if (r?.reset) this._reset('server', r);
      else for (const ev of Array.isArray(r?.events) ? r.events : []) if (!this._apply(null, ev, true)) break;
    } catch (e) {
      this._emit('error', { code: e?.code ?? 'network', message: `could not fetch missed events: ${e?.message ?? e}` });
    } finally {
      this._repairing = false;
    }
  }

  _onHub(m) {
    if (!m || typeof m !== 'object' || !this._wanted || !this._remote) return;
    switch (m.t) {
      case 'welcome':
        this._welcomed = true;
        this._transport = m.transport ?? null;
        if (m.state === 'open') this._hubOpen(m.f);
        return;
      case 'leader':
        // A new leader tab: what was asked of the old one is lost; introduce this tab again.
        this._failHubCalls('disconnected', 'the shared connection moved to another tab');
        this._sayHello();
        return;
      case 'status':
        this._transport = m.transport ?? this._transport;
        if (m.d?.state === 'open') {
          this._status('open', m.d);
          for (const w of this._openWaiters) w(null);
          this._openWaiters.clear();
        } else if (m.d?.state) {
          this._status(m.d.state, m.d);
        }
        return;
      case 'user':
        this._apply(null, m.ev, m.replayed === true);
        return;
      case 'reset':
        this._reset(m.reason, m.f);
        return;
      case 'counts':
        // A resumed hello of the hub: a tab that knows nothing yet starts from it.
        if (this._seq === null) this._reset('initial', m.f);
        else this._setCounts(m.f, 'hello');
        return;
      case 'topic':
        if (m.f && this._topics.has(m.f.topic)) this._onTopicEvent(m.f);
        return;
      case 'error':
        this._emit('error', m.d);
        return;
      case 'token':
        this._emit('token', m.d);
        return;
      case 'store':
        try {
          this._storage?.setItem(m.k, m.v);
        } catch {
          /* full or denied */
        }
        return;
      case 'token?':
        this._fetchToken().then(
          (token) => this._hubPost?.({ op: 'token', tab: this._tabId, id: m.id, token }),
          (e) => this._hubPost?.({ op: 'token', tab: this._tabId, id: m.id, error: String(e?.message ?? e) }),
        );
        return;
      case 'result': {
        const p = this._hubCalls.get(m.id);
        if (!p) return;
        this._hubCalls.delete(m.id);
        clearTimeout(p.timer);
        if (m.ok) p.resolve(m.v);
        else p.reject(new NotifydError(String(m.e?.code ?? 'error'), String(m.e?.message ?? ''), m.e ?? {}));
        return;
      }
    }
  }

  /** The hub is (or just got) connected: this tab catches up with it. */
  _hubOpen(f) {
    if (this._state !== 'open') this._status('open', { seq: f?.seq });
    for (const w of this._openWaiters) w(null);
    this._openWaiters.clear();
    if (!f || !Number.isSafeInteger(f.seq)) return;
    if (this._seq === null) this._reset('initial', f);
    else if (this._seq < f.seq) this._repairGap();
    else this._setCounts(f, 'hello');
  }

  // ---------------------------------------------------------------- commands

  /** Resolves once a `hello` arrived (at once if open); rejects after the command timeout. */
  _whenOpen() {
    if ((this._ws && this._hello) || (this._remote && this._state === 'open')) return Promise.resolve();
    if (!this._wanted) return Promise.reject(new NotifydError('closed', 'call connect() first'));
    return new Promise((resolve, reject) => {
      const waiter = (err) => {
        clearTimeout(timer);
        if (err) reject(err);
        else resolve();
      };
      const timer = setTimeout(() => {
        this._openWaiters.delete(waiter);
        reject(new NotifydError('timeout', 'not connected'));
      }, this._commandTimeout);
      this._openWaiters.add(waiter);
    });
  }

  /**
   * Sends a command over the open socket and waits for its ack (by ref). A `busy` answer (the
   * server has too many of this socket's commands in flight) is retried busyRetries times after a
   * growing, jittered pause; then the promise rejects with code `busy`.
   */
  async _command(frame) {
    for (let attempt = 0; ; attempt++) {
      try {
        return await this._commandOnce(frame);
      } catch (e) {
        if (!(e instanceof NotifydError) || e.code !== 'busy' || attempt >= this._busyRetries) throw e;
      }
      await sleep(this._busyRetryMs * 2 ** attempt * (0.5 + Math.random() / 2));
    }
  }

  _commandOnce(frame) {
    const ref = `c${++this._nextRef}`;
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        this._pending.delete(ref);
        reject(new NotifydError('timeout', `no reply to ${frame.type} within ${this._commandTimeout} ms`, { ref }));
      }, this._commandTimeout);
      this._pending.set(ref, { resolve, reject, timer });
      if (!this._send({ ...frame, ref })) {
        this._pending.delete(ref);
        clearTimeout(timer);
        reject(new NotifydError('disconnected', 'not connected', { ref }));
      }
    });
  }

  /**
   * Read commands go over the socket when it is open, else over REST (same effect, docs/api.md).
   * Resolves with the counters after the command (the matching `read`/`seen` event follows on
   * every session of the user, this one included).
   */
  async _readCommand(frame, path, body) {
    if (this._remote) {
      // The shared connection runs it; while it is not open, REST does the same here.
      return this._state === 'open' ? this._hubCall(frame.type, [frame]) : this._rest('POST', path, body);
    }
    if (this._ws && this._hello && this._ws.kind !== 'sse') {
      try {
        const ack = await this._command(frame);
        return { seq: ack.seq, unread: ack.unread, unseen: ack.unseen };
      } catch (e) {
        if (e.code !== 'disconnected') throw e;
      }
    }
    return this._rest('POST', path, body);
  }

  /**
   * Marks messages read (at most 1,000 ids). Ids that are not the user's are ignored.
   * @param {string[]} ids
   * @returns {Promise<NotifydCounts>}
   */
  markRead(ids) {
    if (!Array.isArray(ids) || ids.some((id) => typeof id !== 'string')) {
      return Promise.reject(new TypeError('markRead(ids): ids must be an array of strings'));
    }
    return this._readCommand({ type: 'read', ids }, '/api/v1/me/messages/read', { ids });
  }

  _idsCommand(name, type, path, ids, extra = {}) {
    if (!Array.isArray(ids) || ids.some((id) => typeof id !== 'string')) {
      return Promise.reject(new TypeError(`${name}(ids): ids must be an array of strings`));
    }
    return this._readCommand({ type, ids, ...extra }, path, { ids, ...extra });
  }

  /** Marks messages unread (and unseen) again. @param {string[]} ids @returns {Promise<NotifydCounts>} */
  markUnread(ids) {
    return this._idsCommand('markUnread', 'unread', '/api/v1/me/messages/unread', ids);
  }

  /** Archives messages (out of the inbox and the counts). @param {string[]} ids @returns {Promise<NotifydCounts>} */
  archive(ids) {
    return this._idsCommand('archive', 'archive', '/api/v1/me/messages/archive', ids);
  }

  /** Brings archived messages back, unread. @param {string[]} ids @returns {Promise<NotifydCounts>} */
  unarchive(ids) {
    return this._idsCommand('unarchive', 'unarchive', '/api/v1/me/messages/unarchive', ids);
  }

  /**
   * Snoozes messages until a time (they come back unread with an 'unsnoozed' event).
   * @param {string[]} ids
   * @param {Date|string} until a Date or an RFC 3339 string
   * @returns {Promise<NotifydCounts>}
   */
  snooze(ids, until) {
    const when = until instanceof Date ? until.toISOString() : until;
    if (typeof when !== 'string') {
      return Promise.reject(new TypeError('snooze(ids, until): until must be a Date or an RFC 3339 string'));
    }
    return this._idsCommand('snooze', 'snooze', '/api/v1/me/messages/snooze', ids, { until: when });
  }

  /** Marks every message read. @returns {Promise<NotifydCounts>} */
  markAllRead() {
    return this._readCommand({ type: 'read_all' }, '/api/v1/me/messages/read-all', {});
  }

  /** Marks every message seen (call it when the bell opens). @returns {Promise<NotifydCounts>} */
  markAllSeen() {
    return this._readCommand({ type: 'seen_all' }, '/api/v1/me/messages/seen-all', {});
  }

  /**
   * Subscribes to live topic events (`topic` events). Allowed topics are those matching the
   * token's `topics` claim. Kept across reconnects. Waits for the connection if needed.
   * @param {string[]} topics at most 100 per call
   * @returns {Promise<{topics: string[]}>}
   */
  async subscribe(topics) {
    if (!Array.isArray(topics) || topics.some((t) => typeof t !== 'string')) {
      throw new TypeError('subscribe(topics): topics must be an array of strings');
    }
    if (this._remote) return this._remoteTopics('subscribe', topics);
    await this._whenOpen();
    if (this._transport === 'sse') {
      await this._sseTopics([...new Set([...this._topics, ...topics])]);
      return { topics: [...topics] };
    }
    const ack = await this._command({ type: 'subscribe', topics });
    for (const t of topics) this._topics.add(t);
    return ack;
  }

  /**
   * Unsubscribes from topics (also forgotten for later reconnects).
   * @param {string[]} topics
   * @returns {Promise<Object>}
   */
  async unsubscribe(topics) {
    if (!Array.isArray(topics) || topics.some((t) => typeof t !== 'string')) {
      throw new TypeError('unsubscribe(topics): topics must be an array of strings');
    }
    if (this._remote) return this._remoteTopics('unsubscribe', topics);
    for (const t of topics) {
      this._topics.delete(t);
      this._topicIds.delete(t);
    }
    await this._whenOpen();
    if (this._transport === 'sse') {
      await this._sseTopics([...this._topics]);
      return { topics: [...topics] };
    }
    return this._command({ type: 'unsubscribe', topics });
  }

  /**
   * Publishes to a topic (a group room): every subscriber gets a `topic` event whose `from` is
   * this user. Allowed when the token's `publish` claim matches; rate-limited by the server
   * (rejects with code `rate_limited`).
   * @param {string} topic
   * @param {*} data JSON
   * @returns {Promise<{id: string}>}
   */
  async publish(topic, data) {
    if (typeof topic !== 'string') throw new TypeError('publish(topic, data): topic must be a string');
    if (this._remote) return this._hubCall('publish', [topic, data]);
    await this._whenOpen();
    if (this._transport === 'sse') {
      throw new NotifydError('unsupported', 'publishing needs the WebSocket transport (there is no REST call for it)');
    }
    return this._command({ type: 'publish', topic, data });
  }

  /**
   * Sends a direct message: a notification in `toUser`'s inbox whose `send_user` is this user.
   * Allowed when the token's `send_to` claim matches; rate-limited (code `rate_limited`).
   * @param {string} toUser
   * @param {{title: string, content?: string, type?: string, skip_url?: string|null, data?: *}} message
   * @param {{key?: string}} [opts] `key`: an idempotency key; sending again with the same key (after
   *   a lost answer) returns the first message's id instead of creating a second message
   * @returns {Promise<{id: string, replayed?: boolean}>}
   */
  async send(toUser, message, { key } = {}) {
    if (typeof toUser !== 'string') throw new TypeError('send(toUser, message): toUser must be a string');
    if (this._remote) return this._hubCall('send', [toUser, message, { key }]);
    await this._whenOpen();
    if (this._transport === 'sse') {
      return this._rest('POST', '/api/v1/me/send', { to_user: toUser, message }, key === undefined ? {} : { 'Idempotency-Key': key });
    }
    const frame = { type: 'send', to_user: toUser, message };
    if (key !== undefined) frame.key = key;
    return this._command(frame);
  }

  // ---------------------------------------------------------------- REST

  /**
   * One page of the user's notifications, newest first (`GET /api/v1/me/messages`).
   * @param {{limit?: number, before?: number|null, unreadOnly?: boolean}} [opts]
   *   `before`: the `next_before` of the previous page
   * @returns {Promise<{messages: NotifydMessage[], next_before: number|null}>}
   */
  fetchPage({ limit = 20, before = null, unreadOnly = false } = {}) {
    const q = new URLSearchParams({ limit: String(limit) });
    if (before !== null && before !== undefined) q.set('before', String(before));
    if (unreadOnly) q.set('unread_only', 'true');
    return this._rest('GET', `/api/v1/me/messages?${q}`);
  }

  /** The counters (`GET /api/v1/me/unread-count`). @returns {Promise<NotifydCounts>} */
  fetchCounts() {
    return this._rest('GET', '/api/v1/me/unread-count');
  }

  /**
   * Deletes a message (`DELETE /api/v1/me/messages/{id}`); a `deleted` event follows.
   * @param {string} id
   * @returns {Promise<void>}
   */
  async deleteMessage(id) {
    await this._rest('DELETE', `/api/v1/me/messages/${encodeURIComponent(id)}`);
  }

  /**
   * The token for a REST call: the cached one while it has time left (so a burst of calls, or
   * a list loading page after page, does not call getToken each time), else one from getToken,
   * cached until its refresh point ({@link refreshDelayMs}: 80% of its life, at least 30 s before
   * `exp`). A token without a readable `exp` is not cached: getToken is asked every call.
   * Concurrent calls share one getToken. `fresh` = it came from getToken just now.
   * @returns {Promise<{token: string, fresh: boolean}>}
   */
  _restTokenFor() {
    const c = this._restToken;
    if (c && Date.now() < c.until) return Promise.resolve({ token: c.token, fresh: false });
    this._restToken = null;
    if (!this._restTokenCall) {
      const call = this._fetchToken().then(
        (token) => {
          if (this._restTokenCall === call) {
            this._restTokenCall = null;
            const exp = tokenExp(token);
            const now = Date.now();
            const delay = exp === null ? null : refreshDelayMs(exp, now, 0);
            this._restToken = delay === null ? null : { token, until: now + delay };
          }
          return { token, fresh: true };
        },
        (e) => {
          if (this._restTokenCall === call) this._restTokenCall = null;
          throw e;
        },
      );
      this._restTokenCall = call;
    }
    return this._restTokenCall;
  }

  async _rest(method, path, body, extraHeaders = {}) {
    if (this._anonymous) throw new NotifydError('unauthorized', 'an anonymous client has no inbox');
    if (!this._fetch) throw new NotifydError('network', 'no fetch available');
    const first = await this._restTokenFor();
    try {
      return await this._restOnce(method, path, body, extraHeaders, first.token);
    } catch (e) {
      if (!(e instanceof NotifydError) || e.status !== 401) throw e;
      // Refused: the cached token is dropped, and a call made with one is retried once with a
      // token fresh from getToken (a 401 is refused before anything is done: safe to repeat).
      if (this._restToken?.token === first.token) this._restToken = null;
      if (first.fresh) throw e;
      const again = await this._restTokenFor();
      return this._restOnce(method, path, body, extraHeaders, again.token);
    }
  }

  async _restOnce(method, path, body, extraHeaders, token) {
    const headers = { ...extraHeaders, Authorization: `Bearer ${token}`, Accept: 'application/json' };
    const init = { method, headers };
    if (body !== undefined) {
      headers['Content-Type'] = 'application/json';
      init.body = JSON.stringify(body);
    }
    let res;
    try {
      res = await this._fetch(`${this.baseUrl}${path}`, init);
    } catch (e) {
      throw new NotifydError('network', String(e?.message ?? e));
    }
    if (res.status === 204) return undefined;
    let json = null;
    try {
      json = await res.json();
    } catch {
      /* not JSON */
    }
    if (!res.ok) {
      const err = json?.error ?? {};
      // Seconds (or an HTTP date); readable across origins because notifyd exposes it (CORS).
      const ra = res.headers?.get?.('Retry-After');
      let retryAfterMs;
      if (ra) {
        const ms = /^\d+$/.test(ra.trim()) ? Number(ra) * 1000 : Date.parse(ra) - Date.now();
        if (Number.isFinite(ms)) retryAfterMs = Math.min(Math.max(0, ms), RETRY_AFTER_MAX_MS);
      }
      throw new NotifydError(String(err.code ?? `http_${res.status}`), String(err.message ?? res.statusText), {
        status: res.status,
        field: err.field,
        retryAfterMs,
      });
    }
    return json;
  }
}

/**
 * The hub of a shared connection (`shared: true`): runs one NotifydClient for every tab of a
 * user and relays to them what it applies; used by notifyd-shared-worker.js and by the leader
 * tab where there is no SharedWorker. Not part of the public API.
 * `post(m)` delivers a message to the tab `m.to`, or to every tab when `m.to` is absent.
 */
export class NotifydHub {
  /**
   * @param {{options: Object, getToken: Function, post: (m: Object) => void,
   *   storage?: *, onPeerGone?: (tab: string) => void}} init
   */
  constructor({ options, getToken, post, storage, onPeerGone }) {
    this._post = post;
    this._onPeerGone = onPeerGone;
    /** @type {Map<string, Set<string>>} per tab, its topics */
    this._peers = new Map();
    this._tokenWaits = new Map();
    this._nextId = 0;
    const c = new NotifydClient({ ...options, shared: false, getToken, storage, _keepTopicRepeats: true });
    this.core = c;
    c.on('status', (d) => post({ t: 'status', d, transport: c.transport }));
    c.on('_applied', ({ ev, replayed }) => post({ t: 'user', ev, replayed }));
    c.on('reset', (d) => post({ t: 'reset', reason: d.reason, f: { ...d, epoch: c.epoch } }));
    c.on('_hello', ({ resumed }) => {
      if (resumed) post({ t: 'counts', f: { ...c.counts, epoch: c.epoch } });
    });
    c.on('topic', (d) => post({ t: 'topic', f: d }));
    c.on('error', (d) => post({ t: 'error', d }));
    c.on('token', (d) => post({ t: 'token', d }));
  }

  start() {
    this.core.connect();
  }

  close() {
    this.core.close();
  }

  get peers() {
    return this._peers.size;
  }

  /** A message from tab `tab`. */
  fromPeer(tab, m) {
    if (!m || typeof m !== 'object' || typeof tab !== 'string') return;
    switch (m.op) {
      case 'hello': {
        const topics = Array.isArray(m.topics) ? m.topics.filter((t) => typeof t === 'string') : [];
        const held = this._heldTopics();
        this._peers.set(tab, new Set(topics));
        const c = this.core;
        const f = c.counts ? { ...c.counts, epoch: c.epoch } : null;
        this._post({ t: 'welcome', to: tab, state: c.state, transport: c.transport, f });
        const fresh = topics.filter((t) => !held.has(t));
        if (fresh.length > 0) {
          c.subscribe(fresh).catch((e) =>
            this._post({ t: 'error', to: tab, d: { code: e.code ?? 'error', message: `re-subscribe failed: ${e.message}` } }),
          );
        }
        return;
      }
      case 'bye':
        this._removePeer(tab);
        return;
      case 'call':
        this._call(tab, m);
        return;
      case 'token': {
        const w = this._tokenWaits.get(m.id);
        if (!w) return;
        this._tokenWaits.delete(m.id);
        if (typeof m.token === 'string') w.resolve(m.token);
        else w.reject(new NotifydError('token', String(m.error ?? 'getToken failed')));
        return;
      }
    }
  }

  _removePeer(tab) {
    const topics = this._peers.get(tab);
    if (!topics) return;
    this._peers.delete(tab);
    const held = this._heldTopics();
    const drop = [...topics].filter((t) => !held.has(t));
    if (drop.length > 0 && this._peers.size > 0) this.core.unsubscribe(drop).catch(() => {});
    this._onPeerGone?.(tab);
  }

  _heldTopics() {
    const all = new Set();
    for (const set of this._peers.values()) for (const t of set) all.add(t);
    return all;
  }

  /** A token from a tab (a worker has no getToken of its own): the newest tab first. */
  async askToken() {
    const tabs = [...this._peers.keys()].reverse();
    for (const tab of tabs) {
      const id = `k${++this._nextId}`;
      const answer = new Promise((resolve, reject) => {
        this._tokenWaits.set(id, { resolve, reject });
        setTimeout(() => reject(new NotifydError('timeout', 'the tab did not answer')), 4_000);
      });
      this._post({ t: 'token?', to: tab, id });
      try {
        return await answer;
      } catch (e) {
        // A tab that does not answer is gone (closed without a `bye`).
        if (e.code === 'timeout') this._removePeer(tab);
        else throw e;
      } finally {
        this._tokenWaits.delete(id);
      }
    }
    throw new NotifydError('token', 'no tab left to get a token from');
  }

  async _call(tab, m) {
    const c = this.core;
    const args = Array.isArray(m.args) ? m.args : [];
    try {
      let v;
      switch (m.method) {
        case 'read':
          v = await c.markRead(args[0]?.ids);
          break;
        case 'read_all':
          v = await c.markAllRead();
          break;
        case 'seen_all':
          v = await c.markAllSeen();
          break;
        case 'publish':
          v = await c.publish(args[0], args[1]);
          break;
        case 'send':
          v = await c.send(args[0], args[1], args[2] ?? {});
          break;
        case 'reconnect':
          c.reconnect();
          v = null;
          break;
        case 'subscribe': {
          const topics = Array.isArray(args[0]) ? args[0] : [];
          const mine = this._peers.get(tab) ?? new Set();
          v = await c.subscribe(topics);
          for (const t of topics) mine.add(t);
          this._peers.set(tab, mine);
          break;
        }
        case 'unsubscribe': {
          const topics = Array.isArray(args[0]) ? args[0] : [];
          const mine = this._peers.get(tab);
          for (const t of topics) mine?.delete(t);
          const held = this._heldTopics();
          const drop = topics.filter((t) => !held.has(t));
          v = drop.length > 0 ? await c.unsubscribe(drop) : { topics };
          break;
        }
        default:
          throw new NotifydError('validation_failed', `unknown command ${m.method}`);
      }
      this._post({ t: 'result', to: tab, id: m.id, ok: true, v });
    } catch (e) {
      const err = { code: String(e?.code ?? 'error'), message: String(e?.message ?? e), status: e?.status, field: e?.field };
      this._post({ t: 'result', to: tab, id: m.id, ok: false, e: err });
    }
  }
}

function safeLocalStorage() {
  try {
    return globalThis.localStorage ?? null;
  } catch {
    return null; // access denied (sandboxed frame, storage blocked)
  }
}

function closeReason(code) {
  switch (code) {
    case 1000:
      return 'normal close';
    case 1006:
      return 'connection lost';
    case 1008:
      return 'missed heartbeats';
    case 1009:
      return 'frame too large';
    case 1012:
      return 'server restarting';
    case 4001:
      return 'token expired';
    case 4008:
      return 'fell behind';
    default:
      return `closed with ${code}`;
  }
}

export default NotifydClient;
