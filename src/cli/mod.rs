//! Subcommands other than `run`: they read config, never bind ports.

pub mod args;
pub mod explain;
pub mod users;

/// Longest line read as a password from standard input; anything longer is
/// a mistake (and an endless stream such as `/dev/zero` must not grow memory
/// until the allocator gives up).
const MAX_PASSWORD_LINE: u64 = 4096;

/// One line of `input` as a password (`hash-password` and `users
/// --password-stdin` read standard input with it), without its line ending
/// (`\n` or `\r\n`) and without a byte order mark before it, as a file
/// saved by some Windows editors starts; everything else, spaces included,
/// is part of it. The mark was kept as the password's first character,
/// which no one types: the user was locked out, without a word (probe 391).
///
/// # Errors
/// A one-line reason: unreadable, too long (see
/// [`crate::auth::password::too_long`]), or not UTF-8.
pub fn password_line(input: &mut impl std::io::BufRead) -> Result<String, String> {
    use std::io::{BufRead, Read};
    let mut line = Vec::new();
    input
        .take(MAX_PASSWORD_LINE + 1)
        .read_until(b'\n', &mut line)
        .map_err(|e| format!("cannot read the password from standard input: {e}"))?;
    if line.is_empty() {
        // Not even a line end: a closed standard input reads so too (the
        // runtime opens `/dev/null` in its place), which "empty password
        // refused" left unexplained (probe 323).
        return Err("no password on standard input (it is empty or closed): give it as one line".into());
    }
    if line.len() as u64 > MAX_PASSWORD_LINE {
        // Past any password authgate accepts: the same refusal as for one
        // just over the limit (the read bound is only a memory bound).
        return Err(crate::auth::password::too_long());
    }
    if line.last() == Some(&b'\n') {
        line.pop();
        if line.last() == Some(&b'\r') {
            line.pop();
        }
    }
    if line.starts_with("\u{feff}".as_bytes()) {
        line.drain(.."\u{feff}".len());
    }
    String::from_utf8(line).map_err(|_| "the password on standard input is not UTF-8".to_owned())
}

/// Whether standard output is the null device: closed when the command
/// started (the runtime opens `/dev/null` in its place), or sent there.
/// `hash-password`, whose one output is the hash, so lost it with exit 0
/// (probe 391).
pub fn stdout_is_null() -> bool {
    let null = rustix::fs::stat("/dev/null");
    let out = rustix::fs::fstat(std::io::stdout());
    matches!((null, out), (Ok(null), Ok(out))
        if rustix::fs::FileType::from_raw_mode(out.st_mode) == rustix::fs::FileType::CharacterDevice
            && out.st_rdev == null.st_rdev)
}

/// A new password from a no-echo prompt on the terminal (`prompt`, then
/// `Repeat it: `); one that [`check_new_password`] refuses is refused before
/// it is asked again (probe 160).
///
/// [`check_new_password`]: crate::auth::password::check_new_password
///
/// # Errors
/// A one-line reason: the terminal cannot be read, the password is
/// refused, or the two differ (`the two passwords differ`).
pub fn ask_new_password(prompt: &str) -> Result<String, String> {
    let ask = |prompt: &str| prompt_hidden(prompt).map_err(|e| format!("cannot read the password: {e}"));
    let first = ask(prompt)?;
    crate::auth::password::check_new_password(&first)?;
    if first != ask("Repeat it: ")? {
        return Err("the two passwords differ".into());
    }
    Ok(first)
}

/// `hash-password`'s password: [`ask_new_password`] on a terminal, else one
/// [`password_line`] of standard input; checked as `users` checks one.
///
/// # Errors
/// A one-line reason, as those two give it.
pub fn read_new_password() -> Result<String, String> {
    use std::io::IsTerminal;
    let password = match std::io::stdin().is_terminal() {
        true => return ask_new_password("Password: "),
        false => password_line(&mut std::io::stdin().lock())?,
    };
    crate::auth::password::check_new_password(&password).map(|()| password)
}

