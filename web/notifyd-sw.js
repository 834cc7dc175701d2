// notifyd's service worker for Web Push (contract §10): shows each push as a notification and,
// on a click, focuses or opens the notification's `skip_url` (through `safeUrl`, the client's
// rule: only relative or http(s) links, never `javascript:`).
//
// A service worker controls only its own origin: serve this file (and notifyd-client.js beside
// it) from the app's origin and register it as a module:
//   navigator.serviceWorker.register('/notifyd-sw.js', { type: 'module' })
// then subscribe with the key of GET /api/v1/push/key and POST the subscription to
// /api/v1/me/push-subscriptions (docs/push.md).
import { safeUrl } from './notifyd-client.js';

self.addEventListener('push', (event) => {
  let p = {};
  try {
    p = event.data ? event.data.json() : {};
  } catch {
    p = { title: event.data ? event.data.text() : '' };
  }
  const title = typeof p.title === 'string' && p.title !== '' ? p.title : 'New notification';
  event.waitUntil(
    self.registration.showNotification(title, {
      body: typeof p.content === 'string' ? p.content : '',
      // One notification per message: a repeat replaces, never stacks.
      tag: typeof p.id === 'string' ? `notifyd-${p.id}` : undefined,
      data: { skip_url: p.skip_url ?? null, id: p.id ?? null, seq: p.seq ?? null },
    }),
  );
});

self.addEventListener('notificationclick', (event) => {
  event.notification.close();
  const url = safeUrl(event.notification.data?.skip_url, self.registration.scope) ?? self.registration.scope;
  event.waitUntil(
    (async () => {
      const open = await self.clients.matchAll({ type: 'window', includeUncontrolled: true });
      for (const c of open) {
        if (c.url === url && 'focus' in c) return c.focus();
      }
      return self.clients.openWindow(url);
    })(),
  );
});
