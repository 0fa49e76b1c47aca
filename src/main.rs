//! The `authgate` command line: parse arguments, call the library, map errors
//! to exit codes; plus what only a process does: signals, the allocator's
//! settings, and reading a password from the terminal.

use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// jemalloc instead of glibc's allocator: with its background thread it gives
/// memory freed by closed connections back to the system (see the README's
/// Performance section); glibc kept it.
#[global_allocator]
static ALLOC: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

#[derive(Parser)]
#[command(name = "authgate", version, about = "Forward HTTP proxy that requires proxy credentials")]
struct Cli {
    /// Config file [default: config/authgate.toml].
    #[arg(long, short, global = true)]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
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
        #[command(subcommand)]
        action: authgate::cli::users::Action,
    },
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => return usage_error(e),
    };
    let given = cli.config.is_some();
    let config = cli.config.unwrap_or_else(|| PathBuf::from(authgate::config::DEFAULT_PATH));
    match cli.command.unwrap_or(Command::Run) {
        Command::Run => run(&config),
        Command::Check { reload } => check(&config, reload),
        Command::HashPassword => hash_password(&config, given),
        Command::Explain { user, method, target } => explain(&config, &user, method.as_deref(), &target),
        Command::Users { action } => users(&config, action),
    }
}

/// clap's error, or, for a value given where none is taken (most likely a
/// password: `authgate hash-password S3cret`, `users add alice S3cret`,
/// `--password-stdin=S3cret`) or an unknown flag, the same without the
/// value: clap quotes it.
fn usage_error(e: clap::Error) -> ExitCode {
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
        e.exit();
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
    err_line(format_args!(
        "error: {what} (not shown: it may be a password{hint}){tip}{usage}\n\nFor more information, try '--help'."
    ));
    ExitCode::from(2)
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
        if arg == "--config" || arg == "-c" {
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

fn fail(msg: impl std::fmt::Display) -> ExitCode {
    err_line(format_args!("authgate: {msg}"));
    ExitCode::FAILURE
}

/// One line on standard error. `eprintln!` panics when stderr cannot be
/// written; the exit code still tells what happened.
///
/// Whatever it quotes (a path, a name from a file), control characters but
/// line ends, and invisible or direction-changing ones, go out escaped.
fn err_line(line: impl std::fmt::Display) {
    let line = line.to_string();
    let _ = writeln!(std::io::stderr().lock(), "{}", authgate::config::shown_lines(&line));
}

/// Writes `text` to standard output and returns `code`; a write that fails
/// (a full disk, a closed pipe: `authgate check > /dev/full`) is a one-line
/// message and exit 1, where `print!` panicked with exit 101. Escaped as
/// [`err_line`] escapes.
fn emit(text: &str, code: ExitCode) -> ExitCode {
    emit_else(text, code, ExitCode::FAILURE, "")
}

/// [`emit`] with `failed` as the exit code of a write that fails: `explain`
/// exits 1 for "denied", which a script read into a full disk (probe 114);
/// `lost` ends the message then.
fn emit_else(text: &str, code: ExitCode, failed: ExitCode, lost: &str) -> ExitCode {
    let text = authgate::config::shown_lines(text);
    let mut out = std::io::stdout().lock();
    match out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
        Ok(()) => code,
        Err(e) => {
            fail(format!("cannot write to standard output: {e}{lost}"));
            failed
        }
    }
}

/// `authgate users ...`: 0 done, 1 refused (one `authgate:` line per problem).
/// A change written is done even when its report cannot be (`> /dev/full`):
/// exit 1 told a script that nothing was written, and its retry was
/// refused, "already exists" (probe 178).
fn users(config: &Path, action: authgate::cli::users::Action) -> ExitCode {
    match authgate::cli::users::run(config, action) {
        Ok(outcome) => {
            for line in outcome.warnings.iter().chain(&outcome.refused) {
                err_line(format_args!("authgate: {line}"));
            }
            let code = if outcome.refused.is_empty() { ExitCode::SUCCESS } else { ExitCode::FAILURE };
            // Said, or an admin took the error for a failed change, tried
            // again and was refused, "already exists" (probe 202).
            let (failed, lost) = match outcome.written {
                true => (code, "; the change was made, only this report of it is lost"),
                false => (ExitCode::FAILURE, ""),
            };
            emit_else(&outcome.stdout, code, failed, lost)
        }
        Err(e) => {
            for line in e.lines() {
                err_line(format_args!("authgate: {line}"));
            }
            ExitCode::FAILURE
        }
    }
}

fn check(config: &Path, reload: bool) -> ExitCode {
    match authgate::config::load(config) {
        Ok(snap) => {
            // Warnings, not errors: the proxy starts with them.
            for line in authgate::server::tls::date_warnings(&snap.server.tls) {
                err_line(format_args!("authgate: warning: {line}"));
            }
            let users_file = authgate::config::shown_path(&snap.auth.users_file);
            for line in snap.users.hash_warnings(|_| true) {
                err_line(format_args!("authgate: warning: {users_file}: {line}"));
            }
            for line in authgate::config::rule_hints(&snap)
                .into_iter()
                .chain(authgate::config::proxy_protocol_hints(&snap))
            {
                err_line(format_args!("authgate: warning: {line}"));
            }
            // With `--reload`, errors: `systemctl reload` ran a `check` that
            // said ok, then a reload that failed (probe 162).
            let refusals = authgate::config::reload_refusals(&snap);
            let kind = if reload { "" } else { "warning: " };
            for line in &refusals {
                err_line(format_args!("authgate: {kind}{line}"));
            }
            if reload && !refusals.is_empty() {
                return ExitCode::FAILURE;
            }
            emit(&format!("ok: {}\n", snap.summary()), ExitCode::SUCCESS)
        }
        Err(e) => {
            err_line(format_args!("{e}"));
            // With `--reload`, said beside the errors, as the reload says
            // it, not once they are fixed (probe 166).
            // (Only then read again: a file refused for its size is not
            // parsed here either.)
            if let Some(line) = reload.then(|| authgate::config::default_refusal(config)).flatten() {
                err_line(format_args!("authgate: {line}"));
            }
            ExitCode::FAILURE
        }
    }
}

fn explain(config: &Path, user: &str, method: Option<&str>, target: &str) -> ExitCode {
    let snap = match authgate::config::load(config) {
        Ok(s) => s,
        Err(e) => {
            err_line(format_args!("{e}"));
            return ExitCode::from(2);
        }
    };
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            err_line(format_args!("authgate: cannot start the runtime: {e}"));
            return ExitCode::from(2);
        }
    };
    match runtime.block_on(authgate::cli::explain::run(&snap, user, method, target)) {
        Ok(report) => emit_else(
            &report.text,
            if report.allowed { ExitCode::SUCCESS } else { ExitCode::from(1) },
            ExitCode::from(2),
            "",
        ),
        Err(e) => {
            err_line(format_args!("authgate: {e}"));
            ExitCode::from(2)
        }
    }
}

