// <notifyd-bell>: a framework-free notification bell for notifyd (contract §10, "Drop-in UI").
//
//   <script type="module" src="https://notifyd.example.com/client/notifyd-bell.js"></script>
//   <notifyd-bell id="bell" server="https://notifyd.example.com"></notifyd-bell>
//   <script>document.getElementById('bell').getToken = () => fetch('/my/token').then(r => r.text());</script>
//
// `bell.getToken = null` is the logout (connection closed, everything forgotten). `server` must be
// the app's own markup: the user's token goes to that origin.
//
// Badge with the unseen (or unread) count, a dropdown with the latest messages that loads older
// pages as it scrolls, mark read / mark all read, archive, toasts for new messages. Keyboard and
// screen-reader accessible; themable with CSS custom properties (--notifyd-*) and ::part().
// Everything a message carries is rendered as text, never as markup. docs/bell.md documents it.

import { NotifydClient, safeUrl } from './notifyd-client.js';

const PAGE_SIZE = 20;
const TOAST_MS = 8000;
const MAX_TOASTS = 3;
/** The most messages the dropdown holds (the newest); docs/bell.md "Limits". */
export const MAX_MESSAGES = 500;
/** Retries of a failed page: 1 s doubling up to 60 s, half of it random (or the server's Retry-After). */
const RETRY_BASE_MS = 1000;
const RETRY_MAX_MS = 60_000;

/** How long to wait before retry number `attempt` (from 0) after `err`. */
function retryDelayMs(attempt, err) {
  const d = Math.min(RETRY_MAX_MS, RETRY_BASE_MS * 2 ** Math.min(attempt, 16));
  const backoff = d / 2 + Math.random() * (d / 2);
  const told = Number.isFinite(err?.retryAfterMs) ? err.retryAfterMs : 0;
  return Math.max(backoff, told);
}

