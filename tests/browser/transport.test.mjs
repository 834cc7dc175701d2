// Transport fallback and one connection per browser (contract §10), in real headless Chromium
// against a real notifyd (`serve --dev`):
// - a page whose WebSockets are refused by its route handler (a proxy that strips `Upgrade`)
//   still gets live notifications, over SSE, and remembers that choice for the origin;
// - five tabs of one user with `shared: true` hold one server connection (SharedWorker, and the
//   Web Locks + BroadcastChannel leader tab where SharedWorker is missing); a read in one tab
//   reaches every tab; when the tab holding the connection closes, another takes over, and
//   every tab ends with every seq exactly once.
// Run: scripts/browser-test.sh (or, with the binary built and chromium installed: node --test tests/browser/).

import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';

import { Notifyd, SERVICE_KEY, launchBrowser, randomUser, sleep } from './harness.mjs';
import { mintToken } from './tokens.mjs';

let server;
let browser;

before(async () => {
  server = await new Notifyd().setup();
  browser = await launchBrowser();
});

after(async () => {
  await browser?.close();
  await server?.teardown();
});

/**
 * Opens a page on the notifyd origin running a NotifydClient for `user` with `options`; what it
 * reports is kept in `window.__log`. `setup` runs in the page before the client module loads.
 */
async function openClient(user, options = {}, { setup, routeWs } = {}) {
  const page = await browser.context.newPage();
  const errors = [];
  page.on('pageerror', (e) => errors.push(e.message));
  page.__errors = errors;
  await page.exposeFunction('mintToken', () => mintToken(user, 3600));
  if (routeWs) await page.routeWebSocket(/\/ws\?/, routeWs);
  if (setup) await page.addInitScript(setup);
  await page.goto(`${server.baseUrl}/healthz`);
  await page.evaluate(async (options) => {
    const { NotifydClient } = await import('/client/notifyd-client.js');
    const log = { statuses: [], seqs: [], messages: [], errors: [], resets: [], counts: null, reads: 0 };
    window.__log = log;
    const client = new NotifydClient({ getToken: () => window.mintToken(), backoffBaseMs: 200, backoffMaxMs: 2000, ...options });
    client.on('status', (s) => log.statuses.push({ state: s.state, reason: s.reason }));
    client.on('message', (m) => {
      log.messages.push({ id: m.message.id, seq: m.seq, title: m.message.title });
      log.seqs.push(m.seq);
    });
    client.on('read', (r) => {
      log.reads += 1;
      log.seqs.push(r.seq);
    });
    client.on('seen', (r) => log.seqs.push(r.seq));
    client.on('counts', (c) => (log.counts = { seq: c.seq, unread: c.unread, unseen: c.unseen }));
    client.on('reset', (r) => log.resets.push(r));
    client.on('error', (e) => log.errors.push(e));
    window.__client = client;
    client.connect();
  }, options);
  return page;
}

function waitOpen(page, timeout = 20_000) {
  return page.waitForFunction(() => window.__client?.state === 'open', null, { timeout });
}

function waitMessages(page, n, timeout = 20_000) {
  return page.waitForFunction((n) => window.__log.messages.length >= n, n, { timeout });
}

async function presence(user) {
  const res = await fetch(`${server.baseUrl}/api/v1/users/${encodeURIComponent(user)}/presence`, {
    headers: { Authorization: `Bearer ${SERVICE_KEY}` },
  });
  assert.equal(res.status, 200);
  return res.json();
}

/** The connection gauge of /metrics for `transport`. */
async function gauge(transport) {
  const text = await (await fetch(`${server.baseUrl}/metrics`)).text();
  const m = new RegExp(`^notifyd_ws_connections\\{[^}]*transport="${transport}"[^}]*\\} (\\d+)`, 'm').exec(text);
  return m ? Number(m[1]) : 0;
}

