//! A map over a slice split across the machine's cores, with results in the slice's order.
//!
//! This module owns only the split: one thread per [`MIN_ITEMS_PER_THREAD`] items, at most one
//! per core. What is computed per item, and how results are joined, is the caller's. Its user
//! is the route compiler (`routing::compile`): a big routes file is otherwise one thread's work,
//! and most of it is per route and independent (mostly each path regex's syntax check), while
//! the proxy's workers idle between requests. An ordinary file stays on the calling thread,
//! because a thread costs more than a few hundred routes.
//!
//! Reading each route's section out of the parsed YAML tree was tried the same way and was
//! slower: the tree is built on one thread, and freeing its parts on another cost more than
//! the split saved (docs/performance.md).

/// Items per thread below which another thread is not worth starting.
pub const MIN_ITEMS_PER_THREAD: usize = 1_000;

/// How many threads share `items` items: one per whole [`MIN_ITEMS_PER_THREAD`], at most one
/// per core this process may run on (`taskset` and cgroup limits count), at least one.
pub fn threads_for(items: usize) -> usize {
    let wanted = items / MIN_ITEMS_PER_THREAD;
    if wanted <= 1 {
        // An ordinary file: no need to ask how many cores there are (std reads the cgroup's
        // files for that on every call).
        return 1;
    }
    wanted.min(std::thread::available_parallelism().map_or(1, usize::from))
}

/// `f(index, item)` for every item, on `threads` threads each taking a contiguous run, the
/// calling thread one of them; the results in the items' order, exactly as one thread would
/// give them. A panic in `f` is resumed on the calling thread.
pub fn map_in_order<T, R, F>(items: &[T], threads: usize, f: F) -> Vec<R>
where
    T: Sync,
    R: Send,
    F: Fn(usize, &T) -> R + Sync,
{
    let map_run = |start: usize, run: &[T]| -> Vec<R> {
        run.iter()
            .enumerate()
            .map(|(offset, item)| f(start + offset, item))
            .collect()
    };
    if threads <= 1 || items.len() < 2 {
        return map_run(0, items);
    }
    let chunk = items.len().div_ceil(threads);
    let (first, rest) = items.split_at(chunk.min(items.len()));
    std::thread::scope(|scope| {
        let map_run = &map_run;
        let others: Vec<_> = rest
            .chunks(chunk)
            .enumerate()
            .map(|(number, run)| scope.spawn(move || map_run((number + 1) * chunk, run)))
            .collect();
        // This thread takes the first run rather than waiting idle.
        let mut results = map_run(0, first);
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
        let items: Vec<u32> = (0..23).collect();
        let expected: Vec<(usize, u32)> = items.iter().map(|&i| (i as usize, i * 3)).collect();
        // Runs of one item each, uneven last runs, more threads than items.
        for threads in [0, 1, 2, 3, 7, 22, 23, 40] {
            let got = map_in_order(&items, threads, |index, item| (index, item * 3));
            assert_eq!(got, expected, "{threads} threads");
        }
        assert!(map_in_order(&[] as &[u8], 4, |_, item| *item).is_empty());
    }

    #[test]
    fn a_panic_on_another_thread_reaches_the_caller_with_its_message() {
        let items: Vec<usize> = (0..20).collect();
        let caught = std::panic::catch_unwind(|| {
            map_in_order(&items, 4, |index, _| {
                assert_ne!(index, 18, "item 18 is bad")
            })
        })
        .expect_err("the panic is resumed");
        let message = caught
            .downcast_ref::<String>()
            .expect("a formatted panic message");
        assert!(message.contains("item 18 is bad"), "{message}");
    }

    #[test]
    fn a_small_file_stays_on_one_thread_and_a_big_one_spreads_over_the_cores() {
        let cores = std::thread::available_parallelism().map_or(1, usize::from);
        assert_eq!(threads_for(0), 1);
        assert_eq!(threads_for(2 * MIN_ITEMS_PER_THREAD - 1), 1);
        assert_eq!(threads_for(2 * MIN_ITEMS_PER_THREAD), cores.min(2));
        assert_eq!(threads_for(100 * MIN_ITEMS_PER_THREAD), cores.min(100));
    }
}
