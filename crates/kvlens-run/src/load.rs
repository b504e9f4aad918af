//! One load point of `kvlens load`: requests sent to one server on an open-loop schedule
//! (a slow server does not slow the arrivals), at most `max_concurrency` in flight, each
//! timed from its stream.
//!
//! Every request gets its own thread, started when its time comes: a request waiting on the
//! server (or on a slot under `--max-concurrency`) never delays the next one's start. The
//! dispatcher sleeps until each scheduled time; how late it woke is the client's own
//! lateness, kept apart from the wait for a slot, which requests take in schedule order.

use crate::remote::{Client, Reply, Request};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Condvar, Mutex};
use std::time::{Duration, Instant};

/// One request of the point, in schedule order.
#[derive(Debug, Clone)]
pub struct Job {
    pub request: Request,
    /// The chat prompt rendered here, for a chat prompt sent to `/completions`.
    pub rendered: Option<String>,
}

/// What happened to one request.
#[derive(Debug)]
pub struct Sent {
    /// Its place in the schedule.
    pub index: usize,
    /// Times in ms from the start of the point.
    pub scheduled_ms: f64,
    pub sent_ms: f64,
    pub late_ms: f64,
    pub slot_wait_ms: f64,
    /// When the answer was complete (or the request failed).
    pub done_ms: f64,
    pub reply: Result<Reply, String>,
}

/// Requests in flight and done, for a progress bar.
#[derive(Debug, Default)]
pub struct Progress {
    pub in_flight: AtomicUsize,
    pub done: AtomicUsize,
    pub failed: AtomicUsize,
}

/// A first-come-first-served semaphore: at most `limit` holders, admitted in ticket order
/// (the order the schedule sent them), as an asyncio semaphore admits vLLM's requests.
struct Slots {
    /// (tickets released so far, tickets handed out).
    state: Mutex<(usize, usize)>,
    cv: Condvar,
    limit: Option<usize>,
}

impl Slots {
    fn new(limit: Option<usize>) -> Self {
        Self {
            state: Mutex::new((0, 0)),
            cv: Condvar::new(),
            limit,
        }
    }
    /// The next ticket, in send order.
    fn ticket(&self) -> usize {
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        st.1 += 1;
        st.1 - 1
    }
    /// Waits until ticket `t` may go: fewer than `limit` of the tickets before it still hold
    /// a slot. Tickets are released in any order, so a slot frees for the oldest waiter.
    fn take(&self, t: usize) {
        let Some(limit) = self.limit else {
            return;
        };
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        while t >= st.0 + limit {
            st = self.cv.wait(st).unwrap_or_else(|p| p.into_inner());
        }
    }
    fn give(&self) {
        if self.limit.is_none() {
            return;
        }
        self.state.lock().unwrap_or_else(|p| p.into_inner()).0 += 1;
        self.cv.notify_all();
    }
}

/// Sends `jobs[i]` at `times[i]` seconds after the start (`times` ascending, as
/// [`crate::arrivals::schedule`] makes them), at most `max_concurrency` in flight, and hands
/// each outcome to `sink` on this thread as it completes. An error from `sink` (a record that
/// could not be written) stops further sends and is returned once the requests in flight end.
pub fn run_point(
    client: &Client,
    jobs: Vec<Job>,
    times: &[f64],
    max_concurrency: Option<usize>,
    progress: &Progress,
    sink: &mut dyn FnMut(Sent) -> std::result::Result<(), String>,
) -> std::result::Result<(), String> {
    if jobs.len() != times.len() {
        return Err(format!(
            "{} requests but {} send times",
            jobs.len(),
            times.len()
        ));
    }
    let slots = Slots::new(max_concurrency);
    let stop = AtomicBool::new(false);
    let start = Instant::now();
    let ms = |t: Instant| t.duration_since(start).as_secs_f64() * 1e3;
    std::thread::scope(|s| {
        let (tx, rx) = std::sync::mpsc::channel::<Sent>();
        let (slots, stop) = (&slots, &stop);
        s.spawn(move || {
            for (index, (job, &at)) in jobs.into_iter().zip(times).enumerate() {
                let due = start + Duration::from_secs_f64(at.max(0.0));
                let now = Instant::now();
                if due > now {
                    std::thread::sleep(due - now);
                }
                if stop.load(Ordering::SeqCst) {
                    break;
                }
                let woke = Instant::now();
                let ticket = slots.ticket();
                let late_ms = (ms(woke) - at * 1e3).max(0.0);
                let worker_tx = tx.clone();
                let failed_tx = tx.clone();
                let spawned = std::thread::Builder::new()
                    .stack_size(512 * 1024)
                    .spawn_scoped(s, move || {
                        slots.take(ticket);
                        let sent = Instant::now();
                        progress.in_flight.fetch_add(1, Ordering::SeqCst);
                        let reply = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                            client.complete(&job.request, job.rendered.as_deref())
                        }))
                        .unwrap_or_else(|_| Err("the request panicked".into()));
                        let done = Instant::now();
                        progress.in_flight.fetch_sub(1, Ordering::SeqCst);
                        slots.give();
                        let _ = worker_tx.send(Sent {
                            index,
                            scheduled_ms: at * 1e3,
                            sent_ms: ms(sent),
                            late_ms,
                            slot_wait_ms: ms(sent) - ms(woke),
                            done_ms: ms(done),
                            reply,
                        });
                    });
                if let Err(e) = spawned {
                    slots.give();
                    let now = ms(Instant::now());
                    let _ = failed_tx.send(Sent {
                        index,
                        scheduled_ms: at * 1e3,
                        sent_ms: now,
                        late_ms,
                        slot_wait_ms: 0.0,
                        done_ms: now,
                        reply: Err(format!("starting the request's thread: {e}")),
                    });
                }
            }
        });
        let mut first_err = None;
        for sent in rx {
            if sent.reply.is_err() {
                progress.failed.fetch_add(1, Ordering::SeqCst);
            }
            progress.done.fetch_add(1, Ordering::SeqCst);
            if first_err.is_none() {
                if let Err(e) = sink(sent) {
                    stop.store(true, Ordering::SeqCst);
                    first_err = Some(e);
                }
            }
        }
        first_err.map_or(Ok(()), Err)
    })
}