const STYLE = `
:host {
  --notifyd-font: system-ui, -apple-system, "Segoe UI", Roboto, "Helvetica Neue", Arial, sans-serif;
  --notifyd-surface: #ffffff;
  --notifyd-surface-2: #f3f4f8;
  --notifyd-text: #161a23;
  --notifyd-muted: #545c6e;
  --notifyd-border: #dfe2ea;
  --notifyd-accent: #4338ca;
  --notifyd-accent-soft: #eef0ff;
  --notifyd-badge-bg: #be123c;
  --notifyd-badge-text: #ffffff;
  --notifyd-focus: 0 0 0 3px rgba(67, 56, 202, .5);
  --notifyd-shadow: 0 12px 32px rgba(20, 24, 40, .14), 0 2px 6px rgba(20, 24, 40, .06);
  --notifyd-radius: 14px;
  --notifyd-panel-width: 400px;
  --notifyd-button-size: 42px;
  display: inline-block; position: relative; font-family: var(--notifyd-font); color: var(--notifyd-text);
  color-scheme: light;
}
@media (prefers-color-scheme: dark) {
  :host(:not([theme="light"])) {
    --notifyd-surface: #181b24; --notifyd-surface-2: #232836; --notifyd-text: #eceef3; --notifyd-muted: #a7afc0;
    --notifyd-border: #323849; --notifyd-accent: #a5a0ff; --notifyd-accent-soft: #2a2e4a;
    --notifyd-badge-bg: #e11d48; --notifyd-focus: 0 0 0 3px rgba(165, 160, 255, .6);
    --notifyd-shadow: 0 12px 32px rgba(0, 0, 0, .5);
    color-scheme: dark;
  }
}
:host([theme="dark"]) {
  --notifyd-surface: #181b24; --notifyd-surface-2: #232836; --notifyd-text: #eceef3; --notifyd-muted: #a7afc0;
  --notifyd-border: #323849; --notifyd-accent: #a5a0ff; --notifyd-accent-soft: #2a2e4a;
  --notifyd-badge-bg: #e11d48; --notifyd-focus: 0 0 0 3px rgba(165, 160, 255, .6);
  --notifyd-shadow: 0 12px 32px rgba(0, 0, 0, .5);
  color-scheme: dark;
}
:host([hidden]) { display: none; }
* { box-sizing: border-box; }
button { font: inherit; color: inherit; }
:focus { outline: none; }
:focus-visible { box-shadow: var(--notifyd-focus); }
[hidden] { display: none !important; }
.sr-only {
  position: absolute !important; width: 1px; height: 1px; padding: 0; margin: -1px;
  overflow: hidden; clip: rect(0 0 0 0); white-space: nowrap; border: 0;
}

#bell {
  position: relative; width: var(--notifyd-button-size); height: var(--notifyd-button-size); border-radius: 12px;
  border: 1px solid var(--notifyd-border); background: var(--notifyd-surface); color: var(--notifyd-text);
  display: grid; place-items: center; cursor: pointer; padding: 0;
}
#bell:hover { background: var(--notifyd-surface-2); }
#bell[aria-expanded="true"] { background: var(--notifyd-accent-soft); border-color: var(--notifyd-accent); }
#bell svg { width: 22px; height: 22px; }
#bell.ring svg { animation: ring .6s ease-in-out; transform-origin: 50% 10%; }
@keyframes ring { 0%,100% { transform: rotate(0) } 20% { transform: rotate(14deg) } 40% { transform: rotate(-12deg) } 60% { transform: rotate(8deg) } 80% { transform: rotate(-4deg) } }
.badge {
  position: absolute; top: -6px; right: -6px; min-width: 20px; height: 20px; padding: 0 6px;
  border-radius: 999px; background: var(--notifyd-badge-bg); color: var(--notifyd-badge-text); font-size: 12px;
  font-weight: 700; display: grid; place-items: center; border: 2px solid var(--notifyd-surface); line-height: 1;
}

#panel {
  position: absolute; right: 0; top: calc(100% + 10px); width: min(var(--notifyd-panel-width), calc(100vw - 24px));
  background: var(--notifyd-surface); color: var(--notifyd-text); border: 1px solid var(--notifyd-border);
  border-radius: var(--notifyd-radius); box-shadow: var(--notifyd-shadow); overflow: hidden; z-index: 1000;
  text-align: left; font-size: 15px; line-height: 1.45;
}
:host([align="left"]) #panel { right: auto; left: 0; }
.head { display: flex; align-items: center; gap: 8px; padding: 14px 16px 12px; border-bottom: 1px solid var(--notifyd-border); }
.head h2 { margin: 0; font-size: 16px; font-weight: 650; }
.head h2:focus-visible { box-shadow: none; text-decoration: underline; }
.pill { font-size: 12px; color: var(--notifyd-accent); background: var(--notifyd-accent-soft); padding: 2px 8px; border-radius: 999px; font-weight: 600; }
.link-btn {
  margin-left: auto; border: 0; background: none; color: var(--notifyd-accent); font-size: 13px; font-weight: 600;
  padding: 4px 6px; border-radius: 8px; cursor: pointer;
}
.link-btn:hover:not(:disabled) { background: var(--notifyd-accent-soft); }
.link-btn:disabled { color: var(--notifyd-muted); cursor: default; }
#scroller { max-height: min(440px, 60vh); overflow-y: auto; }
#list { list-style: none; margin: 0; padding: 6px; }
#list li { display: grid; grid-template-columns: 1fr auto; align-items: start; border-radius: 10px; }
#list li + li { margin-top: 2px; }
#list li:has(.item[data-unread="true"]) { background: var(--notifyd-accent-soft); }
.item {
  display: grid; grid-template-columns: 36px 1fr 10px; gap: 12px; width: 100%; text-align: left; min-width: 0;
  padding: 10px; border: 0; border-radius: 10px; background: transparent; cursor: pointer;
}
.item:hover { background: var(--notifyd-surface-2); }
.avatar { width: 36px; height: 36px; border-radius: 50%; display: grid; place-items: center; background: var(--notifyd-surface-2); color: var(--notifyd-accent); }
.avatar svg { width: 18px; height: 18px; }
.body { min-width: 0; }
.title, .content { display: block; }
.title { font-weight: 600; font-size: 14px; overflow-wrap: anywhere; }
.item[data-unread="false"] .title { font-weight: 500; }
.content {
  color: var(--notifyd-muted); font-size: 13.5px; margin-top: 1px; overflow-wrap: anywhere;
  display: -webkit-box; -webkit-line-clamp: 2; -webkit-box-orient: vertical; overflow: hidden;
}
.meta { display: flex; gap: 6px; align-items: center; margin-top: 4px; font-size: 12px; color: var(--notifyd-muted); }
.meta .type { text-transform: capitalize; }
.dot { width: 9px; height: 9px; border-radius: 50%; background: var(--notifyd-accent); margin-top: 6px; }
.dot[hidden] { display: block !important; visibility: hidden; }
.archive {
  border: 0; background: none; color: var(--notifyd-muted); cursor: pointer; width: 32px; height: 32px;
  margin: 8px 4px 0 0; border-radius: 8px; display: grid; place-items: center; padding: 0;
}
.archive:hover { background: var(--notifyd-surface-2); color: var(--notifyd-text); }
.archive svg { width: 16px; height: 16px; }
.empty { padding: 36px 16px; text-align: center; color: var(--notifyd-muted); margin: 0; }
.foot { border-top: 1px solid var(--notifyd-border); padding: 8px; text-align: center; }
.foot .link-btn { margin: 0; }
.note { color: var(--notifyd-muted); font-size: 13px; margin: 0 6px; }
.load-error { padding: 28px 16px; text-align: center; color: var(--notifyd-muted); margin: 0; }
.load-error .link-btn { margin: 0 0 0 4px; }

#toasts {
  position: fixed; right: 20px; bottom: 20px; z-index: 1001; display: grid; gap: 10px;
  width: min(360px, calc(100vw - 40px)); pointer-events: none; text-align: left; font-size: 15px; line-height: 1.45;
}
.toast {
  pointer-events: auto; display: grid; grid-template-columns: 1fr auto; gap: 4px 10px;
  background: var(--notifyd-surface); color: var(--notifyd-text); border: 1px solid var(--notifyd-border);
  border-left: 4px solid var(--notifyd-accent); border-radius: 12px; box-shadow: var(--notifyd-shadow);
  padding: 12px 12px 12px 14px; align-items: start; animation: toast-in .22s ease-out;
}
.t-title { font-weight: 650; font-size: 14px; overflow-wrap: anywhere; }
.t-content { grid-column: 1 / -1; color: var(--notifyd-muted); font-size: 13.5px; overflow-wrap: anywhere; }
.t-close {
  border: 0; background: none; cursor: pointer; color: var(--notifyd-muted); font-size: 18px; line-height: 1;
  width: 26px; height: 26px; border-radius: 8px; margin: -4px -4px -6px 0; padding: 0;
}
.t-close:hover { background: var(--notifyd-surface-2); }
@keyframes toast-in { from { opacity: 0; transform: translateY(8px) } to { opacity: 1; transform: none } }
@media (prefers-reduced-motion: reduce) { .toast, #bell.ring svg { animation: none; } }
`;

