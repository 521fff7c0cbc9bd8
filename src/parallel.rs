//! A reload's per-route work split over the machine's cores, with results in input order.
//!
//! Compiling a big routes file is one thread's work otherwise, and most of it is per route and
//! independent (mostly each path regex's syntax check). The proxy's workers idle between
//! requests meanwhile, so a 10,000-route reload goes live sooner on every core. An ordinary
//! file stays on the calling thread: a thread costs more than a few hundred routes.
//!
//! Reading each route's section out of the parsed YAML tree was tried the same way and was
//! slower: the tree is built on one thread, and freeing its parts on another cost more than
//! the split saved (docs/performance.md).
//!
//! This module owns only the split; what is computed per item, and how results are joined, is
//! the caller's.

/// Items per thread below which another thread is not worth starting.
pub const MIN_ITEMS_PER_THREAD: usize = 1_000;

/// How many threads share `items` items: one per [`MIN_ITEMS_PER_THREAD`], at most one per core
/// this process may run on, at least one.
pub fn threads_for(items: usize) -> usize {
    let cores = std::thread::available_parallelism().map_or(1, usize::from);
    (items / MIN_ITEMS_PER_THREAD).clamp(1, cores)
}

/// `f(index, item)` for every item, on `threads` threads each taking a contiguous run, the
/// calling thread one of them; the results in the items' order, exactly as one thread would
/// give them. A panic in `f` is resumed on the calling thread.
pub fn map_in_order<T, R, F>(items: Vec<T>, threads: usize, f: F) -> Vec<R>
where
    T: Send,
    R: Send,
    F: Fn(usize, T) -> R + Sync,
{
    let run = |start: usize, run: Vec<T>| -> Vec<R> {
        run.into_iter()
            .enumerate()
            .map(|(offset, item)| f(start + offset, item))
            .collect()
    };
    if threads <= 1 || items.len() < 2 {
        return run(0, items);
    }
    let chunk = items.len().div_ceil(threads);
    let mut runs = Vec::with_capacity(threads);
    let mut rest = items.into_iter();
    loop {
        let next: Vec<T> = rest.by_ref().take(chunk).collect();
        if next.is_empty() {
            break;
        }
        runs.push(next);
    }
    let mut runs = runs.into_iter();
    let first = runs.next().unwrap_or_default();
    std::thread::scope(|scope| {
        let run = &run;
        let others: Vec<_> = runs
            .enumerate()
            .map(|(number, items)| scope.spawn(move || run((number + 1) * chunk, items)))
            .collect();
        // This thread takes the first run rather than waiting idle.
        let mut results = run(0, first);
        for other in others {
            match other.join() {
                Ok(more) => results.extend(more),
                Err(panic) => std::panic::resume_unwind(panic),
            }
        }
        results
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn results_come_back_in_input_order_with_their_indexes_whatever_the_thread_count() {
        let items: Vec<u32> = (0..1_003).collect();
        let expected: Vec<(usize, u32)> = items.iter().map(|&i| (i as usize, i * 3)).collect();
        for threads in [0, 1, 2, 3, 7, 1_003, 5_000] {
            let got = map_in_order(items.clone(), threads, |index, item| (index, item * 3));
            assert_eq!(got, expected, "{threads} threads");
        }
        assert!(map_in_order(Vec::<u8>::new(), 4, |_, item| item).is_empty());
    }

    #[test]
    fn a_panic_on_another_thread_reaches_the_caller() {
        let caught = std::panic::catch_unwind(|| {
            map_in_order((0..100).collect(), 4, |index, _: i32| {
                assert_ne!(index, 90, "item 90 is bad");
            })
        });
        assert!(caught.is_err());
    }

    #[test]
    fn a_small_file_stays_on_one_thread_and_a_big_one_spreads_over_the_cores() {
        assert_eq!(threads_for(0), 1);
        assert_eq!(threads_for(MIN_ITEMS_PER_THREAD - 1), 1);
        let cores = std::thread::available_parallelism().map_or(1, usize::from);
        assert_eq!(threads_for(100 * MIN_ITEMS_PER_THREAD), cores.min(100));
    }
}
