//! Acknowledgements (`received`) from this node's live sessions, batched: each user's highest
//! acknowledged seq waits here and a flush writes them all in one statement
//! (`store::push::record_received`) every `FLUSH_EVERY`, far inside `NOTIFYD_PUSH_DELAY`. A
//! session sends one per user frame it handed to its app; one statement per flush keeps that
//! from becoming a database write per event.

use std::collections::HashMap;
use std::time::Duration;

use parking_lot::Mutex;

/// How often acknowledgements reach the database (a push waits at least 1 s, the smallest
/// `NOTIFYD_PUSH_DELAY`; 10 s by default). A flush with nothing waiting costs nothing.
pub const FLUSH_EVERY: Duration = Duration::from_millis(200);
/// Users whose acknowledgements may wait on one node; more are dropped (counted) until the
/// next flush: a push they would have prevented may then go out.
pub const MAX_WAITING: usize = 100_000;

#[derive(Default)]
pub struct Receipts {
    waiting: Mutex<HashMap<String, i64>>,
}

impl Receipts {
    /// `user`'s session handed every event up to `seq` to its app.
    pub fn note(&self, user: &str, seq: i64) {
        let mut w = self.waiting.lock();
        if let Some(s) = w.get_mut(user) {
            *s = (*s).max(seq);
        } else if w.len() < MAX_WAITING {
            w.insert(user.to_string(), seq);
        } else {
            metrics::counter!("notifyd_push_receipts_dropped_total").increment(1);
        }
    }

    /// Everything waiting, for a flush.
    pub fn take(&self) -> (Vec<String>, Vec<i64>) {
        std::mem::take(&mut *self.waiting.lock())
            .into_iter()
            .unzip()
    }

    /// A flush failed: what it held waits again (merged with what came since).
    pub fn put_back(&self, users: Vec<String>, seqs: Vec<i64>) {
        for (u, s) in users.into_iter().zip(seqs) {
            self.note(&u, s);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_user_keeps_their_highest_seq_until_taken() {
        let r = Receipts::default();
        r.note("a", 3);
        r.note("a", 2);
        r.note("b", 1);
        let (mut users, seqs) = r.take();
        let mut pairs: Vec<(String, i64)> = users.drain(..).zip(seqs).collect();
        pairs.sort();
        assert_eq!(pairs, vec![("a".into(), 3), ("b".into(), 1)]);
        assert_eq!(r.take().0.len(), 0);
    }
}