const SVG_ATTRS = 'viewBox="0 0 24 24" fill="none" stroke="currentColor" stroke-width="1.9" stroke-linecap="round" stroke-linejoin="round" aria-hidden="true" focusable="false"';

// Static markup only: nothing from a message ever goes through innerHTML.
const TEMPLATE = `<style>${STYLE}</style>
<button id="bell" part="button" type="button" aria-haspopup="dialog" aria-expanded="false" aria-controls="panel" aria-label="Notifications">
  <svg ${SVG_ATTRS}><path d="M6 8a6 6 0 1 1 12 0c0 7 3 9 3 9H3s3-2 3-9"/><path d="M10.3 21a1.94 1.94 0 0 0 3.4 0"/></svg>
  <span class="badge" id="badge" part="badge" aria-hidden="true" hidden>0</span>
</button>
<section id="panel" part="panel" role="dialog" aria-labelledby="panel-title" hidden>
  <div class="head" part="header">
    <h2 id="panel-title" tabindex="-1">Notifications</h2>
    <span class="pill" id="unread-pill" part="unread" hidden>0 unread</span>
    <button class="link-btn" id="read-all" part="read-all" type="button" disabled>Mark all as read</button>
  </div>
  <div id="scroller" part="scroller">
    <ul id="list" part="list" aria-label="Latest notifications"></ul>
    <p class="empty" id="empty" part="empty" hidden>You’re all caught up.</p>
    <p class="load-error" id="load-error" part="error" hidden><span>Couldn’t load notifications.</span><button class="link-btn" id="retry" type="button">Retry</button></p>
    <div class="foot" id="more-wrap" part="footer" hidden>
      <span class="note" id="more-note" hidden></span><button class="link-btn" id="more" type="button">Load older</button>
    </div>
  </div>
</section>
<div id="toasts" part="toasts" role="log" aria-live="polite" aria-relevant="additions" aria-label="New notifications"></div>`;

const ICONS = {
  comment: ['M21 15a2 2 0 0 1-2 2H7l-4 4V5a2 2 0 0 1 2-2h14a2 2 0 0 1 2 2z'],
  review: ['M12 2.5l2.9 5.9 6.5.9-4.7 4.6 1.1 6.5L12 17.3l-5.8 3.1 1.1-6.5L2.6 9.3l6.5-.9z'],
  mention: ['M12 16a4 4 0 1 0 0-8 4 4 0 0 0 0 8z', 'M16 8v5a3 3 0 0 0 6 0v-1a10 10 0 1 0-3.92 7.94'],
  system: ['M12 22a10 10 0 1 0 0-20 10 10 0 0 0 0 20z', 'M12 16v-4', 'M12 8h.01'],
  archive: ['M21 8v13H3V8', 'M1 3h22v5H1z', 'M10 12h4'],
  other: ['M6 8a6 6 0 1 1 12 0c0 7 3 9 3 9H3s3-2 3-9', 'M10.3 21a1.94 1.94 0 0 0 3.4 0'],
};
const SVG_NS = 'http://www.w3.org/2000/svg';

function svgIcon(kind) {
  const svg = document.createElementNS(SVG_NS, 'svg');
  for (const [k, v] of Object.entries({ viewBox: '0 0 24 24', fill: 'none', stroke: 'currentColor', 'stroke-width': '2',
    'stroke-linecap': 'round', 'stroke-linejoin': 'round', 'aria-hidden': 'true', focusable: 'false' })) svg.setAttribute(k, v);
  for (const d of ICONS[kind]) {
    const path = document.createElementNS(SVG_NS, 'path');
    path.setAttribute('d', d);
    svg.append(path);
  }
  return svg;
}

function el(tag, props = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(props)) {
    if (k === 'text') node.textContent = v;
    else if (k === 'class') node.className = v;
    else if (k === 'dataset') Object.assign(node.dataset, v);
    else node.setAttribute(k, v);
  }
  for (const c of children) if (c) node.append(c);
  return node;
}

/** "just now", "5 min ago", "yesterday", … */
export function relTime(iso, now = Date.now()) {
  const t = Date.parse(iso);
  if (Number.isNaN(t)) return '';
  const s = Math.max(0, Math.round((now - t) / 1000));
  if (s < 45) return 'just now';
  const m = Math.round(s / 60);
  if (m < 60) return `${m} min ago`;
  const h = Math.round(m / 60);
  if (h < 24) return `${h} h ago`;
  const d = Math.round(h / 24);
  if (d === 1) return 'yesterday';
  if (d < 7) return `${d} days ago`;
  return new Date(t).toLocaleDateString(undefined, { month: 'short', day: 'numeric', year: 'numeric' });
}

