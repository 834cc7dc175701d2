// notifyd-shared-worker.js: the SharedWorker behind `new NotifydClient({ shared: true })`: one
// notifyd connection (WebSocket or SSE, the client's `transport` rules) for every tab of one
// browser profile, origin and user (the client names the worker after notifyd's URL and the
// user, so each user gets a worker of their own). Docs: docs/websocket.md, "One connection per
// browser".
//
// Hosting: a SharedWorker must come from the page's own origin, so an app serves this file
// itself, beside notifyd-client.js (it imports it by a relative path); its connection still goes
// to notifyd across origins (the `url` option of the tabs). notifyd serves both at /client/ for
// pages on its own origin.
//
// The worker has no getToken of its own: it asks a tab for a token whenever it needs one. The
// first tab's options (url, transport, backoff, since/epoch) make the connection; every tab
// gets every event and applies it with its own seq (see NotifydClient, "shared connection").

import { NotifydHub } from './notifyd-client.js';

/** @type {NotifydHub|null} */
let hub = null;
/** @type {Map<string, MessagePort>} tab id -> its port */
const ports = new Map();

function post(m) {
  if (m.to != null) {
    ports.get(m.to)?.postMessage(m);
    return;
  }
  for (const port of ports.values()) port.postMessage(m);
}

function startHub(hello) {
  // localStorage is not reachable from a worker: the tabs read the remembered transport for it
  // and write back what the worker's client decides.
  let remembered = typeof hello.remembered === 'string' ? hello.remembered : null;
  const storage = {
    getItem: () => remembered,
    setItem: (k, v) => {
      remembered = v;
      post({ t: 'store', k, v });
    },
  };
  const h = new NotifydHub({
    options: hello.options ?? {},
    getToken: () => h.askToken(),
    storage,
    post,
    onPeerGone: (tab) => {
      ports.delete(tab);
      // The last tab left: close the connection (a new tab starts a new one with its `since`).
      if (h.peers === 0 && hub === h) {
        hub = null;
        h.close();
      }
    },
  });
  hub = h;
  return h;
}

globalThis.onconnect = (e) => {
  const port = e.ports[0];
  port.onmessage = (ev) => {
    const m = ev.data;
    if (!m || typeof m !== 'object' || typeof m.tab !== 'string') return;
    if (m.op === 'hello') {
      ports.set(m.tab, port);
      if (!hub) {
        startHub(m).fromPeer(m.tab, m);
        hub.start();
        return;
      }
    }
    hub?.fromPeer(m.tab, m);
  };
  port.start();
};
