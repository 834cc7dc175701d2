// The notification bell (web/demo.html, which uses <notifyd-bell> from web/notifyd-bell.js over
// web/notifyd-client.js) in real headless Chromium against
// a real notifyd (`serve --dev`), PostgreSQL and Redis. Run: scripts/browser-test.sh
// (or, with the binary built and chromium installed: node --test tests/browser/).

import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';

import { Notifyd, launchBrowser, randomUser, sleep } from './harness.mjs';

const XSS_TITLE = '<script>window.__pwned=1</script><img src=x onerror="window.__pwned=2">';

let server;
let browser;
const pageErrors = [];

before(async () => {
  server = await new Notifyd().setup();
  browser = await launchBrowser();
});

after(async () => {
  await browser?.close();
  await server?.teardown();
});

/** Opens /demo as `user` and waits until it is live and its first page is loaded. */
async function openDemo(user, { query = '' } = {}) {
  const page = await browser.context.newPage();
  page.on('pageerror', (e) => pageErrors.push(`${user}: ${e.message}`));
  page.on('dialog', (d) => {
    pageErrors.push(`${user}: unexpected dialog ${d.type()}: ${d.message()}`);
    d.dismiss().catch(() => {});
  });
  await page.goto(`${server.baseUrl}/demo?user=${encodeURIComponent(user)}${query}`);
  await waitLive(page);
  await page.waitForSelector('body[data-loaded="true"]', { timeout: 10_000 });
  return page;
}

function waitLive(page, timeout = 15_000) {
  return page.waitForSelector('#status[data-state="open"]', { timeout });
}

const badge = (page) =>
  page.$eval('#badge', (b) => (b.hidden ? '0' : b.textContent));

async function waitBadge(page, expected, timeout = 10_000) {
  await page.waitForFunction(
    (want) => {
      const b = document.querySelector('notifyd-bell').shadowRoot.getElementById('badge');
      return (b.hidden ? '0' : b.textContent) === want;
    },
    expected,
    { timeout },
  );
}

const item = (page, id) => page.locator(`#list .item[data-id="${id}"]`);

async function waitItemUnread(page, id, unread, timeout = 10_000) {
  await page.waitForSelector(`#list .item[data-id="${id}"][data-unread="${unread}"]`, {
    state: 'attached',
    timeout,
  });
}

// The bell's parts live in its (open) shadow root: Playwright's CSS selectors (#bell, #list …)
// reach into it; code run in the page goes through `shadowRoot`.
const DEEP_ACTIVE = () => {
  let a = document.activeElement;
  while (a?.shadowRoot?.activeElement) a = a.shadowRoot.activeElement;
  return a;
};

async function openBell(page) {
  if ((await page.getAttribute('#bell', 'aria-expanded')) !== 'true') await page.click('#bell');
  await page.waitForSelector('#panel:not([hidden])');
}