const FOCUSABLE = 'button:not([disabled]), [href], input:not([disabled]), [tabindex]:not([tabindex="-1"])';

export class NotifydBell extends HTMLElement {
  static get observedAttributes() {
    return ['server', 'count'];
  }

  constructor() {
    super();
    const root = this.attachShadow({ mode: 'open' });
    root.innerHTML = TEMPLATE;
    const $ = (id) => root.getElementById(id);
    this._el = {
      bell: $('bell'), badge: $('badge'), panel: $('panel'), list: $('list'), empty: $('empty'),
      title: $('panel-title'), readAll: $('read-all'), pill: $('unread-pill'), moreWrap: $('more-wrap'),
      more: $('more'), moreNote: $('more-note'), scroller: $('scroller'), toasts: $('toasts'),
      loadError: $('load-error'), retry: $('retry'),
    };
    /** @type {Map<string, object>} */
    this._messages = new Map();
    /** @type {Map<string, HTMLLIElement>} each message's list entry, updated in place */
    this._nodes = new Map();
    this._nextBefore = null;
    this._counts = { unseen: 0, unread: 0 };
    this._loaded = false;
    this._loadingOlder = false;
    // A failed page is retried with backoff, never in a loop (the observer fires again at once).
    this._firstAttempt = 0;
    this._firstTimer = null;
    this._firstFailed = false;
    this._olderAttempt = 0;
    this._olderTimer = null;
    this._olderWaitUntil = 0;
    this._olderFailed = false;
    /** @type {Set<{node: HTMLElement, timer: *}>} */
    this._toastTimers = new Set();
    this._replay = null;
    this._resetGen = 0;
    this._getToken = null;
    this._client = null;
    this._ownsClient = false;
    this._offs = [];

    const e = this._el;
    e.bell.addEventListener('click', () => this.toggle());
    e.readAll.addEventListener('click', () => this.markAllRead());
    e.more.addEventListener('click', () => {
      // A click is the user's own retry: no waiting for the backoff.
      this._olderWaitUntil = 0;
      this.loadOlder();
    });
    e.retry.addEventListener('click', () => this._reload());
    root.addEventListener('keydown', (ev) => this._onKeydown(ev));
    this._onDocClick = (ev) => {
      if (this.open && !ev.composedPath().includes(this)) this._setOpen(false, { focus: false });
    };
    this._onDocKeydown = (ev) => {
      if (ev.key === 'Escape' && this.open && !ev.composedPath().includes(this)) this._setOpen(false);
    };
    // Infinite scroll: the footer coming into view in the scrolling list loads the next page.
    this._observer = typeof IntersectionObserver === 'function'
      ? new IntersectionObserver((entries) => {
        if (entries.some((x) => x.isIntersecting)) this.loadOlder();
      }, { root: e.scroller, rootMargin: '0px 0px 120px 0px' })
      : null;
  }

  // ---------------------------------------------------------------- public API

  /** A function returning a user JWT, or a Promise of one; setting it starts the bell. */
  get getToken() {
    return this._getToken;
  }

  set getToken(fn) {
    const next = typeof fn === 'function' ? fn : null;
    if (next === this._getToken) return;
    const running = this._getToken !== null && this._client !== null;
    this._getToken = next;
    // null is the logout; another function may be another user: either way nothing of the old
    // session stays (connection, messages, counts, toasts), and a new function starts afresh.
    if (running) {
      if (!this._ownsClient) this._client = null;
      this._stop();
    }
    this._maybeStart();
  }

  /** The NotifydClient the bell runs on (its own, or one given with the `client` property). */
  get client() {
    return this._client;
  }

  /** Uses an app's own NotifydClient (connected by the app; the bell never closes it). */
  set client(c) {
    if (c === this._client) return;
    if (!this._ownsClient) this._client = null;
    this._stop();
    this._client = c ?? null;
    this._ownsClient = false;
    if (this._client && this.isConnected) this._attach();
  }

  get open() {
    return !this._el.panel.hidden;
  }

  /** The messages the dropdown holds, newest first. */
  get messages() {
    return this._sorted().map((m) => ({ ...m }));
  }

  toggle() {
    this._setOpen(!this.open);
  }

  show() {
    this._setOpen(true);
  }

  hide() {
    this._setOpen(false);
  }

  markRead(ids) {
    return this._client?.markRead(ids);
  }

  markAllRead() {
    return this._client?.markAllRead().catch((err) => this._warn('markAllRead', err));
  }

  archive(ids) {
    return this._client?.archive(ids);
  }

