//! The one queue primitive of the socket edge: a bounded, byte-accounted FIFO with one waiting
//! consumer, filled without waiting by any number of producers. A session's outbound queue
//! (`outbound`) and a user actor's mailbox (`mailbox`) are both this, with their own rules for
//! what fits and their own state beside the items, kept under the same lock.
//!
//! Why not a channel: a node holds one of these per socket and one per connected user, nearly
//! all idle. A tokio channel keeps its first block of 32 slots and its cache-padded state
//! (~1 KiB) for its whole life; this one is a few words while empty: its `VecDeque` grows on
//! demand and is given back once drained. And a producer must learn, in the same critical
//! section, whether the item fit (a full outbound queue is a slow consumer, a full mailbox a
//! `busy`), which a channel's `try_send` answers only for a fixed count of slots, not bytes.
//!
//! The lock is `parking_lot`'s: held for a few instructions, never across an `.await`, and with
//! no poisoning to recover from (a panic while holding it cannot leave the queue half-changed:
//! every change below is a single push, pop or assignment).

use std::collections::VecDeque;
use std::sync::Arc;

use parking_lot::{Mutex, MutexGuard};
use tokio::sync::Notify;

/// A handle on one queue: clone it for each producer; one consumer waits with `changed`.
pub struct Queue<T, S> {
    shared: Arc<Shared<T, S>>,
}

impl<T, S> Clone for Queue<T, S> {
    fn clone(&self) -> Self {
        Queue {
            shared: self.shared.clone(),
        }
    }
}

/// The queue itself (what a `Queue` handle points to); `Queue` derefs to it.
pub struct Shared<T, S> {
    inner: Mutex<Inner<T, S>>,
    /// Wakes the consumer. One waiter; `notify_one` keeps a permit while the consumer is busy,
    /// so no wake-up is lost between its last look and its next wait.
    wake: Notify,
}

/// What the lock guards: the items, the bytes they account for, and the owner's state.
pub struct Inner<T, S> {
    items: VecDeque<T>,
    bytes: usize,
    pub state: S,
}

impl<T, S> Queue<T, S> {
    pub fn new(state: S) -> Self {
        Queue {
            shared: Arc::new(Shared {
                inner: Mutex::new(Inner {
                    items: VecDeque::new(),
                    bytes: 0,
                    state,
                }),
                wake: Notify::new(),
            }),
        }
    }

    /// The shared queue itself, for a handle of another type (a `dyn` listener) that needs
    /// no allocation of its own.
    pub fn arc(&self) -> Arc<Shared<T, S>> {
        self.shared.clone()
    }
}

impl<T, S> std::ops::Deref for Queue<T, S> {
    type Target = Shared<T, S>;
    fn deref(&self) -> &Shared<T, S> {
        &self.shared
    }
}

impl<T, S> Shared<T, S> {
    /// The queue, locked. Keep the guard for a decision and its change, never across an await.
    pub fn lock(&self) -> MutexGuard<'_, Inner<T, S>> {
        self.inner.lock()
    }

    /// Tells the consumer to look (after a push or a change of state, with the lock released).
    pub fn wake(&self) {
        self.wake.notify_one();
    }

    /// The consumer only: resolves once something was pushed or changed since it last looked.
    pub async fn changed(&self) {
        self.wake.notified().await
    }
}

impl<T, S> Inner<T, S> {
    /// Items waiting.
    pub fn len(&self) -> usize {
        self.items.len()
    }

    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    /// Bytes accounted for the items waiting (what `push` was told each weighs).
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Appends `item`, accounting `bytes` for it. The caller has decided that it fits.
    pub fn push(&mut self, item: T, bytes: usize) {
        self.bytes += bytes;
        self.items.push_back(item);
    }

    /// Takes the oldest item, given back with the bytes that `weight` says it was accounted
    /// for. A queue that drains gives its slots back: most queues are empty most of the time,
    /// and a few words per socket times every socket is what an idle node holds.
    pub fn pop(&mut self, weight: impl FnOnce(&T) -> usize) -> Option<T> {
        let item = self.items.pop_front()?;
        self.bytes -= weight(&item);
        if self.items.is_empty() {
            self.items = VecDeque::new();
        }
        Some(item)
    }

    /// Takes every item out (to be dropped by the caller after the lock is released).
    pub fn take_all(&mut self) -> VecDeque<T> {
        self.bytes = 0;
        std::mem::take(&mut self.items)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bytes_follow_what_is_pushed_and_popped_and_a_drained_queue_gives_its_slots_back() {
        let q: Queue<&str, ()> = Queue::new(());
        {
            let mut g = q.lock();
            g.push("hello", 5);
            g.push("hi", 2);
            assert_eq!((g.len(), g.bytes()), (2, 7));
            assert_eq!(g.pop(|s| s.len()), Some("hello"));
            assert_eq!(g.bytes(), 2);
            assert_eq!(g.pop(|s| s.len()), Some("hi"));
            assert_eq!((g.len(), g.bytes()), (0, 0));
            assert_eq!(g.items.capacity(), 0, "drained: slots given back");
            assert_eq!(g.pop(|s| s.len()), None);
        }
    }

    #[tokio::test]
    async fn a_wake_before_the_consumer_waits_is_not_lost() {
        let q: Queue<u8, ()> = Queue::new(());
        q.lock().push(1, 0);
        q.wake();
        tokio::time::timeout(std::time::Duration::from_secs(5), q.changed())
            .await
            .expect("the permit kept by notify_one wakes the next wait");
    }

    #[test]
    fn an_empty_queue_is_a_few_words() {
        // The handle is one pointer; what it points to (lock, deque, counters, waker list) is
        // what every idle socket and every connected user holds.
        assert_eq!(
            std::mem::size_of::<Queue<u64, ()>>(),
            std::mem::size_of::<usize>()
        );
        assert!(std::mem::size_of::<Shared<u64, (bool, bool)>>() <= 96);
    }
}