/// The terminal and its settings to give back when Ctrl-C comes during a
/// password prompt.
static PROMPTING: std::sync::Mutex<Option<(std::fs::File, rustix::termios::Termios)>> =
    std::sync::Mutex::new(None);

/// Whether SIGINT, SIGTERM and SIGHUP are caught (see [`catch_interrupts`]).
static INTERRUPTS: std::sync::OnceLock<bool> = std::sync::OnceLock::new();

/// From the first prompt on, SIGINT, SIGTERM and SIGHUP are caught by a
/// thread of its own, which gives a prompting terminal its settings back
/// and exits with status 128 + the signal's number (130, 143, 129), as the
/// signals' default action did. (Caught only while a prompt waited, a
/// Ctrl-C after it, during a long hash or a lock wait, was caught and
/// thrown away: probe 122. SIGTERM and SIGHUP at a prompt left the terminal
/// without echo under a shell that does not restore it, dash: probe 123.)
fn catch_interrupts() -> bool {
    *INTERRUPTS.get_or_init(|| {
        use tokio::signal::unix::{SignalKind, signal};
        let (tx, rx) = std::sync::mpsc::channel();
        let spawned = std::thread::Builder::new().name("authgate-sigint".into()).spawn(move || {
            let Ok(runtime) = tokio::runtime::Builder::new_current_thread().enable_io().build() else {
                let _ = tx.send(false);
                return;
            };
            runtime.block_on(async {
                let (Ok(mut interrupt), Ok(mut terminate), Ok(mut hangup)) = (
                    signal(SignalKind::interrupt()),
                    signal(SignalKind::terminate()),
                    signal(SignalKind::hangup()),
                ) else {
                    let _ = tx.send(false);
                    return;
                };
                let _ = tx.send(true);
                let status = tokio::select! {
                    _ = interrupt.recv() => 130,
                    _ = terminate.recv() => 143,
                    _ = hangup.recv() => 129,
                };
                let prompting = PROMPTING.lock().unwrap_or_else(|p| p.into_inner()).take();
                if let Some((tty, saved)) = prompting {
                    let _ = rustix::termios::tcsetattr(&tty, rustix::termios::OptionalActions::Now, &saved);
                    let _ = std::io::Write::write_all(&mut &tty, b"\n");
                }
                std::process::exit(status);
            });
        });
        spawned.is_ok() && rx.recv().unwrap_or(false)
    })
}

/// Asks for a password on the terminal without echo (rpassword), and
/// gives the terminal its settings back when Ctrl-C ends the wait: killed
/// by SIGINT in the middle of the prompt, the command left the shell with
/// echo off (probe 114). The process then exits with status 130, as the
/// signal's default action made it (see `catch_interrupts`).
///
/// # Errors
/// The terminal cannot be read.
pub fn prompt_hidden(prompt: &str) -> std::io::Result<String> {
    // Written to as well (the line end after an interruption or an
    // error): opened read-only, those writes failed unseen.
    let tty = std::fs::OpenOptions::new().read(true).write(true).open("/dev/tty");
    if let Ok(tty) = tty
        && let Ok(saved) = rustix::termios::tcgetattr(&tty)
        && catch_interrupts()
    {
        *PROMPTING.lock().unwrap_or_else(|p| p.into_inner()) = Some((tty, saved));
    }
    let read = rpassword::prompt_password(prompt);
    let prompting = PROMPTING.lock().unwrap_or_else(|p| p.into_inner()).take();
    match read {
        // Cut by the signal (EINTR): the thread that caught it ends the
        // process in a moment.
        Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {
            std::thread::sleep(std::time::Duration::from_secs(1));
            Err(e)
        }
        // The message goes on a line of its own, not after the prompt
        // (Ctrl-D: probe 123).
        Err(e) => {
            if let Some((tty, _)) = prompting {
                let _ = std::io::Write::write_all(&mut &tty, b"\n");
            }
            Err(e)
        }
        ok => ok,
    }
}
