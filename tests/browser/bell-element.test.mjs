// <notifyd-bell> (web/notifyd-bell.js) on a page of another origin than notifyd (contract §10
// "Drop-in UI", §7 CORS): the page imports the element from notifyd's /client/, the element
// imports the client next to it and talks to notifyd cross-origin. Badge count, dropdown, mark
// read, archive, infinite scroll, keyboard only, and axe-core (zero serious or critical
// violations, dropdown closed and open, light and dark). Run: scripts/browser-test.sh

import assert from 'node:assert/strict';
import { readFile } from 'node:fs/promises';
import { createRequire } from 'node:module';
import { after, before, describe, it } from 'node:test';

import { Notifyd, launchBrowser, randomUser } from './harness.mjs';
import { appServer } from './cross-origin.mjs';

const require = createRequire(import.meta.url);

let server;
let app;
let browser;
let axeSource;
const pageErrors = [];

/** An app's page: a button before the bell (for Tab), the bell, a token from the app's backend. */
function elementPage(notifydUrl) {
  return `<!doctype html>
<html lang="en">
<head><meta charset="utf-8"><title>An app with a notifyd bell</title></head>
<body>
<header>
  <button id="before" type="button">Home</button>
  <notifyd-bell id="nb" server="${notifydUrl}"></notifyd-bell>
</header>
<main><h1>An app</h1><p>Its bell comes from another origin.</p></main>
<script>
  // ?early=1: getToken set before the element's module has loaded (as frameworks may do).
  const early = new URLSearchParams(location.search);
  if (early.get('early')) {
    document.getElementById('nb').getToken = async () =>
      (await (await fetch('/demo/token?user=' + encodeURIComponent(early.get('user')))).json()).token;
  }
</script>
<script type="module">
  import '${notifydUrl}/client/notifyd-bell.js';
  const q = new URLSearchParams(location.search);
  const bell = document.getElementById('nb');
  for (const a of ['count', 'page-size', 'theme']) if (q.get(a)) bell.setAttribute(a, q.get(a));
  bell.addEventListener('notifyd-loaded', () => { document.body.dataset.loaded = 'true'; });
  if (!q.get('early')) bell.getToken = async () => {
    const r = await fetch('/demo/token?user=' + encodeURIComponent(q.get('user')));
    return (await r.json()).token;
  };
</script>
</body>
</html>`;
}

before(async () => {
  app = await appServer();
  server = await new Notifyd({ env: { NOTIFYD_ALLOWED_ORIGINS: app.origin } }).setup();
  app.notifydUrl = server.baseUrl;
  app.page = elementPage(server.baseUrl);
  browser = await launchBrowser();
  axeSource = await readFile(require.resolve('axe-core/axe.min.js'), 'utf8');
});

after(async () => {
  await browser?.close();
  await app?.close();
  await server?.teardown();
});

async function openApp(user, query = '') {
  const page = await browser.context.newPage();
  page.on('pageerror', (e) => pageErrors.push(`${user}: ${e.message}`));
  await page.goto(`${app.origin}/bell.html?user=${encodeURIComponent(user)}${query}`);
  await page.waitForSelector('notifyd-bell[state="open"]', { state: 'attached', timeout: 15_000 });
  await page.waitForSelector('body[data-loaded="true"]', { timeout: 10_000 });
  return page;
}

/** The badge as a user sees it: its text, or '0' when hidden. */
const badge = (page) => page.$eval('notifyd-bell', (b) => {
  const el = b.shadowRoot.querySelector('[part="badge"]');
  return el.hidden ? '0' : el.textContent;
});

async function waitBadge(page, want, timeout = 10_000) {
  await page.waitForFunction((w) => {
    const el = document.querySelector('notifyd-bell').shadowRoot.querySelector('[part="badge"]');
    return (el.hidden ? '0' : el.textContent) === w;
  }, want, { timeout });
}

/** The focused element, through shadow roots. */
const deepActive = (page) => page.evaluate(() => {
  let a = document.activeElement;
  while (a?.shadowRoot?.activeElement) a = a.shadowRoot.activeElement;
  return { id: a?.id ?? null, cls: a?.className ?? null, inPanel: !!a?.closest?.('#panel'), tag: a?.tagName ?? null };
});

const titles = (page) => page.$$eval('notifyd-bell', ([b]) =>
  [...b.shadowRoot.querySelectorAll('#list .item .title')].map((t) => t.textContent));

