// Type declarations of notifyd-bell.js (`<notifyd-bell>`), written by hand to match it.
// Importing the module defines the element. docs/bell.md documents attributes, parts and theming.

import type { NotifydClient, NotifydMessage } from './notifyd-client.js';

export { NotifydClient } from './notifyd-client.js';

export interface NotifydBellClickDetail {
  message: NotifydMessage;
  /** the absolute URL the bell will open (skip_url through safeUrl), or null */
  url: string | null;
}

/**
 * `<notifyd-bell server="https://notifyd.example.com">`, started by setting `getToken`.
 *
 * Attributes: `server` (notifyd's base URL; default the page's origin), `count` (`unseen`, the
 * default, or `unread`: what the badge counts), `page-size` (1 to 100, default 20), `theme`
 * (`light` or `dark`; default follows prefers-color-scheme), `align` (`left`: the dropdown opens
 * to the right of the button), `no-toasts`. Reflected by the element: `state` (`connecting`,
 * `open`, `closed`), `open` (the dropdown is open), `loaded` (the first page is in).
 *
 * Events: `notifyd-loaded`, `notifyd-open`, `notifyd-close`, and `notifyd-click` (cancelable:
 * cancel it to navigate with your own router).
 */
export class NotifydBell extends HTMLElement {
  /**
   * A function returning a user JWT, or a Promise of one; setting it starts the bell. `null`
   * (logout) stops it and forgets the session: connection, messages, counts, toasts. Another
   * function (another user) starts afresh.
   */
  getToken: (() => string | Promise<string>) | null;
  /** The client the bell runs on; set it (before `getToken`) to share your own connected client. */
  client: NotifydClient | null;
  /** The dropdown is open. */
  readonly open: boolean;
  /** The messages the dropdown holds, newest first (at most {@link MAX_MESSAGES}). */
  readonly messages: NotifydMessage[];
  toggle(): void;
  show(): void;
  hide(): void;
  markRead(ids: string[]): Promise<unknown> | undefined;
  markAllRead(): Promise<unknown> | undefined;
  archive(ids: string[]): Promise<unknown> | undefined;
  /** Loads the next older page (what scrolling to the end of the list does). */
  loadOlder(): Promise<void>;
}

/** The most messages the dropdown holds (the newest). */
export const MAX_MESSAGES: 500;

/** "just now", "5 min ago", "yesterday", ... */
export function relTime(iso: string, now?: number): string;

export default NotifydBell;

declare global {
  interface HTMLElementTagNameMap {
    'notifyd-bell': NotifydBell;
  }
  interface HTMLElementEventMap {
    'notifyd-loaded': CustomEvent<{ count: number }>;
    'notifyd-open': CustomEvent<null>;
    'notifyd-close': CustomEvent<null>;
    'notifyd-click': CustomEvent<NotifydBellClickDetail>;
  }
}
