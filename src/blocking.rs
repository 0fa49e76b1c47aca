//! Work run off the runtime's threads, on tokio's blocking pool, that
//! survives the system refusing a thread.
//!
//! `tokio::task::spawn_blocking` queues its work, then panics when the
//! system refuses a thread and the pool has none left (they leave after
//! 10 s idle): under a thread limit (`ulimit -u`, `LimitNPROC=`, a
//! container's `pids.max`) the caller's task died with it, and the work
//! stayed queued, holding what it held, until some later call made a
//! thread. A password verification held its worker slot so, and every
//! login after it waited for that slot, after the limit had gone too; a
//! reload's task died and with it every later reload (probe 351).
//!
//! [`run`] catches that panic: the caller is told ([`NoThread`]) and can
//! answer at once, the queued work is called off (it runs nothing when a
//! thread takes it: a reload asked for once ran seven times; probe 353),
//! and a task of its own retries a thread every [`RETRY`] until the system
//! gives one. Until then [`run`] refuses at once, without queuing (see
//! [`refusing`]).

use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

/// The system refused the thread the work needed; the work is queued and
/// runs once a thread can be made.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NoThread;

impl std::fmt::Display for NoThread {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("the system refused a thread (a limit on threads or processes, or memory)")
    }
}

/// How often a refused thread is asked for again.
pub const RETRY: Duration = Duration::from_millis(500);

/// Whether the system refused a thread and has not given one since: work
/// is then refused at once (see [`run`]).
pub fn refusing() -> bool {
    KICKING.load(Ordering::Acquire)
}

/// A task is asking for a thread again (see [`kick`]).
static KICKING: AtomicBool = AtomicBool::new(false);

/// Runs `work` on the blocking pool and waits for it: `Err(NoThread)` at
/// once when the system refuses the thread it needs, or has refused one
/// and given none since (`work` is then dropped, not run; what it holds
/// is dropped when a thread takes it, so a caller that must have it back
/// at once keeps it where it can take it, as a login's verification
/// does); `None` in the `Ok` when `work` panicked.
///
/// # Errors
/// [`NoThread`], as said.
pub async fn run<F, R>(work: F) -> Result<Option<R>, NoThread>
where
    F: FnOnce() -> R + Send + 'static,
    R: Send + 'static,
{
    if refusing() {
        return Err(NoThread);
    }
    let live = std::sync::Arc::new(AtomicBool::new(true));
    let called = live.clone();
    let queued = move || called.load(Ordering::Acquire).then(work);
    match std::panic::catch_unwind(AssertUnwindSafe(|| tokio::task::spawn_blocking(queued))) {
        Ok(handle) => Ok(handle.await.ok().flatten()),
        Err(_) => {
            live.store(false, Ordering::Release);
            kick();
            Err(NoThread)
        }
    }
}

/// `work` run by `tokio::task::block_in_place`, on this worker thread once
/// its other tasks are handed to another thread; or, when the system
/// refuses that thread (tokio then panics in the middle of the handing,
/// before `work` runs), run here all the same, holding up this thread's
/// tasks meanwhile, and `kick` retries a thread. The handing was half
/// done: the tasks wait in the queued handing, which runs once a thread of
/// the pool is free, as this one is when the task yields. Uncaught, the
/// caller's task died with the panic, unlogged (probe 357: 5 of 160 RSA
/// handshakes, where another process took the thread slot between a look
/// for room and the handing). `what` the work is, for
/// the log. Needs a multi-threaded runtime.
pub fn block_in_place<T>(what: &str, work: impl FnOnce() -> T) -> T {
    let mut work = Some(work);
    let handed = std::panic::catch_unwind(AssertUnwindSafe(|| {
        tokio::task::block_in_place(|| work.take().map(|work| work()))
    }));
    match (handed, work.take()) {
        (Ok(Some(done)), _) => done,
        // Refused before `work` ran (the panic hook wrote nothing for it).
        (Err(panic), Some(work)) => {
            if panic_message(panic.as_ref()).starts_with(NO_THREAD_PANIC) {
                tracing::error!("{NoThread}: {what} made on a runtime thread");
                kick();
            }
            work()
        }
        // `work` panicked: as it would have without the catch.
        (Err(panic), None) => std::panic::resume_unwind(panic),
        (Ok(None), work) => work.map_or_else(|| unreachable!("work taken and not run"), |work| work()),
    }
}

