//! Subcommands other than `run`: they read config, never bind ports.

pub mod explain;
pub mod users;

/// Longest line read as a password from standard input; anything longer is
/// a mistake (and an endless stream such as `/dev/zero` must not grow memory
/// until the allocator gives up).
const MAX_PASSWORD_LINE: u64 = 4096;

/// One line of `input` as a password (`hash-password` and `users
/// --password-stdin` read standard input with it), without its line ending
/// (`\n` or `\r\n`); everything else, spaces included, is part of it.
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
    String::from_utf8(line).map_err(|_| "the password on standard input is not UTF-8".to_owned())
}

/// Asks for a password on the terminal without echo (rpassword), and
/// gives the terminal its settings back when Ctrl-C ends the wait: killed
/// by SIGINT in the middle of the prompt, the command left the shell with
/// echo off (probe 114). The process then exits with status 130, as the
/// signal's default action made it.
///
/// # Errors
/// The terminal cannot be read.
pub fn prompt_hidden(prompt: &str) -> std::io::Result<String> {
    use tokio::signal::unix::{SignalKind, signal};
    let tty = std::fs::File::open("/dev/tty");
    let saved = tty.as_ref().ok().and_then(|t| rustix::termios::tcgetattr(t).ok());
    let runtime = tokio::runtime::Builder::new_current_thread().enable_io().build();
    let (Ok(tty), Some(saved), Ok(runtime)) = (tty, saved, runtime) else {
        return rpassword::prompt_password(prompt);
    };
    runtime.block_on(async {
        let Ok(mut interrupt) = signal(SignalKind::interrupt()) else {
            return rpassword::prompt_password(prompt);
        };
        let (tx, rx) = tokio::sync::oneshot::channel();
        let prompt = prompt.to_owned();
        std::thread::spawn(move || {
            let _ = tx.send(rpassword::prompt_password(prompt));
        });
        // The read may end first, cut by the signal (EINTR).
        let read = tokio::select! {
            read = rx => read.ok(),
            _ = interrupt.recv() => None,
        };
        match read {
            Some(Ok(password)) => Ok(password),
            Some(Err(e)) if e.kind() != std::io::ErrorKind::Interrupted => Err(e),
            _ => {
                let _ = rustix::termios::tcsetattr(&tty, rustix::termios::OptionalActions::Now, &saved);
                let _ = std::io::Write::write_all(&mut &tty, b"\n");
                std::process::exit(130);
            }
        }
    })
}