  /** Loads the next older page (what scrolling to the end of the list does). */
  async loadOlder() {
    if (!this._client || this._nextBefore === null || this._loadingOlder || !this._loaded) return;
    if (this._messages.size >= MAX_MESSAGES) return;
    // After a failure, the observer waits for the backoff (or the Retry button).
    if (Date.now() < this._olderWaitUntil) return;
    this._loadingOlder = true;
    const gen = this._resetGen;
    const before = this._nextBefore;
    try {
      const page = await this._client.fetchPage({ limit: this._pageSize(), before });
      if (gen !== this._resetGen) return;
      this._olderAttempt = 0;
      this._olderFailed = false;
      for (const m of page.messages) if (!this._messages.has(m.id)) this._add(m);
      // Cursors only go down: one that does not (a proxy's stale cache, a server bug) would
      // fetch the same page forever, so it ends the list instead.
      const next = page.next_before;
      this._nextBefore = Number.isFinite(next) && next < before ? next : null;
      if (next !== null && this._nextBefore === null) this._warn('loading older messages', new Error(`next_before ${next} does not move past ${before}`));
      this._trim();
      this._renderChrome();
    } catch (err) {
      if (gen !== this._resetGen) return;
      this._warn('loading older messages', err);
      // Not re-observed: the footer is still in view, so the observer would fire again at once
      // (a request loop). Retried after a capped backoff, or the server's Retry-After.
      const delay = retryDelayMs(this._olderAttempt++, err);
      this._olderWaitUntil = Date.now() + delay;
      this._olderFailed = true;
      clearTimeout(this._olderTimer);
      this._olderTimer = setTimeout(() => {
        this._olderWaitUntil = 0;
        this._reobserve();
      }, delay);
      this._renderChrome();
      return;
    } finally {
      this._loadingOlder = false;
    }
    // Still at the end (a short page, a tall list): the observer fires again on re-observing.
    this._reobserve();
  }

  _reobserve() {
    if (this._observer && this._nextBefore !== null && this.isConnected) {
      this._observer.unobserve(this._el.moreWrap);
      this._observer.observe(this._el.moreWrap);
    }
  }

  // ---------------------------------------------------------------- lifecycle

  connectedCallback() {
    // A framework (or a script that ran before this module) may have set these on the element
    // before it was upgraded: such own properties would hide the accessors, so re-set them.
    for (const prop of ['client', 'getToken']) {
      if (Object.hasOwn(this, prop)) {
        const value = this[prop];
        delete this[prop];
        this[prop] = value;
      }
    }
    document.addEventListener('click', this._onDocClick, true);
    document.addEventListener('keydown', this._onDocKeydown);
    this._observer?.observe(this._el.moreWrap);
    this._timer = setInterval(() => {
      for (const t of this._el.list.querySelectorAll('time')) t.textContent = relTime(t.getAttribute('datetime'));
    }, 30_000);
    if (this._client && !this._offs.length) this._attach();
    else this._maybeStart();
  }

  disconnectedCallback() {
    document.removeEventListener('click', this._onDocClick, true);
    document.removeEventListener('keydown', this._onDocKeydown);
    this._observer?.disconnect();
    clearInterval(this._timer);
    // Moved rather than removed: connectedCallback runs again before this microtask.
    queueMicrotask(() => {
      if (!this.isConnected) this._stop();
    });
  }

  attributeChangedCallback(name, old, value) {
    if (old === value) return;
    if (name === 'server' && this._ownsClient) {
      this._stop();
      this._maybeStart();
    } else if (name === 'count') {
      this._renderCounts();
    }
  }

  _maybeStart() {
    if (!this.isConnected || this._client || !this._getToken) return;
    const getToken = () => Promise.resolve(this._getToken());
    const opts = { getToken };
    const server = this.getAttribute('server');
    if (server) opts.url = server;
    this._client = new NotifydClient(opts);
    this._ownsClient = true;
    this._attach();
    this._client.connect();
  }

  /**
   * Detaches from the client (closing it if it is the bell's own) and forgets everything of the
   * session: messages, counts, toasts, loaded state, pending retries. Used at logout, on another
   * getToken, client or server, and when the element leaves the page for good.
   */
  _stop() {
    for (const off of this._offs) off();
    this._offs = [];
    if (this._client && this._ownsClient) this._client.close();
    if (this._ownsClient) this._client = null;
    this._resetGen++;
    this._replay = null;
    clearTimeout(this._firstTimer);
    clearTimeout(this._olderTimer);
    this._firstTimer = this._olderTimer = null;
    this._firstAttempt = this._olderAttempt = 0;
    this._firstFailed = this._olderFailed = false;
    this._olderWaitUntil = 0;
    this._loadingOlder = false;
    this._messages.clear();
    this._nodes.clear();
    this._el.list.replaceChildren();
    this._nextBefore = null;
    this._loaded = false;
    this.removeAttribute('loaded');
    this._counts = { unseen: 0, unread: 0 };
    this._renderCounts();
    for (const t of this._toastTimers) clearTimeout(t.timer);
    this._toastTimers.clear();
    this._el.toasts.replaceChildren();
    if (this.open) this._setOpen(false, { focus: false });
    this._renderChrome();
    if (this.hasAttribute('state')) this.setAttribute('state', 'closed');
  }