describe('notification bell in Chromium', { timeout: 240_000 }, () => {
  it('a POST shows a toast and badge 1 in two pages of the same user; clicking it in one marks it read in both', { timeout: 60_000 }, async () => {
    const user = randomUser('ab');
    const p1 = await openDemo(user);
    const p2 = await openDemo(user);
    assert.equal(await badge(p1), '0');
    assert.equal(await badge(p2), '0');

    const title = 'Bob commented on your post';
    const { messages } = await server.send({ to_user: user, title, content: 'Looks great, ship it!', type: 'comment' });
    const id = messages[0].id;

    // (a) toast + badge 1 in both pages
    for (const p of [p1, p2]) {
      const toast = p.locator(`#toasts .toast[data-id="${id}"]`);
      await toast.waitFor({ state: 'visible', timeout: 10_000 });
      assert.equal(await toast.locator('.t-title').textContent(), title);
      await waitBadge(p, '1');
      await waitItemUnread(p, id, 'true');
    }
    // the toast region is announced politely
    assert.equal(await p1.getAttribute('#toasts', 'aria-live'), 'polite');

    // (b) open the bell in p1: it marks all seen, so both badges go to 0, but the message stays unread
    await openBell(p1);
    await waitBadge(p1, '0');
    await waitBadge(p2, '0');
    await waitItemUnread(p2, id, 'true');
    assert.equal(await item(p1, id).getAttribute('data-unread'), 'true');
    assert.equal(await item(p1, id).locator('.dot').isVisible(), true);

    // click the notification in p1: read in both (unread dot gone, counters at 0)
    await item(p1, id).click();
    for (const p of [p1, p2]) {
      await waitItemUnread(p, id, 'false');
      assert.equal(await item(p, id).locator('.dot').isVisible(), false);
      await p.waitForFunction(() => window.notifydDemo.client.counts?.unread === 0);
      assert.equal(await p.isHidden('#unread-pill'), true);
      assert.equal(await badge(p), '0');
    }
    // and the server agrees
    const row = await server.sql(`SELECT is_read FROM t_message_real_time WHERE id = '${id}'`);
    assert.equal(row, 't');
    await p1.close();
    await p2.close();
  });

  it('(c) after SIGKILL and restart on the same port and database, a message POSTed meanwhile shows up without a reload', { timeout: 120_000 }, async () => {
    const user = randomUser('c');
    const p1 = await openDemo(user);
    const p2 = await openDemo(user);
    const first = await server.send({ to_user: user, title: 'before the crash' });
    await waitItemUnread(p1, first.messages[0].id, 'true');
    await waitItemUnread(p2, first.messages[0].id, 'true');
    for (const p of [p1, p2]) await p.evaluate(() => { window.__sameDocument = true; });

    await server.kill();
    for (const p of [p1, p2]) {
      await p.waitForSelector('#status[data-state="closed"]', { timeout: 15_000 });
    }
    // Let the clients fail a few attempts against the dead port (backoff grows meanwhile).
    await sleep(1500);
    await server.start();
    const { messages } = await server.send({ to_user: user, title: 'while you were away', content: 'sent during the restart' });
    const id = messages[0].id;

    for (const p of [p1, p2]) {
      await waitLive(p, 45_000);
      await waitItemUnread(p, id, 'true', 15_000);
      assert.equal(await item(p, id).locator('.title').textContent(), 'while you were away');
      assert.equal(await p.evaluate(() => window.__sameDocument), true, 'the page was not reloaded');
      // no duplicates, both messages, badge counts both
      assert.equal(await p.locator('#list .item').count(), 2);
      await waitBadge(p, '2');
      const seq = await p.evaluate(() => window.notifydDemo.client.seq);
      assert.equal(seq, messages[0].seq);
    }
    await p1.close();
    await p2.close();
  });

  it('a graceful restart (SIGTERM) closes with 1012 and the page resumes with since', { timeout: 90_000 }, async () => {
    const user = randomUser('g');
    const p = await openDemo(user);
    await p.evaluate(() => {
      window.__closes = [];
      window.notifydDemo.client.on('status', (s) => { if (s.state === 'closed') window.__closes.push(s.code); });
    });
    await server.terminate();
    await p.waitForFunction(() => window.__closes.length > 0, null, { timeout: 15_000 });
    assert.equal(await p.evaluate(() => window.__closes[0]), 1012);
    await server.start();
    const { messages } = await server.send({ to_user: user, title: 'after a graceful restart' });
    await waitLive(p, 45_000);
    await waitItemUnread(p, messages[0].id, 'true', 15_000);
    await waitBadge(p, '1');
    await p.close();
  });

  it('(d) a <script> title renders as literal text and never runs', { timeout: 60_000 }, async () => {
    const user = randomUser('d');
    const p = await openDemo(user);
    const content = '<b>bold?</b> <a href="javascript:window.__pwned=3">link</a>';
    const { messages } = await server.send({ to_user: user, title: XSS_TITLE, content });
    const id = messages[0].id;
    const toast = p.locator(`#toasts .toast[data-id="${id}"]`);
    await toast.waitFor({ state: 'visible', timeout: 10_000 });
    assert.equal(await toast.locator('.t-title').textContent(), XSS_TITLE);
    await openBell(p);
    await waitItemUnread(p, id, 'true');
    assert.equal(await item(p, id).locator('.title').textContent(), XSS_TITLE);
    assert.equal(await item(p, id).locator('.content').textContent(), content);
    // nothing was parsed as markup
    assert.equal(await p.locator('#list img, #list script, #list b, #list a, #toasts img, #toasts script, #toasts b, #toasts a').count(), 0);
    // also after a reload (the same message now comes from the REST first page)
    await p.reload();
    await waitLive(p);
    await p.waitForSelector('body[data-loaded="true"]');
    assert.equal(await item(p, id).locator('.title').textContent(), XSS_TITLE);
    await sleep(500); // give an onerror handler every chance to fire
    assert.equal(await p.evaluate(() => typeof window.__pwned), 'undefined');
    await p.close();
  });

  it('(e) skip_url is followed on click when relative; a javascript: URL written around the API is not', { timeout: 60_000 }, async () => {
    const user = randomUser('e');

    // A javascript: URL can only get in around the API (the API refuses it).
    const refused = await fetch(`${server.baseUrl}/api/v1/messages`, {
      method: 'POST',
      headers: { Authorization: 'Bearer dev', 'Content-Type': 'application/json' },
      body: JSON.stringify({ to_user: user, title: 'x', skip_url: 'javascript:alert(1)' }),
    });
    assert.equal(refused.status, 422);
    const evil = await server.send({ to_user: user, title: 'evil link', skip_url: '/placeholder' });
    const evilId = evil.messages[0].id;
    await server.sql(`UPDATE t_message_real_time SET skip_url = 'javascript:alert(1)' WHERE id = '${evilId}'`);

    const p = await openDemo(user);
    const start = p.url();
    const errorsBefore = pageErrors.length;
    await openBell(p);
    await waitItemUnread(p, evilId, 'true');
    await item(p, evilId).click();
    await waitItemUnread(p, evilId, 'false'); // marked read, but not followed
    await sleep(800);
    assert.equal(p.url(), start);
    assert.equal(pageErrors.length, errorsBefore, `no dialog, no error: ${pageErrors.slice(errorsBefore)}`);

    // A relative skip_url is followed (after the read is recorded).
    const target = `/demo?user=${encodeURIComponent(user)}&from=notification#c3`;
    const good = await server.send({ to_user: user, title: 'Reply to your comment', skip_url: target });
    const goodId = good.messages[0].id;
    await waitItemUnread(p, goodId, 'true');
    await item(p, goodId).click();
    await p.waitForURL(`${server.baseUrl}${target}`, { timeout: 10_000 });
    const row = await server.sql(`SELECT is_read FROM t_message_real_time WHERE id = '${goodId}'`);
    assert.equal(row, 't');
    await p.close();
  });

  it('keyboard: Enter opens the bell, focus moves into the list, Escape closes and returns focus', { timeout: 60_000 }, async () => {
    const user = randomUser('k');
    await server.send({ to_user: user, title: 'first' });
    await server.send({ to_user: user, title: 'second' });
    const p = await openDemo(user);
    await p.focus('#bell');
    await p.keyboard.press('Enter');
    await p.waitForSelector('#panel:not([hidden])');
    assert.equal(await p.getAttribute('#bell', 'aria-expanded'), 'true');
    assert.equal(await p.evaluate(`(${DEEP_ACTIVE})()?.closest('.item')?.querySelector('.title')?.textContent`), 'second');
    await p.keyboard.press('ArrowDown');
    assert.equal(await p.evaluate(`(${DEEP_ACTIVE})()?.querySelector('.title')?.textContent`), 'first');
    await p.keyboard.press('Escape');
    await p.waitForSelector('#panel', { state: 'hidden' });
    assert.equal(await p.getAttribute('#bell', 'aria-expanded'), 'false');
    assert.equal(await p.evaluate(`(${DEEP_ACTIVE})()?.id`), 'bell');
    await p.close();
  });

  it('the sender form posts with the dev service key, and "mark all as read" clears the unread state', { timeout: 60_000 }, async () => {
    const user = randomUser('f');
    const p = await openDemo(user);
    await p.fill('input[name="title"]', 'Sent from the form');
    await p.fill('textarea[name="content"]', 'hello from the demo');
    await p.click('form.send button[type="submit"]');
    await p.waitForSelector('#toasts .toast', { timeout: 10_000 });
    await waitBadge(p, '1');
    await server.send({ to_user: user, title: 'another one' });
    await waitBadge(p, '2');
    await openBell(p);
    await waitBadge(p, '0');
    assert.equal(await p.locator('#list .item[data-unread="true"]').count(), 2);
    await p.click('#read-all');
    await p.waitForFunction(() => document.querySelector('notifyd-bell').shadowRoot.querySelectorAll('#list .item[data-unread="true"]').length === 0);
    assert.equal(await p.locator('#list .item').count(), 2);
    await p.close();
  });

  it('the client API against the real server: topics, a forbidden topic, commands, resume ahead of the stream = reset', { timeout: 60_000 }, async () => {
    const user = randomUser('api');
    await server.send({ to_user: user, title: 'one' });
    const p = await openDemo(user);
    // The demo token allows product:* and group:*.
    const result = await p.evaluate(async (baseUrl) => {
      const { NotifydClient } = await import('/client/notifyd-client.js');
      const getToken = async () => (await (await fetch(`/demo/token?user=${encodeURIComponent(new URLSearchParams(location.search).get('user'))}`)).json()).token;
      const out = {};
      const c = new NotifydClient({ getToken });
      const topics = [];
      c.on('topic', (t) => topics.push(t));
      const resets = [];
      c.on('reset', (r) => resets.push(r));
      c.connect();
      out.sub = await c.subscribe(['product:42']);
      out.forbidden = await c.subscribe(['secret:1']).then(() => 'resolved', (e) => e.code);
      await fetch(`${baseUrl}/api/v1/topics/product:42/events`, {
        method: 'POST', headers: { Authorization: 'Bearer dev', 'Content-Type': 'application/json' },
        body: JSON.stringify({ data: { stock: 3 } }),
      });
      const until = Date.now() + 10_000;
      while (!topics.length && Date.now() < until) await new Promise((r) => setTimeout(r, 50));
      out.topics = topics;
      out.seen = await c.markAllSeen();
      out.noop = await c.markRead(['00000000-0000-0000-0000-000000000000']);
      out.resets = resets;
      out.page = (await c.fetchPage({ limit: 1 })).messages.map((m) => m.title);
      c.close();
      // A client that resumes from a seq the server never reached (a restored database) is reset.
      const ahead = new NotifydClient({ getToken, since: 9999 });
      const reset = new Promise((r) => ahead.on('reset', r));
      ahead.connect();
      out.ahead = await reset;
      out.aheadSeq = ahead.seq;
      ahead.close();
      return out;
    }, server.baseUrl);
    assert.deepEqual(result.sub.topics, ['product:42']);
    assert.equal(result.forbidden, 'forbidden');
    assert.equal(result.topics.length, 1);
    assert.match(result.topics[0].id, /^[0-9a-f-]{36}$/);
    assert.deepEqual(result.topics, [
      { topic: 'product:42', id: result.topics[0].id, data: { stock: 3 }, from: null, retained: false },
    ]);
    assert.deepEqual(result.seen, { seq: 2, unread: 1, unseen: 0 });
    assert.deepEqual(result.noop, { seq: 2, unread: 1, unseen: 0 });
    assert.deepEqual(result.resets, [{ reason: 'initial', seq: 1, unread: 1, unseen: 1 }]);
    assert.deepEqual(result.page, ['one']);
    assert.equal(result.ahead.reason, 'server');
    assert.equal(result.aheadSeq, 2);
    await p.close();
  });

  it('without --dev there is no demo page and no token endpoint, but the client is served', { timeout: 60_000 }, async () => {
    const prod = new Notifyd({ dev: false });
    try {
      await prod.setup();
      assert.equal((await fetch(`${prod.baseUrl}/demo/token?user=42`)).status, 404);
      assert.equal((await fetch(`${prod.baseUrl}/demo`)).status, 404);
      const js = await fetch(`${prod.baseUrl}/client/notifyd-client.js`);
      assert.equal(js.status, 200);
      assert.match(js.headers.get('content-type'), /^text\/javascript/);
      assert.match(await js.text(), /export class NotifydClient/);
    } finally {
      await prod.teardown();
    }
  });

  it('no page errors', () => {
    assert.deepEqual(pageErrors, []);
  });
});

process.on('unhandledRejection', (e) => {
  console.error('# unhandled rejection', e);
  if (server) console.error(server.dumpLogs());
});
