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
 * @property {typeof WebSocket} [WebSocket] WebSocket implementation (default the global one)
 * @property {typeof fetch} [fetch]         fetch implementation (default the global one)
 */

/** An error from the server (error frame or HTTP error body) or from the client itself. */
export class NotifydError extends Error {
  /**
   * @param {string} code     `forbidden`, `validation_failed`, `unauthorized`, `busy`, `timeout`,
   *                          `disconnected`, `closed`, `network`, ... (docs/websocket.md, docs/api.md)
   * @param {string} message
   * @param {{status?: number, field?: string, ref?: *}} [extra]
   */
  constructor(code, message, extra = {}) {
    super(message);
    this.name = 'NotifydError';
    /** @type {string} */
    this.code = code;
    /** @type {number|undefined} HTTP status, for REST errors */
    this.status = extra.status;
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

/**
 * The notifyd client. One instance per user session (per tab); it owns one WebSocket at a time.
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
    this._fetch = options.fetch ?? globalThis.fetch?.bind(globalThis);

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
    globalThis.addEventListener?.('online', this._onOnline);
    globalThis.document?.addEventListener?.('visibilitychange', this._onVisible);
    this._open();
  }

  /** Closes the connection for good (until connect() again); pending commands are rejected. */
  close() {
    if (!this._wanted) return;
    this._wanted = false;
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
    const q = new URLSearchParams(token === null ? {} : { token: String(token) });
    if (this._seq !== null) q.set('since', String(this._seq));
    // Epoch 0 with events applied cannot say whose they were (the server would answer with a
    // reset): sent as unknown, and learnt from this connection's hello (see _onHello).
    if (this._seq !== null && this._epoch !== null && !(this._epoch === 0 && this._seq > 0)) {
      q.set('epoch', String(this._epoch));
    }
    const wsUrl = `${this.baseUrl.replace(/^http/i, 'ws')}/ws?${q}`;
    let ws;
    try {
      ws = new this._WS(wsUrl);
    } catch (e) {
      this._scheduleRetry({ reason: `bad url: ${e?.message ?? e}` });
      return;
    }
    this._ws = ws;
    this._hello = false;
    this._helloEpoch = null;
    this._connectTimer = setTimeout(() => {
      if (this._ws === ws && !this._hello) this._drop(ws, CLOSE_CONNECT_TIMEOUT, 'connect timeout');
    }, this._connectTimeout);
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
      case 'ack':
      case 'error':
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
    if (Number.isFinite(f.heartbeat_s) && f.heartbeat_s > 0) this._heartbeatMs = f.heartbeat_s * 1000;
    this._startHeartbeat(ws);
    this._status('open', { user: f.user, seq: f.seq });
    if (!this._anonymous) {
      this._emit('token', { exp: this._tokenExp, source: 'connect' });
      this._scheduleRefresh(ws);
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
    // Re-subscribe to the topics this client had (topics are per connection).
    const topics = [...this._topics];
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
    if (id !== null) {
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
    return true;
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

  // ---------------------------------------------------------------- commands

  /** Resolves once a `hello` arrived (at once if open); rejects after the command timeout. */
  _whenOpen() {
    if (this._ws && this._hello) return Promise.resolve();
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
    if (this._ws && this._hello) {
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
    await this._whenOpen();
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
    for (const t of topics) {
      this._topics.delete(t);
      this._topicIds.delete(t);
    }
    await this._whenOpen();
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
    await this._whenOpen();
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
    await this._whenOpen();
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

  async _rest(method, path, body) {
    if (this._anonymous) throw new NotifydError('unauthorized', 'an anonymous client has no inbox');
    if (!this._fetch) throw new NotifydError('network', 'no fetch available');
    const token = await this._fetchToken();
    const headers = { Authorization: `Bearer ${token}`, Accept: 'application/json' };
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
      throw new NotifydError(String(err.code ?? `http_${res.status}`), String(err.message ?? res.statusText), {
        status: res.status,
        field: err.field,
      });
    }
    return json;
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
