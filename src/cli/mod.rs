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