fn run(config: &Path) -> ExitCode {
    // Before anything that takes time: SIGHUP's default action ends the
    // process, and a reload asked for during the start must not.
    let hangup = authgate::server::reload::listen_for_hangup();
    let snap = match authgate::config::load(config) {
        Ok(s) => s,
        Err(e) => {
            err_line(format_args!("{e}"));
            return ExitCode::FAILURE;
        }
    };
    // Flushes queued log lines when `run` returns (dropped last).
    let _log = authgate::telemetry::init(&snap.log.level, snap.log.format);
    return_freed_memory();
    authgate::server::limits::raise_open_files_limit(snap.limits.max_connections);
    authgate::proxy::upstream_tls::warn_if_no_system_roots(&snap);
    authgate::server::tls::warn_if_out_of_date(&snap.server.tls);
    snap.users.warn_of_hashes(|_| true);
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    if snap.server.worker_threads > 0 {
        builder.worker_threads(snap.server.worker_threads);
    }
    let runtime = match builder.enable_all().build() {
        Ok(r) => r,
        Err(e) => return fail(format!("cannot start the runtime: {e}")),
    };
    let code = runtime.block_on(async move {
        authgate::telemetry::survive_file_size_limit();
        let summary = snap.summary();
        let state = authgate::State::new(snap);
        state.hand_over_hangup(hangup);
        let listeners = match authgate::server::bind_all(&state).await {
            Ok(l) => l,
            Err(e) => return fail(e),
        };
        tracing::info!(summary = &*summary, "authgate started");
        match authgate::run(state.clone(), listeners, shutdown_signal(state)).await {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => fail(e),
        }
    });
    // A second signal acted on has its handler end the process, with
    // status 1, once it has said so and written what it closed: it needs
    // the runtime a little longer. One that comes after this is not acted
    // on (the shutdown is over). Either way the status tells what happened:
    // a second signal that won the race still ended in status 0, at times
    // in the middle of its message (probe 97).
    let interrupted = EXIT
        .compare_exchange(
            RUNNING,
            EXITING,
            std::sync::atomic::Ordering::SeqCst,
            std::sync::atomic::Ordering::SeqCst,
        )
        .is_err();
    if interrupted {
        std::thread::sleep(std::time::Duration::from_secs(1));
    }
    // Dropping the runtime would wait for every blocking task: a password
    // verification still running (a slow hash, a flood) held the exit, and
    // the second-signal handler no longer ran; so did a reload under way,
    // for a configuration that would serve nobody (a one-second bound here
    // still held the exit that long). Shutdown is over by now: what those
    // tasks would produce is not wanted.
    runtime.shutdown_background();
    if interrupted { ExitCode::FAILURE } else { code }
}

