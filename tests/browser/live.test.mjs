// The live cases in real headless Chromium against a real notifyd (`serve --dev`): the product page
// (web/products.html) as an anonymous viewer of public topics, and the group room on the bell demo.

import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';

import { Notifyd, SERVICE_KEY, launchBrowser, randomUser } from './harness.mjs';

let server;
let browser;
const pageErrors = [];

before(async () => {
  // `serve --dev` makes product:* public unless NOTIFYD_PUBLIC_TOPICS says otherwise.
  server = await new Notifyd().setup();
  browser = await launchBrowser();
});

after(async () => {
  await browser?.close();
  await server?.teardown();
});

async function newPage(label) {
  const page = await browser.context.newPage();
  page.on('pageerror', (e) => pageErrors.push(`${label}: ${e.message}`));
  return page;
}

async function openProducts(label, query = '') {
  const page = await newPage(label);
  await page.goto(`${server.baseUrl}/demo/products${query}`);
  await page.waitForSelector('#status[data-state="open"]', { timeout: 15_000 });
  return page;
}

const stock = (page, id) => page.locator(`[data-testid="stock-${id}"]`);

async function waitText(page, testid, text, timeout = 10_000) {
  await page.waitForFunction(
    ([id, want]) => document.querySelector(`[data-testid="${id}"]`)?.textContent === want,
    [testid, text],
    { timeout },
  );
}

/** What a shop backend does: a retained event on the product's topic, with the service key. */
async function setStock(id, stockLevel, price) {
  const res = await fetch(`${server.baseUrl}/api/v1/topics/product:${id}/events`, {
    method: 'POST',
    headers: { 'Content-Type': 'application/json', Authorization: `Bearer ${SERVICE_KEY}` },
    body: JSON.stringify({ data: { stock: stockLevel, price }, retain: true }),
  });
  const text = await res.text();
  assert.equal(res.status, 202, text);
  return JSON.parse(text);
}

describe('live product page (anonymous viewers of public topics)', () => {
  it('shows a stock change made on another page without a reload', async () => {
    const shopper = await openProducts('shopper');
    const admin = await openProducts('admin');
    // The "backend" control on one page POSTs the change; the other page shows it live.
    await admin.fill('[data-testid="set-stock-2"]', '3');
    await admin.click('[data-testid="change-2"]');
    await waitText(shopper, 'stock-2', 'In stock: 3');
    await waitText(admin, 'stock-2', 'In stock: 3');
    // The page was not reloaded: it still has its client object and one navigation.
    assert.equal(await shopper.evaluate(() => performance.getEntriesByType('navigation').length), 1);
    await admin.fill('[data-testid="set-stock-2"]', '0');
    await admin.click('[data-testid="change-2"]');
    await waitText(shopper, 'stock-2', 'Out of stock');
    await shopper.close();
    await admin.close();
  });

  it('gets the retained stock at once on opening, without a token', async () => {
    await setStock(4, 17, 42.5);
    const page = await openProducts('late visitor');
    await waitText(page, 'stock-4', 'In stock: 17', 5_000);
    await waitText(page, 'price-4', '$42.50', 5_000);
    // No token was ever asked for: the page never called /demo/token.
    const asked = await page.evaluate(() =>
      performance.getEntriesByType('resource').some((e) => e.name.includes('/demo/token')),
    );
    assert.equal(asked, false);
    await page.close();
  });

  it('re-subscribes when paging: page 2 shows its own live products, page 1 products stop', async () => {
    await setStock(8, 5, 30);
    const page = await openProducts('pager');
    await page.click('#next');
    await waitText(page, 'page', 'Page 2 of 2');
    await waitText(page, 'stock-8', 'In stock: 5', 5_000);
    await setStock(9, 2, 12);
    await waitText(page, 'stock-9', 'In stock: 2');
    // The page-1 subscription was dropped: only page 2's topics are held now.
    const topics = await page.evaluate(() => [...window.notifydProducts.client._topics].sort());
    assert.deepEqual(topics, ['product:10', 'product:11', 'product:12', 'product:7', 'product:8', 'product:9']);
    await page.close();
  });
});