async function axe(page) {
  if (!(await page.evaluate(() => typeof window.axe === 'object'))) await page.addScriptTag({ content: axeSource });
  const violations = await page.evaluate(async () => {
    const r = await window.axe.run(document, { resultTypes: ['violations'] });
    return r.violations.map((v) => ({ id: v.id, impact: v.impact, nodes: v.nodes.map((n) => n.target.join(' ')).slice(0, 3) }));
  });
  return violations.filter((v) => v.impact === 'serious' || v.impact === 'critical');
}

describe('<notifyd-bell> on another origin than notifyd', { timeout: 300_000 }, () => {
  it('badge shows the unseen count of messages created through the service API; the dropdown lists them; opening marks them seen', { timeout: 60_000 }, async () => {
    const user = randomUser('el');
    const page = await openApp(user);
    assert.notEqual(new URL(page.url()).origin, server.baseUrl);
    assert.equal(await badge(page), '0');
    for (const t of ['one', 'two', 'three']) await server.send({ to_user: user, title: t, content: `${t} body` });
    await waitBadge(page, '3');
    assert.match(await page.getAttribute('#bell', 'aria-label'), /\b3\b/);
    // a toast per message, in a polite live region
    await page.waitForFunction(() => document.querySelector('notifyd-bell').shadowRoot.querySelectorAll('#toasts .toast').length === 3);
    assert.equal(await page.getAttribute('#toasts', 'aria-live'), 'polite');

    await page.click('#bell');
    await page.waitForSelector('#panel:not([hidden])');
    assert.equal(await page.getAttribute('#bell', 'aria-expanded'), 'true');
    assert.deepEqual(await titles(page), ['three', 'two', 'one']);
    await waitBadge(page, '0');
    assert.equal(await page.getAttribute('#bell', 'aria-label'), 'Notifications');
    assert.deepEqual(pageErrors, []);
    await page.close();
  });

  it('a getToken set on the element before its module loaded still starts it', { timeout: 60_000 }, async () => {
    const user = randomUser('early');
    await server.send({ to_user: user, title: 'waiting for you' });
    const page = await openApp(user, '&early=1');
    await waitBadge(page, '1');
    assert.equal(await page.evaluate(() => Object.hasOwn(document.getElementById('nb'), 'getToken')), false);
    await page.close();
  });

  it('count="unread": mark read, archive and mark all read update the badge', { timeout: 60_000 }, async () => {
    const user = randomUser('ur');
    const ids = [];
    for (const t of ['first', 'second', 'third']) ids.push((await server.send({ to_user: user, title: t })).messages[0].id);
    const page = await openApp(user, '&count=unread');
    await waitBadge(page, '3');
    await page.click('#bell');
    await page.waitForSelector('#panel:not([hidden])');
    await waitBadge(page, '3'); // opening marks seen, not read

    await page.locator(`#list .item[data-id="${ids[2]}"]`).click();
    await page.waitForSelector(`#list .item[data-id="${ids[2]}"][data-unread="false"]`, { state: 'attached' });
    await waitBadge(page, '2');
    assert.match(await page.getAttribute('#bell', 'aria-label'), /\b2\b/);
    assert.equal(await server.sql(`SELECT is_read FROM t_message_real_time WHERE id = '${ids[2]}'`), 't');

    await page.locator(`#list .archive[data-id="${ids[1]}"]`).click();
    await page.waitForSelector(`#list .item[data-id="${ids[1]}"]`, { state: 'detached' });
    await waitBadge(page, '1');
    assert.deepEqual(await titles(page), ['third', 'first']);
    // archived: out of the REST inbox, listed with ?archived=true
    const listed = await page.evaluate(async () => {
      const c = document.querySelector('notifyd-bell').client;
      return (await c.fetchPage({ limit: 20 })).messages.map((m) => m.title);
    });
    assert.deepEqual(listed, ['third', 'first']);

    await page.click('#read-all');
    await waitBadge(page, '0');
    assert.equal(await page.locator('#list .item[data-unread="true"]').count(), 0);
    // a read from elsewhere (REST, another tab) reaches the badge too
    const more = (await server.send({ to_user: user, title: 'fourth' })).messages[0].id;
    await waitBadge(page, '1');
    await page.evaluate((id) => document.querySelector('notifyd-bell').client.markRead([id]), more);
    await waitBadge(page, '0');
    assert.deepEqual(pageErrors, []);
    await page.close();
  });

  it('infinite scroll: scrolling the dropdown loads older pages over REST until all are listed', { timeout: 90_000 }, async () => {
    const user = randomUser('is');
    for (let i = 1; i <= 25; i++) await server.send({ to_user: user, title: `message ${i}` });
    const page = await openApp(user, '&page-size=10');
    await page.click('#bell');
    await page.waitForSelector('#panel:not([hidden])');
    const count = () => page.locator('#list .item').count();
    assert.ok((await count()) <= 20, 'not everything at once');
    // Scroll to the end until nothing more comes (each page arrives when its footer shows).
    const deadline = Date.now() + 20_000;
    while ((await count()) < 25 && Date.now() < deadline) {
      await page.locator('#scroller').evaluate((s) => { s.scrollTop = s.scrollHeight; });
      await page.waitForTimeout(100);
    }
    assert.equal(await count(), 25);
    const all = await titles(page);
    assert.equal(all[0], 'message 25');
    assert.equal(all[24], 'message 1');
    assert.equal(new Set(all).size, 25);
    await page.close();
  });

  it('keyboard only: Tab reaches the button, Enter/Space open, focus stays in the dropdown, Escape closes and returns focus', { timeout: 60_000 }, async () => {
    const user = randomUser('kb');
    for (const t of ['alpha', 'beta']) await server.send({ to_user: user, title: t });
    const page = await openApp(user);
    await page.keyboard.press('Tab');
    assert.equal((await deepActive(page)).id, 'before');
    await page.keyboard.press('Tab');
    assert.equal((await deepActive(page)).id, 'bell');

    await page.keyboard.press('Enter');
    await page.waitForSelector('#panel:not([hidden])');
    let a = await deepActive(page);
    assert.ok(a.inPanel, `focus moved into the dropdown: ${JSON.stringify(a)}`);
    // Tab and Shift+Tab cycle inside the open dropdown (2 items + 2 archive buttons + mark all read)
    for (let i = 0; i < 12; i++) {
      await page.keyboard.press(i % 3 === 2 ? 'Shift+Tab' : 'Tab');
      a = await deepActive(page);
      assert.ok(a.inPanel, `Tab ${i} left the dropdown: ${JSON.stringify(a)}`);
    }
    await page.keyboard.press('Escape');
    await page.waitForSelector('#panel', { state: 'hidden' });
    assert.equal((await deepActive(page)).id, 'bell');
    assert.equal(await page.getAttribute('#bell', 'aria-expanded'), 'false');

    await page.keyboard.press('Space');
    await page.waitForSelector('#panel:not([hidden])');
    assert.ok((await deepActive(page)).inPanel);
    // Enter on a notification marks it read
    await page.keyboard.press('Enter');
    await page.waitForFunction(() => document.querySelector('notifyd-bell').client.counts?.unread === 1);
    await page.keyboard.press('Escape');
    await page.waitForSelector('#panel', { state: 'hidden' });
    assert.equal((await deepActive(page)).id, 'bell');
    await page.close();
  });

  it('axe-core: no serious or critical violations, dropdown closed and open, light and dark', { timeout: 90_000 }, async () => {
    const user = randomUser('ax');
    for (const t of ['Bob replied to your post', 'Weekly report is ready']) {
      await server.send({ to_user: user, title: t, content: 'Looks great, ship it!', type: 'comment', skip_url: '/posts/9' });
    }
    for (const scheme of ['light', 'dark']) {
      const page = await browser.context.newPage();
      await page.emulateMedia({ colorScheme: scheme });
      await page.goto(`${app.origin}/bell.html?user=${encodeURIComponent(user)}`);
      await page.waitForSelector('body[data-loaded="true"]', { timeout: 15_000 });
      await server.send({ to_user: user, title: `A toast in ${scheme}`, content: 'live' });
      await page.waitForSelector('#toasts .toast');
      assert.deepEqual(await axe(page), [], `${scheme}, closed`);
      await page.click('#bell');
      await page.waitForSelector('#panel:not([hidden])');
      await page.waitForTimeout(100);
      assert.deepEqual(await axe(page), [], `${scheme}, open`);
      await page.close();
    }
  });
});
