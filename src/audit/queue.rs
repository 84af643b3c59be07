//! The hand-off between request tasks and the audit writer thread.
//!
//! A bounded queue behind one mutex, built so the writer thread is woken as rarely as possible:
//! on a single busy CPU every wake-up of another thread is a context switch that costs more than
//! sealing a record. Jobs are *urgent* when someone waits for them (a commit before egress, a
//! flush, a control job) and *lazy* otherwise (the `net.req` that closes an exchange whose bytes
//! have already moved). The writer is signalled only when it is asleep and the first urgent job
//! arrives — everything queued while it writes or syncs rides along in its next batch — and a
//! lazy job never wakes it early: it waits at most [`LAZY_DELAY`] for company.

use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// Longest a lazy record waits in the queue before the writer goes to fetch it anyway.
pub const LAZY_DELAY: Duration = Duration::from_millis(5);

/// Why a job could not be queued.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Refused {
    Full,
    Closed,
}

/// What the writer is told when it asks for work.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Taken {
    /// Jobs were moved into the writer's buffer.
    Jobs,
    /// Nothing arrived before the deadline the writer gave.
    Timeout,
    /// Every sender is gone and nothing is left.
    Closed,
}

pub(super) struct Queue<J> {
    state: Mutex<State<J>>,
    wake: Condvar,
    capacity: usize,
}

struct State<J> {
    jobs: Vec<J>,
    /// An urgent job is queued: the writer must not wait for anything else.
    urgent: bool,
    /// When the oldest lazy job was queued (`None` while no lazy job waits).
    lazy_since: Option<Instant>,
    /// The writer is blocked on the condition variable and nobody has signalled it yet.
    sleeping: bool,
    /// Every sender is gone.
    closed: bool,
}

impl<J> Queue<J> {
    pub(super) fn new(capacity: usize) -> Self {
        Queue {
            state: Mutex::new(State {
                jobs: Vec::new(),
                urgent: false,
                lazy_since: None,
                sleeping: false,
                closed: false,
            }),
            wake: Condvar::new(),
            capacity,
        }
    }

    fn lock(&self) -> MutexGuard<'_, State<J>> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Queues a job; `urgent` ones get the writer going if it sleeps.
    pub(super) fn push(&self, job: J, urgent: bool) -> Result<(), Refused> {
        let mut state = self.lock();
        if state.closed {
            return Err(Refused::Closed);
        }
        if state.jobs.len() >= self.capacity {
            return Err(Refused::Full);
        }
        // A lazy job landing in an empty queue must still reach a writer that sleeps without a
        // deadline; it is woken once so it can start the lazy clock.
        let first_lazy = !urgent && state.lazy_since.is_none();
        state.jobs.push(job);
        if urgent {
            state.urgent = true;
        } else if first_lazy {
            state.lazy_since = Some(Instant::now());
        }
        if state.sleeping && (urgent || first_lazy) {
            state.sleeping = false;
            drop(state);
            self.wake.notify_one();
        }
        Ok(())
    }

    /// No more jobs will come: the writer drains what is queued and stops.
    pub(super) fn close(&self) {
        let mut state = self.lock();
        state.closed = true;
        state.sleeping = false;
        drop(state);
        self.wake.notify_one();
    }

