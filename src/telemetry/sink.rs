//! Where log lines go: a shared buffer that a background thread writes to
//! stdout every [`FLUSH_EVERY`], or sooner once [`FLUSH_AT`] bytes are
//! waiting (the scheme of nginx's `access_log … buffer= flush=`).
//!
//! Measured with `strace` in scenario a of the shared benchmark: the queue to
//! a writer thread used before (tracing-appender) made one `write(2)` per
//! line, since stdout flushes at every newline, plus a wake-up of that
//! thread per line (futex, and `sched_yield` from the queue's spinning).
//! Here it is 0.008 `write(2)` per request and no wake-up. (In req/s the two
//! could not be told apart on a 2-core box: both cost about 7 % in a.)
//!
//! Nothing is dropped while stdout takes the lines. When [`HARD_LIMIT`]
//! bytes are waiting, stdout has stopped taking them (a paused or stuck
//! log consumer): further lines are dropped and counted, and a `WARN` line
//! says how many once stdout takes lines again. Before, the thread that
//! found the buffer full wrote it out itself, and with a stopped consumer
//! every worker blocked in that write: the whole proxy (tunnels, health
//! checks, SIGTERM) froze until the consumer read again. Order is kept:
//! output is written under one lock, and the buffer is taken under it.
//! Lines reach stdout at most about [`FLUSH_EVERY`] late; [`LogGuard`] and
//! [`Sink::flush`] write what is left.

use std::io::{self, Write};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::Duration;

use tracing_subscriber::fmt::MakeWriter;

/// Longest a line waits in the buffer.
pub const FLUSH_EVERY: Duration = Duration::from_millis(100);
/// Bytes waiting that wake the writer thread early.
pub const FLUSH_AT: usize = 64 * 1024;
/// Bytes waiting past which new lines are dropped (and counted).
pub const HARD_LIMIT: usize = 4 * 1024 * 1024;
/// Longest the process waits at its exit for stdout to take any of the
/// last lines (see [`LogGuard`]).
pub const EXIT_WAIT: Duration = Duration::from_secs(5);

/// The buffer shared by all threads that log.
pub struct Sink {
    pending: Mutex<Pending>,
    wake: Condvar,
    /// Held while writing: keeps batches in order.
    out: Mutex<Box<dyn Write + Send>>,
    /// Lines are JSON (else text): how hidden characters are escaped.
    json: bool,
    /// The last write to the output failed.
    failing: AtomicBool,
    /// A failed write left the output in the middle of a line (a file at
    /// its size limit, a full disk take part of a write): the next batch
    /// ends that fragment first, so that its first line is not glued to it.
    torn: AtomicBool,
    /// Bytes the output has taken: the exit waits while this grows.
    taken: AtomicU64,
}