/// Starts jemalloc's background thread and has it hand pages unused for
/// about a second back to the system (jemalloc's default is 10 s, and
/// without the thread pages are purged only during allocations, so an idle
/// proxy kept the memory of its closed connections).
fn return_freed_memory() {
    use tikv_jemalloc_ctl::{Access, AsName, background_thread, max_background_threads};
    let decay_ms: isize = 1000;
    // Arena 0 exists already; later arenas take the default.
    let set = max_background_threads::write(1)
        .and_then(|()| b"arenas.dirty_decay_ms\0".name().write(decay_ms))
        .and_then(|()| b"arena.0.dirty_decay_ms\0".name().write(decay_ms))
        .and_then(|()| background_thread::write(true));
    if let Err(e) = set {
        tracing::warn!(error = %e, "allocator not tuned; freed memory is kept for reuse");
    }
}

/// How `run` ends: [`RUNNING`] until a second SIGTERM or SIGINT is acted
/// on ([`INTERRUPTED`]: the exit status is 1) or the shutdown is over
/// ([`EXITING`]), whichever comes first.
static EXIT: std::sync::atomic::AtomicU8 = std::sync::atomic::AtomicU8::new(RUNNING);
const RUNNING: u8 = 0;
const INTERRUPTED: u8 = 1;
const EXITING: u8 = 2;

/// Resolves on SIGTERM or SIGINT; a second signal exits at once, once what
/// is still open has been closed and logged (for half a second at most).
async fn shutdown_signal(state: std::sync::Arc<authgate::State>) {
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
        // too (see `run`).
        let ordering = std::sync::atomic::Ordering::SeqCst;
        if EXIT.compare_exchange(RUNNING, INTERRUPTED, ordering, ordering).is_err() {
            return;
        }
        // Not `err_line`: standard error may be a pipe nobody reads, and
        // the write blocked this exit too (probe 205).
        authgate::telemetry::tell_stderr_within(
            "authgate: second signal, exiting now",
            std::time::Duration::from_millis(500),
        );
        // Closed as when the grace period ends, so that their access lines
        // are written: an open tunnel left none.
        state.kill.cancel();
        let _ = tokio::time::timeout(std::time::Duration::from_millis(500), state.tasks.wait()).await;
        authgate::telemetry::flush(std::time::Duration::from_millis(500));
        std::process::exit(1);
    });
}

/// `authgate hash-password`, with the argon2 parameters of `config`, or the
/// defaults when the default config (not `given` with `--config`) is not
/// there.
fn hash_password(config: &Path, given: bool) -> ExitCode {
    // Defaults only when there is no config at all: a config path that is a
    // dangling symlink or a loop is an error, not a silent fallback; and so
    // is a config named with `--config` that is not there: a typo in it
    // dropped the configured parameters without a word (probe 202).
    let params = if given || std::fs::symlink_metadata(config).is_ok() {
        match authgate::config::auth_settings(config) {
            Ok(a) => {
                for line in authgate::cli::users::config_warnings(config, &a.elsewhere) {
                    err_line(format_args!("authgate: {line}"));
                }
                a.auth.argon2
            }
            Err(e) => {
                err_line(format_args!("{e}"));
                return ExitCode::FAILURE;
            }
        }
    } else {
        authgate::auth::password::default_params()
    };
    let password = match read_password() {
        Ok(p) => p,
        Err(e) => return fail(e),
    };
    match authgate::auth::password::hash_password(&password, params) {
        Ok(h) => emit(&format!("{h}\n"), ExitCode::SUCCESS),
        Err(e) => fail(format!("cannot hash: {e}")),
    }
}

/// A password from a no-echo prompt (asked twice) on a TTY, else one line of
/// standard input. Prompts and refusals as `users` words them (they
/// differed; probe 160), an empty password refused before it is asked again.
fn read_password() -> Result<String, String> {
    if std::io::stdin().is_terminal() {
        let first = checked(
            authgate::cli::prompt_hidden("Password: ")
                .map_err(|e| format!("cannot read the password: {e}"))?,
        )?;
        let second = authgate::cli::prompt_hidden("Repeat it: ")
            .map_err(|e| format!("cannot read the password: {e}"))?;
        if first != second {
            return Err("the two passwords differ".into());
        }
        Ok(first)
    } else {
        checked(authgate::cli::password_line(&mut std::io::stdin().lock())?)
    }
}

fn checked(p: String) -> Result<String, String> {
    authgate::auth::password::check_new_password(&p).map(|()| p)
}