    /// Blocks until there is work the writer should do now, or until `deadline` passes; the
    /// jobs are swapped into `into` (which must be empty), so both buffers keep their capacity.
    pub(super) fn take(&self, deadline: Option<Instant>, into: &mut Vec<J>) -> Taken {
        debug_assert!(into.is_empty());
        let mut state = self.lock();
        loop {
            let lazy_due = state.lazy_since.map(|t| t + LAZY_DELAY);
            let now = Instant::now();
            let ready = state.urgent
                || state.closed
                || lazy_due.is_some_and(|due| due <= now)
                || (!state.jobs.is_empty() && deadline.is_some_and(|d| d <= now));
            if ready && !state.jobs.is_empty() {
                state.urgent = false;
                state.lazy_since = None;
                std::mem::swap(&mut state.jobs, into);
                return Taken::Jobs;
            }
            if state.closed {
                return Taken::Closed;
            }
            if deadline.is_some_and(|d| d <= now) {
                return Taken::Timeout;
            }
            let until = match (lazy_due, deadline) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
            state.sleeping = true;
            state = match until {
                None => self.wake.wait(state).unwrap_or_else(|e| e.into_inner()),
                Some(until) => {
                    self.wake
                        .wait_timeout(state, until.saturating_duration_since(now))
                        .unwrap_or_else(|e| e.into_inner())
                        .0
                }
            };
            state.sleeping = false;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn urgent_jobs_are_taken_at_once_with_the_lazy_ones_before_them() {
        let q = Queue::new(8);
        q.push(1, false).unwrap();
        q.push(2, true).unwrap();
        let start = Instant::now();
        let mut jobs = Vec::new();
        assert_eq!(q.take(None, &mut jobs), Taken::Jobs);
        assert_eq!(jobs, vec![1, 2]);
        assert!(start.elapsed() < LAZY_DELAY, "an urgent job must not wait");
    }

    #[test]
    fn lazy_jobs_wait_for_the_lazy_delay_then_go() {
        let q = Queue::new(8);
        let start = Instant::now();
        q.push(7, false).unwrap();
        let mut jobs = Vec::new();
        assert_eq!(q.take(None, &mut jobs), Taken::Jobs);
        assert_eq!(jobs, vec![7]);
        assert!(start.elapsed() >= LAZY_DELAY);
    }

    #[test]
    fn a_sleeping_writer_is_woken_by_an_urgent_job_and_by_the_first_lazy_one() {
        for urgent in [true, false] {
            let q = Arc::new(Queue::new(8));
            let writer = {
                let q = q.clone();
                std::thread::spawn(move || {
                    let mut jobs = Vec::new();
                    q.take(None, &mut jobs);
                    jobs
                })
            };
            // Let the writer fall asleep without a deadline first.
            while !q.lock().sleeping {
                std::thread::yield_now();
            }
            q.push(3, urgent).unwrap();
            assert_eq!(writer.join().unwrap(), vec![3], "urgent={urgent}");
        }
    }

    #[test]
    fn a_full_queue_refuses_and_a_closed_one_drains_then_ends() {
        let q = Queue::new(2);
        q.push(1, false).unwrap();
        q.push(2, false).unwrap();
        assert_eq!(q.push(3, true), Err(Refused::Full));
        q.close();
        assert_eq!(q.push(4, true), Err(Refused::Closed));
        let mut jobs = Vec::new();
        assert_eq!(q.take(None, &mut jobs), Taken::Jobs);
        assert_eq!(jobs, vec![1, 2]);
        jobs.clear();
        assert_eq!(q.take(None, &mut jobs), Taken::Closed);
    }

    #[test]
    fn concurrent_producers_lose_nothing_and_keep_their_order() {
        const PRODUCERS: usize = 4;
        const EACH: usize = 5_000;
        let q = Arc::new(Queue::new(PRODUCERS * EACH));
        let writer = {
            let q = q.clone();
            std::thread::spawn(move || {
                let (mut seen, mut jobs) = (Vec::new(), Vec::new());
                loop {
                    match q.take(None, &mut jobs) {
                        Taken::Jobs => seen.append(&mut jobs),
                        Taken::Closed => return seen,
                        Taken::Timeout => unreachable!("no deadline was given"),
                    }
                }
            })
        };
        let producers: Vec<_> = (0..PRODUCERS)
            .map(|p| {
                let q = q.clone();
                std::thread::spawn(move || {
                    for i in 0..EACH {
                        // Mostly lazy, now and then one somebody waits for.
                        q.push((p, i), i % 7 == 0).unwrap();
                    }
                })
            })
            .collect();
        for p in producers {
            p.join().unwrap();
        }
        q.close();
        let seen = writer.join().unwrap();
        assert_eq!(seen.len(), PRODUCERS * EACH);
        for p in 0..PRODUCERS {
            let mine: Vec<usize> = seen.iter().filter(|j| j.0 == p).map(|j| j.1).collect();
            assert_eq!(mine, (0..EACH).collect::<Vec<_>>(), "producer {p}");
        }
    }

    #[test]
    fn an_empty_queue_times_out_at_the_deadline() {
        let q: Queue<u8> = Queue::new(2);
        let deadline = Instant::now() + Duration::from_millis(20);
        assert_eq!(q.take(Some(deadline), &mut Vec::new()), Taken::Timeout);
        assert!(Instant::now() >= deadline);
    }
}