describe('transport: auto falls back to SSE', { timeout: 120_000 }, () => {
  it('WebSockets refused by the page: live notifications arrive over SSE, and the choice is remembered', async () => {
    const user = randomUser('sse');
    let wsAttempts = 0;
    // What a proxy that strips `Upgrade` does to the page: the WebSocket never opens.
    const refuse = (ws) => {
      wsAttempts += 1;
      ws.close({ code: 1006 });
    };
    const page = await openClient(user, {}, { routeWs: refuse });
    await waitOpen(page);
    assert.equal(await page.evaluate(() => window.__client.transport), 'sse');
    assert.equal(wsAttempts, 2, 'two WebSocket attempts ended before a hello, then SSE');
    assert.equal((await presence(user)).connections, 1);

    const sent = await server.send({ to_user: user, title: 'over sse 1', content: 'x' });
    await waitMessages(page, 1);
    await server.send({ to_user: user, title: 'over sse 2', content: 'y' });
    await waitMessages(page, 2);
    const log = await page.evaluate(() => window.__log);
    assert.deepEqual(log.messages.map((m) => m.title), ['over sse 1', 'over sse 2']);
    assert.equal(log.messages[0].id, sent.ids?.[0] ?? log.messages[0].id);
    assert.equal(log.counts.unseen, 2);

    // Commands go over REST: a read reaches the stream as an event.
    await page.evaluate((id) => window.__client.markRead([id]), log.messages[0].id);
    await page.waitForFunction(() => window.__log.reads === 1 && window.__log.counts.unread === 1);

    // Remembered for the notifyd origin for 24 h.
    const stored = await page.evaluate(
      (origin) => JSON.parse(localStorage.getItem(`notifyd:transport:${origin}`)),
      server.baseUrl,
    );
    assert.equal(stored.transport, 'sse');
    const ttl = stored.until - Date.now();
    assert.ok(ttl > 23.9 * 3600_000 && ttl <= 24 * 3600_000, `remembered for ${ttl} ms`);

    // A new page of the origin goes to SSE at once: no WebSocket attempt.
    const before = wsAttempts;
    const page2 = await openClient(user, {}, { routeWs: refuse });
    await waitOpen(page2, 10_000);
    assert.equal(await page2.evaluate(() => window.__client.transport), 'sse');
    assert.equal(wsAttempts, before);
    await server.send({ to_user: user, title: 'over sse 3', content: 'z' });
    await waitMessages(page2, 1);

    // Topics over SSE: fixed per stream, so subscribing reopens it (resuming with since).
    await page2.evaluate(() => window.__client.subscribe(['product:1']));
    await server.send({ to_user: user, title: 'over sse 4', content: 'w' });
    await waitMessages(page2, 2);
    const log2 = await page2.evaluate(() => window.__log);
    assert.deepEqual(log2.messages.map((m) => m.title), ['over sse 3', 'over sse 4']);
    assert.deepEqual(page.__errors, []);
    assert.deepEqual(page2.__errors, []);
    await page.evaluate(() => localStorage.clear());
    await page.close();
    await page2.close();
  });

  it('a WebSocket that opens but never says hello: SSE after 5 s', async () => {
    const user = randomUser('silent');
    // The upgrade "succeeds" but nothing comes through (a buffering proxy).
    const silent = () => {};
    const page = await openClient(user, {}, { routeWs: silent });
    const t0 = Date.now();
    await waitOpen(page, 15_000);
    const took = Date.now() - t0;
    assert.equal(await page.evaluate(() => window.__client.transport), 'sse');
    assert.ok(took >= 4_500, `fell back after ${took} ms`);
    await server.send({ to_user: user, title: 'after silence', content: 'x' });
    await waitMessages(page, 1);
    await page.evaluate(() => localStorage.clear());
    await page.close();
  });

  it("transport: 'ws' never falls back", async () => {
    const user = randomUser('wsonly');
    const page = await openClient(user, { transport: 'ws' }, { routeWs: (ws) => ws.close({ code: 1006 }) });
    await sleep(3_000);
    const st = await page.evaluate(() => ({ state: window.__client.state, transport: window.__client.transport }));
    assert.notEqual(st.state, 'open');
    assert.equal(st.transport, 'ws');
    await page.close();
  });
});

/** Five tabs of `user` with shared: true; `setup` runs before the client loads in each. */
async function sharedTabs(user, options, setup) {
  const pages = [];
  for (let i = 0; i < 5; i++) {
    const page = await openClient(user, { shared: true, ...options }, { setup });
    await waitOpen(page);
    pages.push(page);
  }
  return pages;
}

