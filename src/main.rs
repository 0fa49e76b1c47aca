//! The `authgate` command line: parse arguments, call the library, map errors
//! to exit codes; plus the allocator's settings, which only a process has.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use authgate::cli::args::{Cli, Command};
use clap::Parser;

/// jemalloc instead of glibc's allocator: with its background thread it gives
/// memory freed by closed connections back to the system (see the README's
/// Performance section); glibc kept it.
#[global_allocator]
static ALLOC: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => return usage_error(e),
    };
    if authgate::cli::args::config_given_twice(std::env::args_os()) {
        use clap::CommandFactory;
        return usage_error(Cli::command().error(
            clap::error::ErrorKind::ArgumentConflict,
            "the argument '--config <CONFIG>' cannot be used multiple times (here before and after the command)",
        ));
    }
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

/// clap's message for a usage error, or, for one that would quote a value
/// that may be a password, authgate's own (see
/// [`usage_message`](authgate::cli::args::usage_message)); exit 2 either way.
fn usage_error(e: clap::Error) -> ExitCode {
    // `--help` and `--version`: clap's exit left a write that failed
    // unsaid, with exit 0 (probe 276).
    if matches!(e.kind(), clap::error::ErrorKind::DisplayHelp | clap::error::ErrorKind::DisplayVersion) {
        return emit(&e.render().to_string(), ExitCode::SUCCESS);
    }
    match authgate::cli::args::usage_message(&e) {
        Some(message) => {
            err_line(message);
            ExitCode::from(2)
        }
        None => e.exit(),
    }
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
                .chain(authgate::auth::store::costly_new_hashes(&snap.auth.argon2))
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
    authgate::blocking::log_panics();
    authgate::server::limits::raise_open_files_limit(snap.limits.max_connections);
    authgate::proxy::upstream_tls::warn_if_no_system_roots(&snap);
    authgate::server::tls::warn_if_out_of_date(&snap.server.tls);
    // As `check` says them: a PROXY listener that believes anyone's header
    // was told by `check` alone (probe 390).
    for line in authgate::config::proxy_protocol_hints(&snap) {
        tracing::warn!("{line}");
    }
    snap.users.warn_of_hashes(|_| true);
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    if snap.server.worker_threads > 0 {
        builder.worker_threads(snap.server.worker_threads);
    }
    // tokio panics, rather than failing, when the system refuses one of its
    // threads (a limit on threads or processes), and the panic, in the
    // middle of the build, left the process hung, with no listener bound
    // (probe 351): first a look that the threads can be had.
    let workers = match snap.server.worker_threads {
        0 => std::thread::available_parallelism().map_or(1, usize::from),
        n => n,
    };
    if !authgate::blocking::room_for_threads(workers + 1) {
        return fail(format!("cannot start the runtime: {}", authgate::blocking::NoThread));
    }
    let built = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| builder.enable_all().build()));
    let runtime = match built {
        Ok(Ok(r)) => r,
        Ok(Err(e)) => return fail(format!("cannot start the runtime: {e}")),
        Err(_) => return fail(format!("cannot start the runtime: {}", authgate::blocking::NoThread)),
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
        match authgate::run(state.clone(), listeners, authgate::server::signals::shutdown_signal(state)).await
        {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => fail(e),
        }
    });
    let interrupted = authgate::server::signals::interrupted();
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
    if authgate::cli::stdout_is_null() {
        return fail(
            "standard output is closed or /dev/null: the hash would be lost; send it to a file or a pipe"
                .to_owned(),
        );
    }
    let password = match authgate::cli::read_new_password() {
        Ok(p) => p,
        Err(e) => return fail(e),
    };
    if let Some(slow) = authgate::auth::store::costly_new_hashes(&params) {
        err_line(format_args!("authgate: warning: {slow}"));
    }
    match authgate::auth::password::hash_password(&password, params) {
        Ok(h) => emit(&format!("{h}\n"), ExitCode::SUCCESS),
        Err(e) => fail(format!("cannot hash: {e}")),
    }
}
