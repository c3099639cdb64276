//! Requests paused until keys arrive: a bounded queue, oldest first.

use std::collections::VecDeque;

/// Most requests held per root context; past it, requests are answered at once.
pub const MAX_HELD: usize = 1_024;
/// Longest a request is held (ms); then it is decided with the keys at hand (fail closed).
pub const HOLD_MAX_MS: u64 = 10_000;

/// A paused request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Held {
    /// Its HTTP context.
    pub context_id: u32,
    /// When it was first held (ms).
    pub since_ms: u64,
}

/// The queue.
#[derive(Debug, Default)]
pub struct HoldQueue {
    held: VecDeque<Held>,
}

impl HoldQueue {
    /// Holds a request; false when the queue is full (the request must be answered now).
    pub fn push(&mut self, held: Held) -> bool {
        if self.held.len() >= MAX_HELD {
            return false;
        }
        self.held.push_back(held);
        true
    }

    /// Every held request, emptying the queue.
    pub fn take_all(&mut self) -> Vec<Held> {
        self.held.drain(..).collect()
    }

    /// Requests held for `HOLD_MAX_MS` or longer.
    pub fn take_expired(&mut self, now_ms: u64) -> Vec<Held> {
        let (old, young): (Vec<Held>, Vec<Held>) = self
            .held
            .drain(..)
            .partition(|h| now_ms.saturating_sub(h.since_ms) >= HOLD_MAX_MS);
        self.held = young.into();
        old
    }

    /// Forgets a request whose stream ended.
    pub fn forget(&mut self, context_id: u32) {
        self.held.retain(|h| h.context_id != context_id);
    }

    #[cfg(test)]
    /// How many are held.
    pub fn len(&self) -> usize {
        self.held.len()
    }

    #[cfg(test)]
    /// Whether none is held.
    pub fn is_empty(&self) -> bool {
        self.held.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounded_and_expiring() {
        let mut queue = HoldQueue::default();
        for i in 0..MAX_HELD {
            assert!(queue.push(Held {
                context_id: i as u32,
                since_ms: i as u64
            }));
        }
        assert!(!queue.push(Held {
            context_id: 9_999,
            since_ms: 0
        }));
        let expired = queue.take_expired(HOLD_MAX_MS + 1);
        assert_eq!(expired.len(), 2);
        assert_eq!(queue.len(), MAX_HELD - 2);
        queue.forget(5);
        assert_eq!(queue.len(), MAX_HELD - 3);
        assert_eq!(queue.take_all().len(), MAX_HELD - 3);
        assert!(queue.is_empty());
    }
}
