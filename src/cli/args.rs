//! `authgate`'s command line as clap reads it, and the usage errors that
//! must not repeat what was typed.

use std::path::PathBuf;

use clap::{Parser, Subcommand};

/// `authgate`'s arguments.
#[derive(Parser)]
#[command(name = "authgate", version, about = "Forward HTTP proxy that requires proxy credentials")]
pub struct Cli {
    /// Config file [default: config/authgate.toml].
    #[arg(long, short, global = true)]
    pub config: Option<PathBuf>,
    /// The command (`run` when none is given).
    #[command(subcommand)]
    pub command: Option<Command>,
}

/// What `authgate` is asked to do.
#[derive(Subcommand)]
pub enum Command {
    /// Run the proxy (the default).
    Run,
    /// Validate the config and users file; print `ok` or every problem.
    Check {
        /// Also refuse (exit 1) what a reload refuses in place of a running
        /// configuration that denies by default and has users: for a
        /// service manager's reload step.
        #[arg(long)]
        reload: bool,
    },
    /// Read a password and print its argon2id PHC string.
    HashPassword,
    /// Explain whether USER may reach TARGET and why (exit 0 allowed, 1 denied, 2 error).
    Explain {
        /// The user to check (no password needed).
        #[arg(long)]
        user: String,
        /// Method (default: GET for http:// URLs, CONNECT otherwise).
        #[arg(long)]
        method: Option<String>,
        /// A URL (http://host/path, https://host) or host:port.
        target: String,
    },
    /// Manage the users file (add, passwd, remove, disable, enable, list, import-htpasswd).
    Users {
        /// What to do to the users file.
        #[command(subcommand)]
        action: crate::cli::users::Action,
    },
}

/// Whether `arg` is `--config` or `-c` alone, its value the next argument.
fn config_flag(arg: &[u8]) -> bool {
    arg == b"--config" || arg == b"-c"
}

/// Whether `args` give `--config` more than once (looked for up to a
/// `--`): clap refuses `-c A -c B check`, but of `-c A check -c B` keeps
/// the later one without a word, so a wrapper's `-c` before the command
/// could be overridden unseen (probe 276).
pub fn config_given_twice(args: impl Iterator<Item = std::ffi::OsString>) -> bool {
    let mut given = 0;
    let mut args = args.skip(1);
    while let Some(arg) = args.next() {
        let arg = arg.as_encoded_bytes();
        if arg == b"--" {
            break;
        }
        if config_flag(arg) {
            given += 1;
            args.next();
        } else if arg.starts_with(b"--config=") || (arg.starts_with(b"-c") && !arg.starts_with(b"--")) {
            given += 1;
        }
    }
    given > 1
}

/// For a value given where none is taken (most likely a password:
/// `authgate hash-password S3cret`, `users add alice S3cret`,
/// `--password-stdin=S3cret`) or an unknown flag, clap's error without the
/// value (clap quotes it), as the line to print; `None` for other errors,
/// which clap's own message tells well.
pub fn usage_message(e: &clap::Error) -> Option<String> {
    use clap::error::{ContextKind, ContextValue, ErrorKind};
    // A value may be a password, also one that starts with `-` (`users add
    // alice -- -S3cret`, probe 85); so may a mistyped flag or subcommand,
    // with a password glued to it (`--password-stdin:S3cret`, probe 139;
    // `hash-password:S3cret`, probe 144): none is repeated, and the similar
    // flag or subcommand clap found is named.
    let a_value = matches!(
        e.kind(),
        ErrorKind::UnknownArgument | ErrorKind::TooManyValues | ErrorKind::InvalidSubcommand
    );
    if !a_value {
        return None;
    }
    let usage = match e.get(ContextKind::Usage) {
        Some(ContextValue::StyledStr(u)) => format!("\n\n{u}"),
        _ => String::new(),
    };
    let tip = match (e.get(ContextKind::SuggestedArg), e.get(ContextKind::SuggestedSubcommand)) {
        (Some(ContextValue::String(flag)), _) => format!("\n\n  tip: a similar argument exists: '{flag}'"),
        (_, Some(ContextValue::String(command))) => {
            format!("\n\n  tip: a similar subcommand exists: '{command}'")
        }
        (_, Some(ContextValue::Strings(commands))) if !commands.is_empty() => {
            format!("\n\n  tip: a similar subcommand exists: '{}'", commands.join("', '"))
        }
        _ => String::new(),
    };
    let args: Vec<_> = std::env::args_os().collect();
    // `-c -x.toml`: clap takes the path for a flag (probe 276).
    let dash_path = args
        .windows(2)
        .any(|w| config_flag(w[0].as_encoded_bytes()) && w[1].as_encoded_bytes().starts_with(b"-"));
    let tip = if tip.is_empty() && dash_path {
        "\n\n  tip: to give --config a path that begins with '-', write --config=PATH".to_owned()
    } else {
        tip
    };
    // A word where a command goes names the commands there, so that a typo
    // far from every name (`authgate help nosuch`) reads as one (probe 114).
    let what = match e.kind() {
        ErrorKind::InvalidSubcommand => {
            format!("unknown command; the commands are {}", commands_at(args.iter().cloned()))
        }
        _ => "unexpected argument".to_owned(),
    };
    // Where passwords go, where the command is one that reads them.
    let hint = match command_at(args.into_iter()).get_name() {
        "explain" | "check" | "run" => "",
        _ => {
            "; `hash-password` reads it from the terminal or standard input, `users` from the terminal \
             or with --password-stdin"
        }
    };
    Some(format!(
        "error: {what} (not shown: it may be a password{hint}){tip}{usage}\n\nFor more information, try '--help'."
    ))
}

/// The subcommands of the command that `args` name before their first
/// unknown word, `help` included, as `a, b, c`. `--config`'s value is
/// skipped, so that `-c users users nosuch` names `users`'s commands.
fn commands_at(args: impl Iterator<Item = std::ffi::OsString>) -> String {
    let cmd = command_at(args);
    let names: Vec<&str> = cmd.get_subcommands().map(clap::Command::get_name).collect();
    names.join(", ")
}

/// The command that `args` name before their first unknown word.
fn command_at(args: impl Iterator<Item = std::ffi::OsString>) -> clap::Command {
    use clap::CommandFactory;
    let mut cmd = Cli::command();
    cmd.build();
    let mut args = args.skip(1);
    while let Some(arg) = args.next() {
        let arg = arg.to_string_lossy();
        if config_flag(arg.as_bytes()) {
            args.next();
        } else if arg.starts_with('-') {
            continue;
        } else if arg == "help" {
            // `help X` looks X up among the commands of this level.
            continue;
        } else if let Some(sub) = cmd.find_subcommand(arg.as_ref()).cloned() {
            cmd = sub;
        } else {
            break;
        }
    }
    cmd
}
