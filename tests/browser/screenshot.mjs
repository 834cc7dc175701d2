// Regenerates the README's screenshots in docs/ with the browser tests' harness (a live notifyd,
// headless Chromium): demo-dropdown.png (the bell demo, <notifyd-bell>'s dropdown open on a few
// notifications, a toast arriving), bell-dark.png (the same in the dark theme) and
// demo-products.png (the live product page at 1200 px, as a newcomer first sees it). Needs what
// the browser tests need (see scripts/browser-test.sh); run:
//   NOTIFYD_BIN=target/debug/notifyd node tests/browser/screenshot.mjs [output dir]

import path from 'node:path';

import { Notifyd, launchBrowser, repoRoot } from './harness.mjs';

const outDir = path.resolve(process.argv[2] ?? path.join(repoRoot, 'docs'));
const user = '42';

const server = await new Notifyd().setup();
const browser = await launchBrowser();
try {
  const samples = [
    { title: 'Weekly report is ready', content: 'Your team closed 42 issues this week.', type: 'system', ago: '3 days' },
    { title: 'Alice left a review', content: '★★★★★ “Fast shipping and exactly as described.”', type: 'review', skip_url: '/reviews/7', ago: '2 hours' },
    { title: 'Carol mentioned you', content: '@you can you take a look at the release notes?', type: 'mention', skip_url: '/posts/12#c4', ago: '26 minutes', read: true },
    { title: 'Bob replied to your post', content: 'Looks great, ship it! I left two small comments on the diff.', type: 'comment', skip_url: '/posts/9#c3', ago: '2 minutes' },
  ];
  for (const s of samples) {
    const { messages } = await server.send({ to_user: user, title: s.title, content: s.content, type: s.type, send_user: '7', skip_url: s.skip_url });
    await server.sql(`UPDATE t_message_real_time SET send_time = now() - interval '${s.ago}' WHERE id = '${messages[0].id}'`);
    if (s.read) await server.sql(`UPDATE t_message_real_time SET is_read = true, read_at = now() WHERE id = '${messages[0].id}'`);
  }
  let follower = 18;
  for (const [scheme, file] of [['light', 'demo-dropdown.png'], ['dark', 'bell-dark.png']]) {
    const page = await browser.context.newPage();
    await page.emulateMedia({ colorScheme: scheme });
    await page.setViewportSize({ width: 1100, height: 720 });
    await page.goto(`${server.baseUrl}/demo?user=${user}`);
    await page.waitForSelector('#status[data-state="open"]');
    await page.waitForSelector('body[data-loaded="true"]');
    await page.click('#bell');
    await page.waitForSelector('#panel:not([hidden])');
    await page.waitForSelector('#badge', { state: 'hidden' });
    // One arrives live while the dropdown is open: toast, badge 1, new unread item on top.
    await server.send({ to_user: user, title: 'Dana started following you', content: `You have ${follower++} followers now.`, type: 'system', send_user: '9' });
    await page.waitForSelector('#toasts .toast');
    await page.waitForSelector('#badge:not([hidden])');
    await page.waitForTimeout(300);
    await page.evaluate(() => {
      let a = document.activeElement;
      while (a?.shadowRoot?.activeElement) a = a.shadowRoot.activeElement;
      a?.blur();
    });
    await page.screenshot({ path: path.join(outDir, file) });
    console.log(`wrote ${path.join(outDir, file)}`);
    await page.close();
  }

  const shop = await browser.context.newPage();
  await shop.setViewportSize({ width: 1200, height: 760 });
  await shop.goto(`${server.baseUrl}/demo/products`);
  await shop.waitForSelector('#status[data-state="open"]');
  await shop.waitForFunction(() => [...document.querySelectorAll('.stock')].every((s) => s.dataset.level !== 'unknown'));
  await shop.waitForTimeout(1200); // the arrival flash fades
  await shop.screenshot({ path: path.join(outDir, 'demo-products.png') });
  console.log(`wrote ${path.join(outDir, 'demo-products.png')}`);
  await shop.close();
} finally {
  await browser.close();
  await server.teardown();
}