  /** Listens to the client; with a client already live, loads the first page now. */
  _attach() {
    const c = this._client;
    const on = (type, fn) => {
      c.on(type, fn);
      this._offs.push(() => c.off(type, fn));
    };
    // Events that arrive while a first page loads are applied at once and again on top of the
    // loaded page (applying is idempotent), so nothing is lost in the REST/stream seam.
    const applying = (fn) => (detail) => {
      this._replay?.push(() => fn(detail));
      fn(detail);
    };
    on('counts', (x) => {
      this._counts = { unseen: x.unseen, unread: x.unread };
      this._renderCounts();
    });
    on('status', ({ state }) => this.setAttribute('state', state));
    on('reset', () => this._reload());
    on('message', applying(({ message }) => {
      this._add({ ...message });
      this._trim();
      this._renderChrome();
    }));
    on('message', ({ message, replayed }) => {
      if (!replayed) this._toast(message);
    });
    on('read', applying(({ ids, all }) => this._setRead(all ? null : ids, true)));
    on('unread', applying(({ ids }) => this._setRead(ids, false)));
    const gone = applying(({ ids }) => {
      for (const id of ids) this._remove(id);
      this._renderChrome();
    });
    on('deleted', gone);
    on('archived', gone);
    on('snoozed', gone);
    // Back in the inbox: their bodies are not in the event, so the first page is fetched again.
    on('unarchived', () => this._reload());
    on('unsnoozed', () => this._reload());
    if (c.counts) {
      this._counts = { unseen: c.counts.unseen, unread: c.counts.unread };
      this._renderCounts();
    }
    if (c.state === 'open') this._reload();
  }

  async _reload() {
    if (!this._client) return;
    clearTimeout(this._firstTimer);
    this._firstTimer = null;
    const gen = ++this._resetGen;
    this._replay = [];
    try {
      const page = await this._client.fetchPage({ limit: this._pageSize() });
      if (gen !== this._resetGen) return;
      this._messages.clear();
      for (const m of page.messages) this._messages.set(m.id, m);
      this._nextBefore = page.next_before;
      this._olderFailed = false;
      this._olderWaitUntil = 0;
      this._olderAttempt = 0;
      for (const f of this._replay) f();
      this._trim();
      this._loaded = true;
      this._firstFailed = false;
      this._firstAttempt = 0;
      this._rebuildList();
      this.setAttribute('loaded', '');
      this.dispatchEvent(new CustomEvent('notifyd-loaded', { detail: { count: this._messages.size } }));
    } catch (err) {
      if (gen !== this._resetGen) return;
      this._warn('loading the first page', err);
      // Retried with backoff (a list loaded before stays as it was meanwhile); until a first page
      // is in, the dropdown says so with a Retry button instead of "all caught up".
      this._firstFailed = true;
      const delay = retryDelayMs(this._firstAttempt++, err);
      this._firstTimer = setTimeout(() => {
        this._firstTimer = null;
        if (gen === this._resetGen) this._reload();
      }, delay);
      this._renderChrome();
    } finally {
      if (gen === this._resetGen) this._replay = null;
    }
  }

  _pageSize() {
    const n = Number(this.getAttribute('page-size'));
    return Number.isInteger(n) && n >= 1 && n <= 100 ? n : PAGE_SIZE;
  }

  _warn(what, err) {
    console.warn(`<notifyd-bell>: ${what} failed`, err);
  }

  // ---------------------------------------------------------------- rendering (text only)

  _sorted() {
    return [...this._messages.values()].sort((a, b) => b.seq - a.seq);
  }

  /** Adds (or replaces) a message and its list entry, in its place by seq (newest first). */
  _add(m) {
    this._messages.set(m.id, m);
    const old = this._nodes.get(m.id);
    const node = this._renderItem(m);
    this._nodes.set(m.id, node);
    if (old) {
      this._replaceNode(old, node);
      return;
    }
    // Newest first: a live message goes on top, an older page at the end; walk from the nearer end.
    const list = this._el.list;
    let before = null;
    const last = list.lastElementChild;
    if (!last || this._messages.get(last.dataset.id)?.seq > m.seq) {
      before = null;
    } else {
      for (let li = list.firstElementChild; li; li = li.nextElementSibling) {
        if ((this._messages.get(li.dataset.id)?.seq ?? -Infinity) < m.seq) {
          before = li;
          break;
        }
      }
    }
    list.insertBefore(node, before);
  }

  /** Swaps an entry, keeping keyboard focus on the same button of it (no focus event otherwise). */
  _replaceNode(old, node) {
    const active = this.shadowRoot.activeElement;
    const cls = active && old.contains(active) ? active.className : null;
    old.replaceWith(node);
    if (cls) node.querySelector(`.${cls}`)?.focus();
  }

  _remove(id) {
    this._messages.delete(id);
    const node = this._nodes.get(id);
    if (!node) return;
    this._nodes.delete(id);
    const active = this.shadowRoot.activeElement;
    let next = null;
    if (active && node.contains(active)) {
      const sib = node.nextElementSibling ?? node.previousElementSibling;
      next = sib?.querySelector('.item') ?? (this.open ? this._el.title : null);
    }
    node.remove();
    next?.focus();
  }

  /**
   * Keeps at most MAX_MESSAGES, dropping the oldest; `next_before` then points at them, so the
   * list can fetch them again when there is room (after archiving, say).
   */
  _trim() {
    if (this._messages.size <= MAX_MESSAGES) return;
    const drop = this._sorted().slice(MAX_MESSAGES);
    for (const m of drop) this._remove(m.id);
    const oldest = drop[0].seq; // the newest dropped: everything before it goes again
    this._nextBefore = oldest + 1;
  }

