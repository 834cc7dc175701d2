// Regenerates docs/demo-dropdown.png: the demo page with the bell's dropdown open on a few
// notifications. Needs what the browser tests need (see scripts/browser-test.sh); run:
//   node tests/browser/screenshot.mjs [output.png]

import path from 'node:path';

import { Notifyd, launchBrowser, repoRoot } from './harness.mjs';

const out = path.resolve(process.argv[2] ?? path.join(repoRoot, 'docs', 'demo-dropdown.png'));
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
  const page = await browser.context.newPage();
  await page.setViewportSize({ width: 1100, height: 720 });
  await page.goto(`${server.baseUrl}/demo?user=${user}`);
  await page.waitForSelector('#status[data-state="open"]');
  await page.waitForSelector('body[data-loaded="true"]');
  await page.click('#bell');
  await page.waitForSelector('#panel:not([hidden])');
  await page.waitForSelector('#badge', { state: 'hidden' });
  // One arrives live while the dropdown is open: toast, badge 1, new unread item on top.
  await server.send({ to_user: user, title: 'Dana started following you', content: 'You have 18 followers now.', type: 'system', send_user: '9' });
  await page.waitForSelector('#toasts .toast');
  await page.waitForSelector('#badge:not([hidden])');
  await page.waitForTimeout(300);
  await page.evaluate(() => document.activeElement?.blur());
  await page.screenshot({ path: out });
  console.log(`wrote ${out}`);
} finally {
  await browser.close();
  await server.teardown();
}