#[derive(Default)]
struct Pending {
    buf: Vec<u8>,
    closing: bool,
    /// Lines dropped since the last report.
    dropped: u64,
    /// Lines lost to failed writes (a closed pipe, a full disk) since the
    /// last report.
    lost: u64,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding the lock leaves only bytes behind: keep going.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Sink {
    fn new(out: Box<dyn Write + Send>, json: bool) -> Self {
        Sink {
            pending: Mutex::new(Pending::default()),
            wake: Condvar::new(),
            out: Mutex::new(out),
            json,
            failing: AtomicBool::new(false),
            torn: AtomicBool::new(false),
            taken: AtomicU64::new(0),
        }
    }

    /// Adds bytes (whole lines) to the buffer, with hidden characters
    /// escaped (see [`escape_hidden`]).
    pub fn append(&self, bytes: &[u8]) {
        let bytes = escape_hidden(bytes, self.json);
        let mut p = lock(&self.pending);
        let before = p.buf.len();
        if before >= HARD_LIMIT {
            // stdout has not taken 4 MiB: the writer thread is stuck in a
            // write. Waiting for it would stop this thread too.
            p.dropped += 1;
            return;
        }
        p.buf.extend_from_slice(&bytes);
        let now = p.buf.len();
        drop(p);
        if before < FLUSH_AT && now >= FLUSH_AT {
            self.wake.notify_one();
        }
    }

    /// Writes everything buffered so far.
    pub fn flush(&self) {
        let mut out = lock(&self.out);
        let (batch, dropped) = {
            let mut p = lock(&self.pending);
            (std::mem::take(&mut p.buf), std::mem::take(&mut p.dropped))
        };
        let written = if batch.is_empty() {
            Ok(())
        } else if self.torn.load(Ordering::Relaxed)
            && let Err((_, e)) = write_out(&mut **out, b"\n", &self.taken)
        {
            Err((0, e))
        } else {
            self.torn.store(false, Ordering::Relaxed);
            write_out(&mut **out, &batch, &self.taken)
        };
        if let Err((done, _)) = &written
            && batch.get(..*done).and_then(<[u8]>::last).is_some_and(|&b| b != b'\n')
        {
            self.torn.store(true, Ordering::Relaxed);
        }
        drop(out);
        if let Err((done, e)) = written {
            // The lines that went out whole are not lost.
            self.output_failed(batch.get(done..).unwrap_or_default(), dropped, &e);
            return;
        }
        let lost = if !batch.is_empty() && self.failing.swap(false, Ordering::Relaxed) {
            std::mem::take(&mut lock(&self.pending).lost)
        } else {
            0
        };
        if lost > 0 {
            tracing::warn!(
                target: "authgate::log",
                lost_lines = lost,
                "log lines lost: writing them to stdout failed (stderr has the error); stdout takes lines again"
            );
        }
        if dropped > 0 {
            // In the log's own format, with the next batch: stdout took
            // this one, so the consumer reads again.
            tracing::warn!(
                target: "authgate::log",
                dropped_lines = dropped,
                "log lines dropped: 4 MiB waited for stdout (the log consumer stopped reading, or reads slower than lines come)"
            );
        }
    }

    /// A write of `batch` failed: its lines (and the `dropped` ones not
    /// yet reported) are counted, to be reported once stdout takes lines
    /// again, and the first failure of a run of them is told on stderr,
    /// the one place left (a log consumer that died, a full disk: the
    /// lines were lost without a word).
    fn output_failed(&self, batch: &[u8], dropped: u64, error: &io::Error) {
        let lines = batch.iter().filter(|&&b| b == b'\n').count() as u64;
        {
            let mut p = lock(&self.pending);
            p.lost += lines;
            p.dropped += dropped;
        }
        if !self.failing.swap(true, Ordering::Relaxed) {
            let _ = writeln!(
                io::stderr().lock(),
                "authgate: cannot write the log to standard output ({error}); log lines are lost until it takes them again"
            );
        }
    }

    fn writer_loop(&self) {
        loop {
            let p = lock(&self.pending);
            let (p, _) = self
                .wake
                .wait_timeout_while(p, FLUSH_EVERY, |p| p.buf.len() < FLUSH_AT && !p.closing)
                .unwrap_or_else(|e| e.into_inner());
            let closing = p.closing;
            drop(p);
            self.flush();
            if closing {
                return;
            }
        }
    }
}

/// The most [`write_out`] hands to one `write(2)`.
/// With [`EXIT_WAIT`], a reader that takes 16 KiB in 5 s (3.2 KiB/s) is
/// still seen reading at the exit: 64 KiB pieces hid readers below 32 KiB/s
/// (probe 122).
const WRITE_PIECE: usize = 16 * 1024;

/// Writes all of `bytes` and flushes; on failure, how many bytes went out
/// before it (a file at its size limit takes part of a write).
fn write_out(out: &mut dyn Write, bytes: &[u8], taken: &AtomicU64) -> Result<(), (usize, io::Error)> {
    let mut done = 0;
    while let Some(rest) = bytes.get(done..).filter(|r| !r.is_empty()) {
        // In pieces: a write to a blocking pipe returns once all of it is
        // taken, and the exit, which waits while output is taken, saw no
        // progress for seconds while a slow reader took a large batch.
        match out.write(&rest[..rest.len().min(WRITE_PIECE)]) {
            Ok(0) => return Err((done, io::ErrorKind::WriteZero.into())),
            Ok(n) => {
                done += n;
                taken.fetch_add(n as u64, Ordering::Relaxed);
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err((done, e)),
        }
    }
    out.flush().map_err(|e| (done, e))
}

/// Characters of a client's text (a username, a request target) that
/// would act on a terminal, or hide or reorder text, in a log line as it is
/// read: DEL and C1 controls, line and paragraph separators, and the
/// invisible characters user names may not contain. The log formats escape
/// C0 controls themselves; the text format escapes most of these too, JSON
/// none of them.
pub(crate) fn hidden(c: char) -> bool {
    ('\u{7f}'..='\u{9f}').contains(&c) || matches!(c, '\u{2028}' | '\u{2029}') || crate::config::invisible(c)
}

/// `line` with each [`hidden`] character written as an escape: `\uXXXX`
/// in JSON, where such characters only ever appear inside strings, so the
/// value a JSON reader gets is unchanged (a surrogate pair past U+FFFF);
/// `\u{…}` in text, where every client string is quoted and its
/// backslashes doubled, so the escape cannot be taken for text the client
/// sent. Lines of printable ASCII, nearly all, are passed on as they are.
///
/// In text, a C0 control other than a tab inside the line is escaped too
/// (`\u{a}`): the formats escape those in fields, but a library's message
/// can hold them, and a line feed made one event seven lines (hickory's
/// debug lines show DNS answers over several; probe 286). JSON escapes
/// them all.
fn escape_hidden(line: &[u8], json: bool) -> std::borrow::Cow<'_, [u8]> {
    use std::borrow::Cow;
    use std::fmt::Write as _;
    // The line's own end, which is not escaped.
    let (body, end) = match line.split_last() {
        Some((b'\n', body)) => (body, "\n"),
        _ => (line, ""),
    };
    let control = |c: char| !json && c.is_ascii_control() && c != '\t';
    if printable_ascii(body) {
        return Cow::Borrowed(line);
    }
    let text = String::from_utf8_lossy(body);
    if !text.chars().any(|c| hidden(c) || control(c)) {
        return Cow::Borrowed(line);
    }
    let mut out = String::with_capacity(line.len() + 16);
    for c in text.chars() {
        if !hidden(c) && !control(c) {
            out.push(c);
        } else if json {
            let mut units = [0u16; 2];
            for unit in c.encode_utf16(&mut units) {
                let _ = write!(out, "\\u{unit:04x}");
            }
        } else {
            out.extend(c.escape_unicode());
        }
    }
    out.push_str(end);
    Cow::Owned(out.into_bytes())
}

/// Whether `bytes` are all printable ASCII (space to `~`), as nearly every
/// line is. It runs for every access line: with no early exit, the loop
/// is vectorized (a byte-by-byte scan that stopped at the first control
/// cost 3,000 instructions per request; probe 286's fix).
fn printable_ascii(bytes: &[u8]) -> bool {
    !bytes.iter().fold(false, |odd, &b| odd | (b.wrapping_sub(0x20) > 0x5e))
}

/// A handle for `tracing_subscriber`: each line is appended to the [`Sink`].
#[derive(Clone)]
pub struct SinkWriter(Arc<Sink>);

impl SinkWriter {
    /// The buffer this writer appends to.
    pub fn sink(&self) -> Arc<Sink> {
        self.0.clone()
    }
}

impl Write for SinkWriter {
    fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
        self.0.append(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl<'a> MakeWriter<'a> for SinkWriter {
    type Writer = SinkWriter;

    fn make_writer(&'a self) -> Self::Writer {
        self.clone()
    }
}

/// Stops the writer thread and writes what is left when dropped, for as
/// long as stdout takes lines: it gives up once stdout has taken none for
/// `EXIT_WAIT` (5 s). Hold it until the process exits.
///
/// A write to a stdout nobody reads (a paused log consumer) blocks without
/// end: the exit waited for it, so a SIGTERM, and a second one too, never
/// ended the process (probe 117). Past the wait, the lines still waiting
/// are lost, and stderr says so. (A wait of 2 s in all cut a slow reader
/// that was still taking lines: probe 119.)
pub struct LogGuard {
    sink: Arc<Sink>,
    thread: Option<JoinHandle<()>>,
}

impl Drop for LogGuard {
    fn drop(&mut self) {
        lock(&self.sink.pending).closing = true;
        self.sink.wake.notify_one();
        if let Some(t) = self.thread.take() {
            if !self.sink.wait_while_taken(EXIT_WAIT, || t.is_finished()) {
                return;
            }
            let _ = t.join();
        }
        flush_within(&self.sink, EXIT_WAIT);
    }
}

/// [`Sink::flush`] on a thread of its own, waited for while stdout takes
/// lines, until it has taken none for `quiet`: false when it gave up (the
/// thread is left blocked in its write; the process is about to exit).
pub fn flush_within(sink: &Arc<Sink>, quiet: Duration) -> bool {
    let (tx, rx) = std::sync::mpsc::channel();
    let s = sink.clone();
    let spawned = std::thread::Builder::new().name("authgate-log-exit".into()).spawn(move || {
        s.flush();
        let _ = tx.send(());
    });
    // (Ended also if the thread ended without a word: a panic.)
    spawned.is_ok()
        && sink
            .wait_while_taken(quiet, || !matches!(rx.try_recv(), Err(std::sync::mpsc::TryRecvError::Empty)))
}

impl Sink {
    /// Waits until `done`, for as long as the output takes bytes; once it
    /// has taken none for `quiet`, says on stderr that the lines still
    /// waiting are lost and returns false.
    fn wait_while_taken(&self, quiet: Duration, mut done: impl FnMut() -> bool) -> bool {
        let mut taken = self.taken.load(Ordering::Relaxed);
        let mut since = std::time::Instant::now();
        while !done() {
            let now = self.taken.load(Ordering::Relaxed);
            if now != taken {
                (taken, since) = (now, std::time::Instant::now());
            } else if since.elapsed() >= quiet {
                tell_stderr_within(
                    &format!(
                        "authgate: standard output took no log lines for {} ms at exit (the log consumer \
                         stopped reading); the lines still waiting are lost",
                        quiet.as_millis()
                    ),
                    STDERR_WAIT,
                );
                return false;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        true
    }
}

/// How long the exit waits for a line to go out on standard error.
const STDERR_WAIT: Duration = Duration::from_secs(1);

/// Writes `line` and a line end to standard error from a thread of its own,
/// and waits for that at most `within` (past it, the line is left to the
/// thread, and lost if the process ends first).
///
/// Standard error can be the same pipe as standard output (`2>&1` into a
/// log consumer, supervisord's `redirect_stderr`), and when the consumer
/// stops reading, a write to it blocks without end: the exit's "lines are
/// lost" message, written so, held the exit for good, and a second signal
/// too (probe 205). The line goes through a descriptor of its own, so a
/// write left blocked holds no lock that a later write to standard error
/// would wait for.
pub fn tell_stderr_within(line: &str, within: Duration) {
    use std::os::fd::AsFd;
    let Ok(fd) = io::stderr().as_fd().try_clone_to_owned() else { return };
    let mut stderr = std::fs::File::from(fd);
    let text = format!("{line}\n");
    let (tx, rx) = std::sync::mpsc::channel();
    let spawned = std::thread::Builder::new().name("authgate-stderr".into()).spawn(move || {
        let _ = stderr.write_all(text.as_bytes());
        let _ = tx.send(());
    });
    if spawned.is_ok() {
        let _ = rx.recv_timeout(within);
    }
}

/// A sink writing lines (`json` or text) to `out`, its writer for the
/// subscriber, and the guard that runs its writer thread.
pub fn start(out: Box<dyn Write + Send>, json: bool) -> (SinkWriter, LogGuard) {
    let sink = Arc::new(Sink::new(out, json));
    let worker = sink.clone();
    let thread = std::thread::Builder::new()
        .name("authgate-log".into())
        .spawn(move || worker.writer_loop())
        // Without the thread, nothing is written until the guard drops (or
        // `telemetry::flush` runs); past `HARD_LIMIT`, lines are dropped and
        // counted.
        .ok();
    (SinkWriter(sink.clone()), LogGuard { sink, thread })
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::telemetry::Captured;

    #[test]
    fn lines_arrive_in_order_and_none_is_lost_at_exit() {
        let out = Captured::default();
        let (writer, guard) = start(Box::new(out.clone()), false);
        let threads: Vec<_> = (0..4)
            .map(|t| {
                let mut w = writer.clone();
                std::thread::spawn(move || {
                    for i in 0..20_000 {
                        w.write_all(format!("{t} {i}\n").as_bytes()).unwrap();
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        drop(guard);
        let text = String::from_utf8(lock(&out.0).clone()).unwrap();
        let mut next = [0usize; 4];
        for line in text.lines() {
            let (t, i) = line.split_once(' ').unwrap();
            let t: usize = t.parse().unwrap();
            assert_eq!(i.parse::<usize>().unwrap(), next[t], "each thread's lines in order");
            next[t] += 1;
        }
        assert_eq!(next, [20_000; 4], "every line written");
    }

    /// A consumer that stops reading costs log lines, counted, not the
    /// threads that log (they all blocked in the write, and the proxy froze).
    #[test]
    fn a_stopped_consumer_costs_lines_not_the_threads_that_log() {
        // An output that blocks until let go, as a pipe nobody reads.
        struct Stuck(Arc<(Mutex<bool>, Condvar)>);
        impl Write for Stuck {
            fn write(&mut self, b: &[u8]) -> io::Result<usize> {
                let (go, cv) = &*self.0;
                let mut go = lock(go);
                while !*go {
                    go = cv.wait(go).unwrap_or_else(|e| e.into_inner());
                }
                Ok(b.len())
            }
            fn flush(&mut self) -> io::Result<()> {
                Ok(())
            }
        }
        let gate = Arc::new((Mutex::new(false), Condvar::new()));
        let (writer, guard) = start(Box::new(Stuck(gate.clone())), false);
        let sink = writer.sink();
        let (done_tx, done_rx) = std::sync::mpsc::channel();
        let mut w = writer.clone();
        std::thread::spawn(move || {
            let mut line = vec![b'x'; 1023];
            line.push(b'\n');
            // 10 MiB, more than the buffer holds.
            for _ in 0..10 * 1024 {
                w.write_all(&line).unwrap();
            }
            let _ = done_tx.send(());
        });
        assert!(done_rx.recv_timeout(Duration::from_secs(20)).is_ok(), "the logging thread blocked");
        {
            let p = lock(&sink.pending);
            assert!(p.dropped > 0, "lines past the limit are dropped and counted");
            assert!(p.buf.len() < HARD_LIMIT + 1024, "the buffer stays bounded");
        }
        *lock(&gate.0) = true;
        gate.1.notify_all();
        drop(guard);
        assert_eq!(lock(&sink.pending).buf.len(), 0, "what was kept is written at exit");
    }

    #[test]
    fn hidden_characters_are_escaped_in_the_syntax_of_the_format() {
        let line = "user=\"a\u{202e}b\u{85}c\u{e0041}\u{3164}é\\\"\n";
        let json = escape_hidden(line.as_bytes(), true);
        assert_eq!(
            std::str::from_utf8(&json).unwrap(),
            "user=\"a\\u202eb\\u0085c\\udb40\\udc41\\u3164é\\\"\n"
        );
        let text = escape_hidden(line.as_bytes(), false);
        assert_eq!(
            std::str::from_utf8(&text).unwrap(),
            "user=\"a\\u{202e}b\\u{85}c\\u{e0041}\\u{3164}é\\\"\n"
        );
        // What a JSON reader gets is the value as it was.
        let v: serde_json::Value = serde_json::from_str(
            std::str::from_utf8(&escape_hidden(b"\"x\xe2\x80\xae\xf3\xa0\x81\x81\"", true)).unwrap(),
        )
        .unwrap();
        assert_eq!(v, "x\u{202e}\u{e0041}");
        assert!(matches!(escape_hidden("plain é line\n".as_bytes(), true), std::borrow::Cow::Borrowed(_)));
    }

    /// A library's message with line feeds in it (hickory's debug lines
    /// print DNS answers over several) stays one line in text: a reader
    /// taking a line for an event split it, and a line of its own could
    /// pass for another event (probe 286). Tabs and the line's own end
    /// stay; JSON escapes controls itself.
    #[test]
    fn a_message_with_line_feeds_stays_one_line_in_text() {
        let event = b"DEBUG hickory_proto::error: response: ; header\n;; a.test. IN A\r\n\x1b[0m\tok\n";
        let text = escape_hidden(event, false);
        assert_eq!(
            std::str::from_utf8(&text).unwrap(),
            "DEBUG hickory_proto::error: response: ; header\\u{a};; a.test. IN A\\u{d}\\u{a}\\u{1b}[0m\tok\n"
        );
        assert_eq!(text.iter().filter(|&&b| b == b'\n').count(), 1);
        let plain = b"INFO authgate: listening\taddr=127.0.0.1:3128\n";
        assert!(matches!(escape_hidden(plain, false), std::borrow::Cow::Borrowed(_)));
        assert!(matches!(escape_hidden(event, true), std::borrow::Cow::Borrowed(_)));
        assert!(printable_ascii(b" ~azAZ09") && printable_ascii(b""));
        for odd in [b"\x1f".as_slice(), b"\x7f", b"\x80", b"\xff", b"\t", b"\n"] {
            assert!(!printable_ascii(&[b"x".as_slice(), odd].concat()), "{odd:?}");
        }
    }

    #[test]
    fn a_quiet_log_is_still_written_without_a_flush_call() {
        let out = Captured::default();
        let (mut writer, _guard) = start(Box::new(out.clone()), false);
        writer.write_all(b"started\n").unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while lock(&out.0).is_empty() && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        assert_eq!(&lock(&out.0)[..], b"started\n");
    }
}