async function oneConnectionScenario(user, { options = {}, setup, whoHoldsIt }) {
  const pages = await sharedTabs(user, options, setup);
  // One server connection for the five tabs.
  await sleep(500);
  assert.equal((await presence(user)).connections, 1);

  // Every tab gets every message.
  const first = await server.send({ to_user: user, title: 'm1', content: 'x' });
  assert.ok(first);
  for (const p of pages) await waitMessages(p, 1);
  const id = (await pages[2].evaluate(() => window.__log.messages[0].id));
  // A read in one tab: the counts in all.
  const counts = await pages[2].evaluate((id) => window.__client.markRead([id]), id);
  assert.equal(counts.unread, 0);
  for (const p of pages) {
    await p.waitForFunction(() => window.__log.counts?.unread === 0 && window.__log.reads === 1, null, {
      timeout: 10_000,
    });
  }
  // The bell opened in another tab: seen everywhere.
  await pages[4].evaluate(() => window.__client.markAllSeen());
  for (const p of pages) await p.waitForFunction(() => window.__log.counts?.unseen === 0, null, { timeout: 10_000 });

  // The tab that holds the connection (or, with a SharedWorker, the one that gave it its
  // tokens) closes while messages are being sent: another takes over, nothing lost or doubled.
  const holder = await whoHoldsIt(pages);
  const sending = (async () => {
    for (let i = 2; i <= 11; i++) {
      await server.send({ to_user: user, title: `m${i}`, content: 'x' });
      await sleep(100);
    }
  })();
  await sleep(250);
  await pages[holder].close({ runBeforeUnload: true });
  const rest = pages.filter((_, i) => i !== holder);
  await sending;
  for (const p of rest) await waitMessages(p, 11, 30_000);
  await sleep(500);
  const last = await server.send({ to_user: user, title: 'm12', content: 'x' });
  assert.ok(last);
  for (const p of rest) await waitMessages(p, 12);
  await sleep(300);
  for (const p of rest) {
    const log = await p.evaluate(() => window.__log);
    const titles = log.messages.map((m) => m.title);
    assert.deepEqual(titles, Array.from({ length: 12 }, (_, i) => `m${i + 1}`), 'every message once, in order');
    // Every seq of the stream exactly once, in order: 12 creates and the read (a seen-all
    // after reading everything changes nothing, so it has no seq of its own).
    assert.equal(log.counts.seq, 13);
    assert.deepEqual(log.seqs, Array.from({ length: 13 }, (_, i) => i + 1));
    assert.equal(log.resets.length, 1, 'one initial reset, none after');
    assert.deepEqual(p.__errors, []);
  }
  assert.equal((await presence(user)).connections, 1);
  for (const p of rest) await p.close();
}

describe('shared: true (one connection per browser)', { timeout: 180_000 }, () => {
  it('five tabs over a SharedWorker: one connection, reads reach all, the token-giving tab can close', async () => {
    const user = randomUser('sw');
    await oneConnectionScenario(user, {
      whoHoldsIt: async (pages) => {
        const kinds = await Promise.all(pages.map((p) => p.evaluate(() => Boolean(window.__client._port))));
        assert.deepEqual(kinds, [true, true, true, true, true], 'every tab talks to the SharedWorker');
        return pages.length - 1; // the newest tab: the worker asks it for tokens first
      },
    });
  });

  it('five tabs without SharedWorker: a Web Locks leader relays over BroadcastChannel; closing it hands over', async () => {
    const user = randomUser('lead');
    await oneConnectionScenario(user, {
      setup: () => {
        delete window.SharedWorker;
      },
      whoHoldsIt: async (pages) => {
        const leaders = await Promise.all(pages.map((p) => p.evaluate(() => Boolean(window.__client._hub))));
        assert.equal(leaders.filter(Boolean).length, 1, 'exactly one leader tab');
        return leaders.indexOf(true);
      },
    });
  });

  it("a shared connection over SSE (transport: 'sse'): one stream for three tabs", async () => {
    const user = randomUser('swsse');
    const pages = [];
    for (let i = 0; i < 3; i++) {
      const page = await openClient(user, { shared: true, transport: 'sse' });
      await waitOpen(page);
      pages.push(page);
    }
    assert.equal((await presence(user)).connections, 1);
    assert.ok((await gauge('sse')) >= 1, 'counted under transport="sse"');
    for (const p of pages) assert.equal(await p.evaluate(() => Boolean(window.__client._port)), true);
    await server.send({ to_user: user, title: 'shared over sse', content: 'x' });
    for (const p of pages) await waitMessages(p, 1);
    for (const p of pages) assert.equal(await p.evaluate(() => window.__client.transport), 'sse');
    for (const p of pages) await p.close();
  });
});