describe('the product demo as a newcomer first sees it', () => {
  it('a fresh server: every product on both pages shows its stock and price before anyone changes one', { timeout: 60_000 }, async () => {
    const fresh = await new Notifyd().setup();
    const page = await newPage('newcomer');
    try {
      for (const n of [1, 2]) {
        await page.goto(`${fresh.baseUrl}/demo/products?page=${n}`);
        await page.waitForSelector('#status[data-state="open"]', { timeout: 15_000 });
        const ids = await page.$$eval('article.product', (cards) => cards.map((c) => c.dataset.testid.slice('product-'.length)));
        assert.equal(ids.length, 6);
        for (const id of ids) {
          await page.waitForFunction(
            (i) => {
              const stockText = document.querySelector(`[data-testid="stock-${i}"]`)?.textContent ?? '';
              const price = document.querySelector(`[data-testid="price-${i}"]`)?.textContent ?? '';
              return /^(In stock: \d+|Out of stock)$/.test(stockText) && /^\$\d+\.\d\d$/.test(price);
            },
            id,
            { timeout: 10_000 },
          );
        }
      }
    } finally {
      await page.close();
      await fresh.teardown();
    }
  });

  it('at 1200 px every card holds its "Change stock" button and stock input', { timeout: 30_000 }, async () => {
    const page = await openProducts('layout');
    await page.setViewportSize({ width: 1200, height: 800 });
    const out = await page.$$eval('article.product', (cards) => cards.flatMap((card) => {
      const c = card.getBoundingClientRect();
      return [...card.querySelectorAll('button, input')].map((el) => {
        const b = el.getBoundingClientRect();
        const inside = b.left >= c.left - 0.5 && b.right <= c.right + 0.5 && b.top >= c.top - 0.5 && b.bottom <= c.bottom + 0.5;
        return inside ? null : `${el.dataset.testid}: [${b.left}, ${b.right}] outside card [${c.left}, ${c.right}]`;
      }).filter(Boolean);
    }));
    assert.deepEqual(out, []);
    assert.ok((await page.locator('article.product button').count()) >= 6);
    // and the input and its button do not overlap
    const overlaps = await page.$$eval('article.product .backend', (rows) => rows.filter((row) => {
      const i = row.querySelector('input').getBoundingClientRect();
      const b = row.querySelector('button').getBoundingClientRect();
      return i.right > b.left && i.left < b.right && i.bottom > b.top && i.top < b.bottom;
    }).length);
    assert.equal(overlaps, 0);
    await page.close();
  });
});

describe('group room on the bell demo', () => {
  it('a post from one page appears in the other with the right sender', async () => {
    const alice = randomUser('alice');
    const bob = randomUser('bob');
    const group = `g${Date.now()}`;
    const pages = [];
    for (const user of [alice, bob]) {
      const page = await newPage(user);
      await page.goto(`${server.baseUrl}/demo?user=${encodeURIComponent(user)}`);
      await page.waitForSelector('#status[data-state="open"]', { timeout: 15_000 });
      await page.fill('#group-id', group);
      await page.click('#join');
      await page.waitForFunction(
        (g) => document.getElementById('group-state').textContent === `Joined group:${g}`,
        group,
      );
      pages.push(page);
    }
    const [alicePage, bobPage] = pages;
    await alicePage.fill('#group-text', 'hello from alice');
    await alicePage.click('#post');
    for (const page of pages) {
      await page.waitForSelector('#group-posts li.post', { timeout: 10_000 });
      const post = await page.$eval('#group-posts li.post', (li) => ({
        from: li.querySelector('.from').textContent,
        text: li.textContent,
      }));
      assert.equal(post.from, alice);
      assert.equal(post.text, `${alice}: hello from alice`);
    }
    await bobPage.fill('#group-text', 'hi alice');
    await bobPage.click('#post');
    await alicePage.waitForFunction(() => document.querySelectorAll('#group-posts li.post').length === 2);
    const second = await alicePage.$$eval('#group-posts li.post .from', (els) => els.map((e) => e.textContent));
    assert.deepEqual(second, [alice, bob]);
    for (const page of pages) await page.close();
  });

  it('no page threw', () => {
    assert.deepEqual(pageErrors, []);
  });
});