/// A panic's message, when it has one.
fn panic_message(payload: &(dyn std::any::Any + Send)) -> &str {
    payload
        .downcast_ref::<&str>()
        .copied()
        .or_else(|| payload.downcast_ref::<String>().map(String::as_str))
        .unwrap_or("(no message)")
}

/// Until the system gives a thread again: one task, whatever the number of
/// refusals, that tries a plain thread every [`RETRY`] (a failure there
/// does not panic) and, once one is made, has the blocking pool make one,
/// which takes the work queued meanwhile.
fn kick() {
    if KICKING.swap(true, Ordering::AcqRel) {
        return;
    }
    let Ok(runtime) = tokio::runtime::Handle::try_current() else {
        KICKING.store(false, Ordering::Release);
        return;
    };
    runtime.spawn(async {
        loop {
            tokio::time::sleep(RETRY).await;
            let probe = std::thread::Builder::new().name("authgate-probe".into()).spawn(|| {});
            let Ok(probe) = probe else { continue };
            let _ = probe.join();
            let made = std::panic::catch_unwind(|| tokio::task::spawn_blocking(|| ()));
            if made.is_ok() {
                KICKING.store(false, Ordering::Release);
                tracing::info!("threads can be made again");
                return;
            }
        }
    });
}

/// The start of tokio's panic message when the system refuses a thread.
const NO_THREAD_PANIC: &str = "OS can't spawn worker thread";

/// Installs a panic hook that writes a panic to the log too (it went to
/// standard error alone, which a log file does not hold; probe 351), and
/// writes nothing for the refused threads [`run`] and [`block_in_place`]
/// catch and log themselves (tokio's message for each, with its backtrace).
pub fn log_panics() {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let message = panic_message(info.payload());
        if message.starts_with(NO_THREAD_PANIC) {
            return;
        }
        let at = info.location().map(|l| format!("{}:{}", l.file(), l.line())).unwrap_or_default();
        tracing::error!(at = &*at, "panic (a bug): {message}");
        default(info);
    }));
}

/// Whether `n` threads can be made at once now (they end at once after):
/// a look before building a tokio runtime, which panics in the middle of
/// the build when the system refuses one of its threads.
pub fn room_for_threads(n: usize) -> bool {
    let mut held = Vec::with_capacity(n);
    for _ in 0..n {
        let (release, wait) = std::sync::mpsc::channel::<()>();
        match std::thread::Builder::new().name("authgate-probe".into()).spawn(move || {
            let _ = wait.recv();
        }) {
            Ok(thread) => held.push((release, thread)),
            Err(_) => break,
        }
    }
    let room = held.len() == n;
    for (release, thread) in held {
        drop(release);
        let _ = thread.join();
    }
    room
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A few threads can be had here; the look leaves none behind.
    #[test]
    fn room_for_threads_makes_and_ends_them() {
        assert!(room_for_threads(4));
        assert!(room_for_threads(0));
    }

    /// Work is run off the runtime where tokio can hand this thread's tasks
    /// on; where tokio panics before it runs (here a single-threaded
    /// runtime, which has no thread to hand them to, as a refused thread
    /// leaves none), it is run here all the same; and its own panic is
    /// passed on.
    #[test]
    fn block_in_place_runs_the_work_whether_or_not_tokio_can_hand_over() {
        let multi = tokio::runtime::Builder::new_multi_thread().worker_threads(1).build().unwrap();
        assert_eq!(
            multi.block_on(async { tokio::spawn(async { block_in_place("7", || 7) }).await.unwrap() }),
            7
        );
        let single = tokio::runtime::Builder::new_current_thread().build().unwrap();
        assert_eq!(single.block_on(async { block_in_place("8", || 8) }), 8);
        let panicked = std::panic::catch_unwind(|| {
            multi.block_on(async { block_in_place("a bug", || panic!("a bug")) })
        });
        assert!(panicked.is_err());
    }

    /// Work that runs is waited for; work that panics is `Ok(None)`.
    #[tokio::test]
    async fn run_waits_for_the_work() {
        assert_eq!(run(|| 7).await, Ok(Some(7)));
        let panicked: Result<Option<()>, NoThread> = run(|| panic!("a bug")).await;
        assert_eq!(panicked, Ok(None));
    }
}