  _setRead(ids, read) {
    const now = new Date().toISOString();
    const apply = (m) => {
      if (!m || m.is_read === read) return;
      m.is_read = read;
      m.read_at = read ? (m.read_at ?? now) : null;
      const node = this._nodes.get(m.id);
      if (node) this._patchRead(node, m);
    };
    if (ids === null) for (const m of this._messages.values()) apply(m);
    else for (const id of ids) apply(this._messages.get(id));
    this._renderChrome();
  }

  /** Updates an entry's read state in place (its focus, if it has it, is left alone). */
  _patchRead(node, m) {
    const unread = !m.is_read;
    const item = node.querySelector('.item');
    item.dataset.unread = String(unread);
    node.querySelector('.dot').hidden = !unread;
    const label = item.querySelector('.body > .sr-only');
    if (unread && !label) item.querySelector('.body').prepend(el('span', { class: 'sr-only', text: 'Unread: ' }));
    else if (!unread && label) label.remove();
  }

  _renderItem(m) {
    const unread = !m.is_read;
    const link = safeUrl(m.skip_url);
    const when = el('time', { datetime: String(m.send_time ?? ''), text: relTime(m.send_time) });
    const kind = Object.hasOwn(ICONS, m.type) && m.type !== 'archive' ? m.type : 'other';
    const avatar = el('span', { class: 'avatar', 'aria-hidden': 'true', dataset: { kind } });
    avatar.append(svgIcon(kind));
    const dot = el('span', { class: 'dot', 'aria-hidden': 'true' });
    dot.hidden = !unread;
    const item = el('button', { type: 'button', class: 'item', part: 'item', dataset: { id: m.id, unread: String(unread) } },
      avatar,
      el('span', { class: 'body' },
        // Screen readers hear the item's own text (its name), led by its state.
        unread ? el('span', { class: 'sr-only', text: 'Unread: ' }) : null,
        el('span', { class: 'title', text: String(m.title ?? '') }),
        m.content ? el('span', { class: 'content', text: String(m.content) }) : null,
        el('span', { class: 'meta' },
          m.type ? el('span', { class: 'type', text: String(m.type) }) : null,
          when,
          link ? el('span', { 'aria-hidden': 'true', text: '· open ↗' }) : null,
          link ? el('span', { class: 'sr-only', text: '. Opens a link' }) : null)),
      dot);
    item.addEventListener('click', () => this._openMessage(m.id));
    const archive = el('button', { type: 'button', class: 'archive', part: 'archive', 'aria-label': `Archive: ${m.title ?? ''}`, title: 'Archive', dataset: { id: m.id } });
    archive.append(svgIcon('archive'));
    archive.addEventListener('click', () => this._archive(m.id));
    return el('li', { part: 'entry', dataset: { id: m.id } }, item, archive);
  }

  /** Builds every entry again (after a first page); keeps focus on the same notification. */
  _rebuildList() {
    const { list } = this._el;
    const active = this.shadowRoot.activeElement;
    const focused = active && list.contains(active) ? { id: active.dataset.id, cls: active.className } : null;
    this._nodes.clear();
    const nodes = this._sorted().map((m) => {
      const node = this._renderItem(m);
      this._nodes.set(m.id, node);
      return node;
    });
    list.replaceChildren(...nodes);
    if (focused) {
      const again = this._nodes.get(focused.id)?.querySelector(`.${focused.cls}`);
      if (again) again.focus();
      else if (this.open) (list.querySelector('.item') ?? this._el.title).focus();
    }
    this._renderChrome();
  }

  /** What surrounds the list: "all caught up", the load error, the footer. */
  _renderChrome() {
    const { empty, moreWrap, more, moreNote, loadError } = this._el;
    const n = this._messages.size;
    empty.hidden = n > 0 || !this._loaded;
    loadError.hidden = this._loaded || !this._firstFailed;
    const full = n >= MAX_MESSAGES;
    moreWrap.hidden = this._nextBefore === null || !this._loaded;
    moreNote.hidden = !(this._olderFailed || full);
    moreNote.textContent = full ? `Showing the latest ${MAX_MESSAGES}.` : 'Couldn’t load older notifications.';
    more.hidden = full;
    more.textContent = this._olderFailed ? 'Retry' : 'Load older';
  }

  _renderCounts() {
    const { bell, badge, pill, readAll } = this._el;
    const { unseen, unread } = this._counts;
    const mode = this.getAttribute('count') === 'unread' ? 'unread' : 'unseen';
    const n = mode === 'unread' ? unread : unseen;
    badge.textContent = n > 99 ? '99+' : String(n);
    badge.hidden = n === 0;
    bell.setAttribute('aria-label', n ? `Notifications, ${n} ${mode === 'unread' ? 'unread' : 'new'}` : 'Notifications');
    pill.textContent = `${unread} unread`;
    pill.hidden = unread === 0;
    readAll.disabled = unread === 0;
  }

