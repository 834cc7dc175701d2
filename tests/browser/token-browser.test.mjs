// Token lifetime in real headless Chromium against a real notifyd (`serve --dev`): a page whose
// getToken hands out tokens living a few seconds (5 s, refreshed ~2.5 s before exp) stays
// connected and keeps receiving across several expiries (in-band `auth` refresh); with the
// refresh off, the server's 4001 at each expiry brings an immediate reconnect that resumes with
// `since`, and nothing is lost or doubled.
// Run: scripts/browser-test.sh (or, with the binary built and chromium installed: node --test tests/browser/).

import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';

import { Notifyd, launchBrowser, randomUser, sleep } from './harness.mjs';
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
 * Opens a page on the notifyd origin running a NotifydClient for `user` whose getToken mints
 * tokens valid for `ttl` seconds; everything it reports is kept in `window.__log`.
 */
async function openClient(user, { ttl, refreshToken }) {
  const page = await browser.context.newPage();
  const pageErrors = [];
  page.on('pageerror', (e) => pageErrors.push(e.message));
  let minted = 0;
  await page.exposeFunction('mintToken', () => {
    minted += 1;
    return mintToken(user, ttl);
  });
  await page.goto(`${server.baseUrl}/healthz`);
  await page.evaluate(
    async ({ refreshToken }) => {
      const { NotifydClient } = await import('/client/notifyd-client.js');
      const log = { statuses: [], tokens: [], messages: [], errors: [], resets: [] };
      window.__log = log;
      const client = new NotifydClient({
        getToken: () => window.mintToken(),
        refreshToken,
        backoffBaseMs: 200,
        backoffMaxMs: 2000,
      });
      client.on('status', (s) => log.statuses.push(s));
      client.on('token', (t) => log.tokens.push(t));
      client.on('message', (m) => log.messages.push({ id: m.message.id, seq: m.seq, replayed: m.replayed }));
      client.on('reset', (r) => log.resets.push(r));
      client.on('error', (e) => log.errors.push(e));
      window.__client = client;
      client.connect();
    },
    { refreshToken },
  );
  await page.waitForFunction(() => window.__client.state === 'open', null, { timeout: 15_000 });
  return { page, pageErrors, minted: () => minted, log: () => page.evaluate(() => window.__log) };
}

/** POSTs `n` messages to `user`, one every `everyMs`; returns their ids in order. */
async function trickle(user, n, everyMs) {
  const ids = [];
  for (let i = 0; i < n; i++) {
    const { messages } = await server.send({ to_user: user, title: `tick ${i}`, content: '', type: 'system' });
    ids.push(messages[0].id);
    await sleep(everyMs);
  }
  return ids;
}

async function waitMessages(page, n) {
  await page.waitForFunction((want) => window.__log.messages.length >= want, n, { timeout: 20_000 });
}

describe('token lifetime in Chromium', { timeout: 180_000 }, () => {
  it('with 5 s tokens a page stays on one socket and keeps receiving across several expiries', { timeout: 60_000 }, async () => {
    const user = randomUser('tok');
    const ttl = 5;
    const { page, pageErrors, minted, log } = await openClient(user, { ttl, refreshToken: true });
    const started = Date.now();
    const ids = await trickle(user, 12, 1500);
    await waitMessages(page, ids.length);
    const elapsed = (Date.now() - started) / 1000;
    assert.ok(elapsed > 3 * ttl, `ran ${elapsed} s: several token lifetimes`);
    const l = await log();
    assert.deepEqual(l.messages.map((m) => m.id), ids, 'every message once, in order');
    assert.ok(l.messages.every((m) => !m.replayed), 'all live, none replayed after a reconnect');
    assert.equal(l.statuses.filter((s) => s.state === 'open').length, 1, `one socket all along: ${JSON.stringify(l.statuses)}`);
    assert.ok(!l.statuses.some((s) => s.state === 'closed'), `never closed: ${JSON.stringify(l.statuses)}`);
    const refreshes = l.tokens.filter((t) => t.source === 'refresh');
    assert.ok(refreshes.length >= 3, `refreshed in-band at least 3 times: ${JSON.stringify(l.tokens)}`);
    // The socket outlived the token it was opened with by several lifetimes.
    assert.ok(refreshes.at(-1).exp >= l.tokens[0].exp + 2 * ttl, JSON.stringify(l.tokens));
    assert.ok(minted() >= 4);
    assert.deepEqual(l.errors, []);
    assert.deepEqual(pageErrors, []);
    await page.close();
  });

  it('with the refresh off, each expiry closes the socket with 4001 and the page reconnects at once, missing nothing', { timeout: 60_000 }, async () => {
    const user = randomUser('exp');
    const ttl = 3;
    const { page, pageErrors, log } = await openClient(user, { ttl, refreshToken: false });
    const ids = await trickle(user, 12, 1000);
    await waitMessages(page, ids.length);
    const l = await log();
    assert.deepEqual(l.messages.map((m) => m.id), ids, 'every message once, in order');
    const expired = l.statuses.filter((s) => s.state === 'closed' && s.code === 4001);
    assert.ok(expired.length >= 2, `closed with 4001 at least twice: ${JSON.stringify(l.statuses)}`);
    // No backoff after 4001 (except when two came within a second, which cannot happen with 3 s tokens).
    assert.ok(expired.every((s) => s.retryInMs === 0), JSON.stringify(expired));
    assert.ok(l.statuses.filter((s) => s.state === 'open').length >= expired.length + 1);
    assert.equal(l.resets.length, 1, 'only the initial reset: each reconnect resumed with since');
    assert.equal(l.tokens.filter((t) => t.source === 'refresh').length, 0);
    assert.deepEqual(pageErrors, []);
    await page.close();
  });
});
