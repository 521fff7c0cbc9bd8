//! One byte budget for everything shadowing buffers: teed request bodies, the primary's captured
//! response, the candidate's (and the noise copy's) responses, and the exchanges queued for
//! comparison. Counting items bounds nothing (1,024 queued exchanges of 1 MiB each is a GiB);
//! counting bytes does. A copy that cannot get the bytes it needs is dropped and counted
//! (`dropped_memory`); the primary never waits for memory.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

/// The budget, shared by every shadow copy of the process.
#[derive(Debug)]
pub struct MemoryBudget {
    used: AtomicUsize,
    limit: usize,
}

impl MemoryBudget {
    pub fn new(limit: usize) -> Arc<Self> {
        Arc::new(Self {
            used: AtomicUsize::new(0),
            limit,
        })
    }

    /// Bytes held by reservations now.
    pub fn used(&self) -> usize {
        self.used.load(Ordering::Relaxed)
    }

    /// An empty reservation that can grow against this budget.
    pub fn reservation(self: &Arc<Self>) -> Reservation {
        Reservation {
            budget: Some(self.clone()),
            bytes: 0,
        }
    }

    fn take(&self, bytes: usize) -> bool {
        self.used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |used| {
                used.checked_add(bytes).filter(|total| *total <= self.limit)
            })
            .is_ok()
    }

    fn give_back(&self, bytes: usize) {
        self.used.fetch_sub(bytes, Ordering::AcqRel);
    }
}

/// Bytes held against the budget, given back when dropped.
#[derive(Debug, Default)]
pub struct Reservation {
    /// `None` for an unbounded reservation (tests, replay without a proxy).
    budget: Option<Arc<MemoryBudget>>,
    bytes: usize,
}

impl Reservation {
    /// Holds `bytes` more; `false` (and nothing held) when the budget has no room.
    #[must_use]
    pub fn grow(&mut self, bytes: usize) -> bool {
        match &self.budget {
            Some(budget) if !budget.take(bytes) => false,
            _ => {
                self.bytes += bytes;
                true
            }
        }
    }

    /// Makes room in `buffer` for `expected` bytes in all (a declared length), holding the new
    /// capacity against the budget before it is allocated; `false` (and nothing allocated) when
    /// the budget has no room.
    #[must_use]
    pub fn presize(&mut self, buffer: &mut Vec<u8>, expected: usize) -> bool {
        let extra = expected.saturating_sub(buffer.capacity());
        if extra == 0 {
            return true;
        }
        if !self.grow(extra) {
            return false;
        }
        buffer.reserve_exact(expected - buffer.len());
        true
    }

    /// Appends `data` to `buffer`. When the buffer must grow (doubling, as a `Vec` does, but not
    /// past `limit` unless `data` needs it), the new capacity is held against the budget first:
    /// what is counted is what the allocator holds, not just the bytes kept, which can be half
    /// of it. `false` (and nothing appended) when the budget has no room.
    #[must_use]
    pub fn append(&mut self, buffer: &mut Vec<u8>, data: &[u8], limit: usize) -> bool {
        let needed = buffer.len() + data.len();
        if needed > buffer.capacity() {
            let target = buffer.capacity().saturating_mul(2).min(limit).max(needed);
            if !self.presize(buffer, target) {
                return false;
            }
        }
        buffer.extend_from_slice(data);
        true
    }

    /// Takes over what `other` holds.
    pub fn absorb(&mut self, mut other: Reservation) {
        if self.budget.is_none() {
            self.budget = other.budget.take();
            self.bytes += std::mem::take(&mut other.bytes);
            return;
        }
        self.bytes += std::mem::take(&mut other.bytes);
    }

    pub fn bytes(&self) -> usize {
        self.bytes
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        if let Some(budget) = &self.budget
            && self.bytes > 0
        {
            budget.give_back(self.bytes);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reservations_stop_at_the_limit_and_give_back_on_drop() {
        let budget = MemoryBudget::new(100);
        let mut first = budget.reservation();
        assert!(first.grow(60));
        let mut second = budget.reservation();
        assert!(!second.grow(50), "60 + 50 is over 100");
        assert!(second.grow(40));
        assert_eq!(budget.used(), 100);
        first.absorb(second);
        assert_eq!(first.bytes(), 100);
        assert_eq!(
            budget.used(),
            100,
            "absorbing moves bytes, it does not add any"
        );
        drop(first);
        assert_eq!(budget.used(), 0);
    }

    #[test]
    fn buffers_are_counted_by_capacity_and_presized_exactly() {
        let budget = MemoryBudget::new(1000);
        let mut memory = budget.reservation();
        let mut buffer = Vec::new();
        assert!(memory.presize(&mut buffer, 300));
        assert_eq!((buffer.capacity(), budget.used()), (300, 300));
        for _ in 0..3 {
            assert!(memory.append(&mut buffer, &[1; 100], 900));
        }
        assert_eq!((buffer.capacity(), budget.used()), (300, 300), "no growth");
        // Growing doubles, but not past the limit; the growth is counted before it happens.
        assert!(memory.append(&mut buffer, &[1; 10], 500));
        assert_eq!((buffer.capacity(), budget.used()), (500, 500));
        assert!(memory.append(&mut buffer, &[1; 190], 500));
        assert!(
            !memory.append(&mut buffer, &[1; 600], 2000),
            "1,100 would pass 1,000"
        );
        assert_eq!((buffer.len(), budget.used()), (500, 500));
        drop(memory);
        assert_eq!(budget.used(), 0);
    }
}