  _toast(m) {
    if (this.hasAttribute('no-toasts')) return;
    const { toasts, bell } = this._el;
    const close = el('button', { type: 'button', class: 't-close', 'aria-label': 'Dismiss', text: '×' });
    const node = el('div', { class: 'toast', part: 'toast', dataset: { id: m.id } },
      el('div', { class: 't-title', text: String(m.title ?? '') }),
      close,
      m.content ? el('div', { class: 't-content', text: String(m.content) }) : null);
    const entry = { node, timer: null, remove: null };
    // Removing a toast that holds focus would drop focus to <body>: it goes to the bell instead.
    const remove = () => {
      clearTimeout(entry.timer);
      this._toastTimers.delete(entry);
      const hadFocus = node.contains(this.shadowRoot.activeElement);
      node.remove();
      if (hadFocus) bell.focus();
    };
    entry.remove = remove;
    // A toast being read (hovered) or reached with the keyboard (focused) stays; its timer starts
    // again, whole, once the pointer and focus have left it.
    const arm = () => {
      clearTimeout(entry.timer);
      entry.timer = node.matches(':hover') || node.contains(this.shadowRoot.activeElement) ? null : setTimeout(remove, TOAST_MS);
    };
    const pause = () => {
      clearTimeout(entry.timer);
      entry.timer = null;
    };
    node.addEventListener('pointerenter', pause);
    node.addEventListener('focusin', pause);
    node.addEventListener('pointerleave', () => queueMicrotask(arm));
    node.addEventListener('focusout', () => setTimeout(arm, 0));
    close.addEventListener('click', remove);
    toasts.append(node);
    this._toastTimers.add(entry);
    while (toasts.children.length > MAX_TOASTS) {
      const oldest = [...this._toastTimers].find((t) => t.node === toasts.firstElementChild);
      if (oldest) oldest.remove();
      else toasts.firstElementChild.remove();
    }
    arm();
    bell.classList.remove('ring');
    void bell.offsetWidth; // restart the animation
    bell.classList.add('ring');
  }

  // ---------------------------------------------------------------- interaction

  _setOpen(open, { focus = true } = {}) {
    const { panel, bell, list, title } = this._el;
    if (open === this.open) return;
    panel.hidden = !open;
    bell.setAttribute('aria-expanded', String(open));
    if (open) {
      this.setAttribute('open', '');
      if (this._counts.unseen > 0) this._client?.markAllSeen().catch((err) => this._warn('markAllSeen', err));
      if (focus) (list.querySelector('.item') ?? title).focus();
    } else {
      this.removeAttribute('open');
      if (focus) bell.focus();
    }
    this.dispatchEvent(new CustomEvent(open ? 'notifyd-open' : 'notifyd-close'));
  }

  _onKeydown(ev) {
    if (!this.open) return;
    if (ev.key === 'Escape') {
      ev.preventDefault();
      ev.stopPropagation();
      this._setOpen(false);
      return;
    }
    const active = this.shadowRoot.activeElement;
    if (ev.key === 'Tab') {
      // Focus stays in the open dropdown; Escape leaves it.
      const all = [...this._el.panel.querySelectorAll(FOCUSABLE)].filter((n) => n.offsetParent !== null);
      if (!all.length) return;
      const first = all[0];
      const last = all[all.length - 1];
      const inside = active && this._el.panel.contains(active);
      if (ev.shiftKey && (!inside || active === first || active === this._el.title)) {
        ev.preventDefault();
        last.focus();
      } else if (!ev.shiftKey && (!inside || active === last)) {
        ev.preventDefault();
        first.focus();
      }
      return;
    }
    // Arrow keys, Home and End move between notifications.
    if (!['ArrowDown', 'ArrowUp', 'Home', 'End'].includes(ev.key)) return;
    if (!active?.classList.contains('item')) return;
    const items = [...this._el.list.querySelectorAll('.item')];
    const i = items.indexOf(active);
    const next = ev.key === 'Home' ? 0 : ev.key === 'End' ? items.length - 1
      : Math.min(items.length - 1, Math.max(0, i + (ev.key === 'ArrowDown' ? 1 : -1)));
    items[next]?.focus();
    ev.preventDefault();
  }

  async _openMessage(id) {
    const m = this._messages.get(id);
    if (!m) return;
    if (!m.is_read && this._client) {
      // Wait a moment for the ack so the read state survives a navigation; never block on it.
      const marked = this._client.markRead([id]).catch((err) => this._warn('markRead', err));
      await Promise.race([marked, new Promise((r) => setTimeout(r, 1500))]);
    }
    const target = safeUrl(m.skip_url);
    // An app with its own router cancels this event and navigates itself.
    const go = this.dispatchEvent(new CustomEvent('notifyd-click', { detail: { message: { ...m }, url: target }, cancelable: true }));
    if (go && target) location.assign(target);
    else if (go && m.skip_url && !target) console.warn('<notifyd-bell>: refusing to follow a link that is not relative or http(s)');
  }

  async _archive(id) {
    if (!this._client) return;
    // Focus moves on to the next notification (or the heading) before this one goes away.
    const items = [...this._el.list.querySelectorAll('.item')];
    const i = items.findIndex((b) => b.dataset.id === id);
    const next = items[i + 1] ?? items[i - 1];
    try {
      await this._client.archive([id]);
      this._remove(id);
      this._renderChrome();
      const again = next && this._nodes.get(next.dataset.id)?.querySelector('.item');
      (again ?? this._el.title).focus();
    } catch (err) {
      this._warn('archive', err);
    }
  }
}

if (!customElements.get('notifyd-bell')) customElements.define('notifyd-bell', NotifydBell);

export { NotifydClient };
export default NotifydBell;
