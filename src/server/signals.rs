//! SIGTERM and SIGINT for `authgate run`: the first starts the graceful
//! shutdown, a second one ends the process at once (status 1), once what is
//! still open has been closed and logged. SIGHUP is the reload's
//! ([`listen_for_hangup`](crate::server::reload::listen_for_hangup)).

use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};
use std::time::Duration;

use crate::State;

/// How `run` ends: [`RUNNING`] until a second SIGTERM or SIGINT is acted
/// on ([`INTERRUPTED`]: the exit status is 1) or the shutdown is over
/// ([`EXITING`]), whichever comes first.
static EXIT: AtomicU8 = AtomicU8::new(RUNNING);
const RUNNING: u8 = 0;
const INTERRUPTED: u8 = 1;
const EXITING: u8 = 2;

/// Resolves on SIGTERM or SIGINT; a second signal exits at once, once what
/// is still open has been closed and logged (for half a second at most).
pub async fn shutdown_signal(state: Arc<State>) {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (signal(SignalKind::terminate()), signal(SignalKind::interrupt()))
    else {
        tracing::error!("cannot install signal handlers; stop with SIGKILL");
        return std::future::pending().await;
    };
    tokio::select! {
        _ = term.recv() => {},
        _ = int.recv() => {},
    }
    tokio::spawn(async move {
        tokio::select! {
            _ = term.recv() => {},
            _ = int.recv() => {},
        }
        // Acted on only while the shutdown is not over, and said only then:
        // `run`, which may end the process first, then exits with status 1
        // too (see [`interrupted`]).
        if EXIT.compare_exchange(RUNNING, INTERRUPTED, Ordering::SeqCst, Ordering::SeqCst).is_err() {
            return;
        }
        // Not a plain write: standard error may be a pipe nobody reads, and
        // the write blocked this exit too (probe 205).
        crate::telemetry::tell_stderr_within(
            "authgate: second signal, exiting now",
            Duration::from_millis(500),
        );
        // Closed as when the grace period ends, so that their access lines
        // are written: an open tunnel left none.
        state.kill.cancel();
        let _ = tokio::time::timeout(Duration::from_millis(500), state.tasks.wait()).await;
        // Said here, right before the exit, not by `run`: its line raced
        // with this exit and was missing in 3 runs of 11 (probe 348).
        tracing::info!("stopped by a second signal (exit status 1)");
        crate::telemetry::flush(Duration::from_millis(500));
        std::process::exit(1);
    });
}

/// Whether a second SIGTERM or SIGINT has cut the shutdown short: the
/// process ends with status 1, and its last log line says so.
pub fn cut_short() -> bool {
    EXIT.load(Ordering::SeqCst) == INTERRUPTED
}

/// Called once the shutdown is over: whether a second signal was acted on
/// first, in which case its handler is given a second to end the process
/// (it needs the runtime a little longer to say so and to write what it
/// closed) and the exit status must be 1 all the same. A signal that comes
/// after this call is not acted on: either way the status tells what
/// happened (a second signal that won the race still ended in status 0, at
/// times in the middle of its message: probe 97).
pub fn interrupted() -> bool {
    let interrupted = EXIT.compare_exchange(RUNNING, EXITING, Ordering::SeqCst, Ordering::SeqCst).is_err();
    if interrupted {
        std::thread::sleep(Duration::from_secs(1));
    }
    interrupted
}
