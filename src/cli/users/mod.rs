//! `authgate users ...`: manage the users file from the command line.
//!
//! Owns: reading and validating the users file, editing it with `toml_edit`
//! so that comments, order and layout of everything else survive, the atomic
//! write (temp file in the same folder, fsync, rename, fsync of the folder,
//! owner and mode kept), importing htpasswd files, and `users list`.
//!
//! Deliberately not here: verifying passwords (the proxy does that) and
//! telling a running proxy about the change (it reloads the file itself).
//!
//! Every edit is checked twice: the original file must be valid before
//! anything is touched (so a half-broken file is never rewritten), and the
//! new text must parse as a valid users file before it is written.

// A name as it may appear in a message: bounded, with controls and
// invisible characters escaped.
use crate::telemetry::sanitize_username as shown;
use std::fmt::Write as _;
use std::fs::{self, File, OpenOptions};
use std::io::{self, IsTerminal, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use toml_edit::{Array, DocumentMut, InlineTable, Item, Table, Value};
use unicode_width::UnicodeWidthStr;

mod edit;
mod htpasswd;
mod write;

use edit::*;
use htpasswd::*;
use write::*;

use crate::auth::basic::nfc;
use crate::auth::store::{StoredHash, User};
use crate::config::{
    Auth, ConfigError, auth_settings, check_name, parse_users, refused_name, shell_word, shown_path,
};

/// The `authgate users` subcommands.
#[derive(Debug, clap::Subcommand)]
pub enum Action {
    /// Add a user; asks for the password (twice on a terminal).
    Add {
        /// The new user's name.
        name: String,
        /// A group for access rules (repeatable).
        #[arg(long = "group", value_name = "G")]
        groups: Vec<String>,
        /// Refuse the user from this instant: 2027-03-31T00:00:00Z or 2027-03-31 (midnight UTC).
        #[arg(long, value_name = "RFC3339")]
        expires: Option<String>,
        /// Read the password as one line of standard input.
        #[arg(long)]
        password_stdin: bool,
    },
    /// Set a new password (argon2id, also for users imported with bcrypt).
    Passwd {
        /// The user.
        name: String,
        /// Also set the expiry: 2027-03-31T00:00:00Z or 2027-03-31 (midnight UTC).
        #[arg(long, value_name = "RFC3339", conflicts_with = "no_expires")]
        expires: Option<String>,
        /// Also remove the expiry.
        #[arg(long)]
        no_expires: bool,
        /// Read the password as one line of standard input.
        #[arg(long)]
        password_stdin: bool,
    },
    /// Remove a user.
    Remove {
        /// The user.
        name: String,
    },
    /// Disable a user (refused like a wrong password, kept in the file).
    Disable {
        /// The user.
        name: String,
    },
    /// Enable a disabled user.
    Enable {
        /// The user.
        name: String,
    },
    /// List users: name, groups, disabled, expires, scheme (never hashes).
    List,
    /// Import bcrypt and argon2 entries of an htpasswd file; other schemes
    /// are refused.
    ImportHtpasswd {
        /// The htpasswd file.
        file: PathBuf,
        /// A group given to every imported user (repeatable).
        #[arg(long = "group", value_name = "G")]
        groups: Vec<String>,
    },
}

/// What a command that ran prints: `stdout`, and the entries it refused (one
/// line each, for standard error; any makes the exit status 1).
#[derive(Debug, Default)]
pub struct Outcome {
    /// The users file was changed: done, whatever becomes of the report.
    pub written: bool,
    /// For standard output.
    pub stdout: String,
    /// Entries refused by a command that otherwise went ahead (`import-htpasswd`).
    pub refused: Vec<String>,
    /// For standard error, without changing the exit status: problems of
    /// the config file outside `[auth]`, which the command did not need.
    pub warnings: Vec<String>,
}

/// Why a `users` command changed nothing.
#[derive(Debug, thiserror::Error)]
pub enum UsersError {
    /// The config file or the users file is not valid (file:line:col each).
    #[error("{0}")]
    Invalid(ConfigError),
    /// The request itself cannot be carried out: unknown or duplicate user,
    /// bad name, bad date, no password.
    #[error("{0}")]
    Refused(String),
    /// Reading or writing a file failed.
    #[error("{}: {what}: {}", shown_path(path), crate::config::file::reason(source))]
    Io {
        /// The file or folder.
        path: PathBuf,
        /// What was being done.
        what: &'static str,
        /// The cause.
        source: io::Error,
    },
}

impl UsersError {
    /// One line per problem, for standard error (a multi-line TOML parser
    /// message is joined with `; ` so that each line names its file).
    pub fn lines(&self) -> Vec<String> {
        let one_line =
            |s: String| s.lines().map(str::trim).filter(|l| !l.is_empty()).collect::<Vec<_>>().join("; ");
        match self {
            UsersError::Invalid(e) => e.problems.iter().map(|p| one_line(p.to_string())).collect(),
            other => vec![one_line(other.to_string())],
        }
    }
}

fn refused(msg: impl Into<String>) -> UsersError {
    UsersError::Refused(msg.into())
}

/// Runs one `users` subcommand against the users file named by `config`.
///
/// # Errors
/// Anything that stopped the command; the users file is then unchanged.
pub fn run(config: &Path, action: Action) -> Result<Outcome, UsersError> {
    let settings = auth_settings(config).map_err(UsersError::Invalid)?;
    let mut outcome = run_with(&settings.auth, action, config)?;
    let mut warnings = config_warnings(config, &settings.elsewhere);
    // "Picks the change up by itself" is not true then (probe 190).
    if outcome.written && settings.watched == Some(false) {
        warnings.push(format!(
            "warning: {} sets [reload] watch = false: a running proxy applies this change when it gets SIGHUP",
            shown_path(config)
        ));
    }
    warnings.append(&mut outcome.warnings);
    outcome.warnings = warnings;
    Ok(outcome)
}

/// One line per problem of the config outside `[auth]`, and what it means,
/// for a command that went ahead without those settings.
pub fn config_warnings(config: &Path, elsewhere: &[crate::config::Problem]) -> Vec<String> {
    if elsewhere.is_empty() {
        return Vec::new();
    }
    // A problem displays as one line (control characters escaped).
    let mut lines: Vec<String> = elsewhere.iter().map(|p| format!("warning: {p}")).collect();
    lines.push(format!(
        "warning: {} has the problems above outside [auth]; this command used its [auth] settings, \
         but the proxy will not start with (or reload) this config until they are fixed",
        shown_path(config)
    ));
    lines
}

fn run_with(auth: &Auth, action: Action, config: &Path) -> Result<Outcome, UsersError> {
    let mut file = UsersFile::read(&auth.users_file, config)?;
    let mut outcome = act(&mut file, auth, action)?;
    outcome.written = file.saved;
    // The file is replaced, not rewritten: a name linked to it elsewhere
    // still gives the old content, and a proxy reading that one would not
    // see the change, without a word (probe 349).
    if file.other_links > 0 {
        outcome.warnings.push(format!(
            "warning: {} had {} other hard link(s), which keep the old content: the file is replaced, not \
             rewritten; point the proxy at this name, or link it again",
            shown_path(&file.path),
            file.other_links
        ));
    }
    Ok(outcome)
}

fn act(file: &mut UsersFile, auth: &Auth, action: Action) -> Result<Outcome, UsersError> {
    match action {
        Action::List => {
            file.require_file()?;
            Ok(Outcome { stdout: list(&file.users, SystemTime::now()), ..Outcome::default() })
        }
        Action::Add { name, groups, expires, password_stdin } => {
            let name = user_name(&name)?;
            if file.find(&name).is_some() {
                return Err(refused(format!(
                    "{} already exists in {}; change its password with `{} passwd {}`",
                    user_named(&name),
                    shown_path(&file.path),
                    file.cmd,
                    name_arg_shown(&name)
                )));
            }
            let groups = group_names(groups)?;
            let expires = expires.as_deref().map(parse_expires).transpose()?;
            let hash = new_hash(auth, password_stdin)?;
            let mut doc = file.take_doc();
            add_user(&mut doc, &name, NewUser { hash, groups, expires: expires.map(|e| e.1) })?;
            file.save(doc)?;
            let stdout = format!("added {} to {}\n", user_named(&name), shown_path(&file.path));
            let warnings = expiry_warning(expires.map(|e| e.0)).into_iter().chain(slow_hash_warning(auth));
            Ok(Outcome { stdout, warnings: warnings.collect(), ..Outcome::default() })
        }
        Action::Passwd { name, expires, no_expires, password_stdin } => {
            let key = file.existing(&name)?;
            let expires = expires.as_deref().map(parse_expires).transpose()?;
            let hash = new_hash(auth, password_stdin)?;
            let mut doc = file.take_doc();
            let user = user_mut(&mut doc, &key)?;
            set(user, "password", Value::from(hash));
            if let Some((_, dt)) = &expires {
                set(user, "expires", Value::from(*dt));
            } else if no_expires && let Some(t) = user.as_table_like_mut() {
                t.remove("expires");
            }
            file.save(doc)?;
            let stdout =
                format!("changed the password of {} in {}\n", user_named(&nfc(&key)), shown_path(&file.path));
            let warnings = expiry_warning(expires.map(|e| e.0)).into_iter().chain(slow_hash_warning(auth));
            Ok(Outcome { stdout, warnings: warnings.collect(), ..Outcome::default() })
        }
        Action::Remove { name } => {
            let key = file.existing(&name)?;
            let mut doc = file.take_doc();
            remove_user(&mut doc, &key)?;
            file.save(doc)?;
            Ok(Outcome {
                stdout: format!("removed {} from {}\n", user_named(&nfc(&key)), shown_path(&file.path)),
                ..Outcome::default()
            })
        }
        Action::Disable { name } => set_disabled(file, &name, true),
        Action::Enable { name } => set_disabled(file, &name, false),
        Action::ImportHtpasswd { file: source, groups } => {
            import_htpasswd(file, &source, group_names(groups)?)
        }
    }
}

/// The users file as read: its text (`None` when missing), its users and
/// its editable document.
struct UsersFile {
    /// The configured path, for messages.
    path: PathBuf,
    /// Where to write (see [`written_at`]).
    real: PathBuf,
    original: Option<String>,
    users: Vec<User>,
    doc: DocumentMut,
    /// `authgate users` as this command was run (see
    /// [`crate::config::command`]), for the commands messages suggest.
    cmd: String,
    /// The config file the command was given.
    config: PathBuf,
    /// A change was written.
    saved: bool,
    /// The other hard links the file had when it was replaced.
    other_links: u64,
}

/// A file that is not UTF-8 text, told where, as `check` tells it.
pub(super) fn not_utf8(path: &Path, (line, col, message): (usize, usize, String)) -> UsersError {
    refused(format!("{}:{line}:{col}: {message}", shown_path(path)))
}

impl UsersFile {
    fn read(path: &Path, config: &Path) -> Result<UsersFile, UsersError> {
        let io_err = |what| move |source| UsersError::Io { path: path.to_path_buf(), what, source };
        let real = written_at(path).map_err(io_err("cannot follow the symlink"))?;
        let text = match crate::config::file::read_file(&real) {
            Ok(bytes) => crate::config::file::utf8_text(bytes).map_err(|at| not_utf8(path, at))?,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Ok(UsersFile {
                    path: path.to_path_buf(),
                    real,
                    original: None,
                    users: Vec::new(),
                    doc: DocumentMut::new(),
                    cmd: crate::config::command(config, "users"),
                    config: config.to_path_buf(),
                    saved: false,
                    other_links: 0,
                });
            }
            Err(e) => return Err(io_err("cannot read")(e)),
        };
        let users = parse_users(path, &text, config).map_err(UsersError::Invalid)?;
        let mut doc = text
            .parse::<DocumentMut>()
            .map_err(|e| refused(format!("{}: {}", shown_path(path), e.message())))?;
        // toml_edit keeps one spelling of `users` for every `[users.NAME]`
        // header, the first one's: after `[users .alice]`, an edit wrote
        // `[users .bob]` for every other user (probe 190). Then `users` is
        // written plainly everywhere: the odd header changes, not the rest.
        if doc.to_string() != text
            && let Some(mut users) = doc.as_table_mut().key_mut("users")
        {
            users.fmt();
        }
        Ok(UsersFile {
            path: path.to_path_buf(),
            real,
            original: Some(text),
            users,
            doc,
            cmd: crate::config::command(config, "users"),
            config: config.to_path_buf(),
            saved: false,
            other_links: 0,
        })
    }

    /// The document to edit, taken out of the file (not copied: at the
    /// weight bound a copy cost hundreds of MB more; probe 155).
    fn take_doc(&mut self) -> DocumentMut {
        std::mem::take(&mut self.doc)
    }

    /// The key (as spelled in the file) of the user whose NFC name is `name`.
    fn find(&self, name: &str) -> Option<String> {
        let users = self.doc.get("users")?.as_table_like()?;
        users.iter().map(|(k, _)| k).find(|k| nfc(k) == name).map(str::to_owned)
    }

    /// Refuses commands other than `add` and `import-htpasswd` on a missing file.
    fn require_file(&self) -> Result<(), UsersError> {
        let folder = write::folder_of(&self.path);
        match self.original {
            Some(_) => Ok(()),
            // `users add` creates the file, not its folder (probe 139).
            None if !folder.is_dir() => Err(refused(format!(
                "{} does not exist, nor does its folder {}",
                shown_path(&self.path),
                shown_path(folder)
            ))),
            None => Err(refused(format!(
                "{} does not exist (`{} add NAME` creates it)",
                shown_path(&self.path),
                self.cmd
            ))),
        }
    }

    /// Like [`Self::find`], for commands that need the user to exist.
    fn existing(&self, name: &str) -> Result<String, UsersError> {
        self.require_file()?;
        let name = user_name(name)?;
        self.find(&name).ok_or_else(|| {
            refused(if crate::config::may_hold_a_password(&name) {
                format!("no such user in {} {}", shown_path(&self.path), crate::config::NOT_SHOWN)
            } else {
                format!("no user `{name}` in {}", shown_path(&self.path))
            })
        })
    }

    /// Validates `doc` as a whole users file, then writes it atomically,
    /// unless the file changed on disk since it was read. Lines end as the
    /// file's first line did: toml_edit writes `\n` only, and a file kept
    /// with `\r\n` line ends came back with every line changed.
    ///
    /// A byte order mark the file began with is kept (toml_edit reads past
    /// it and does not write it back: probe 114).
    fn save(&mut self, doc: DocumentMut) -> Result<(), UsersError> {
        let mut text = doc.to_string();
        // Given back before the new text is parsed to validate it: at the
        // weight bound each is hundreds of MB (probe 155).
        drop(doc);
        if self.original.as_deref().is_some_and(|o| o.starts_with('\u{feff}'))
            && !text.starts_with('\u{feff}')
        {
            text.insert(0, '\u{feff}');
        }
        let crlf =
            self.original.as_deref().and_then(|o| o.split_once('\n')).is_some_and(|(l, _)| l.ends_with('\r'));
        if crlf {
            text = text.replace("\r\n", "\n").replace('\n', "\r\n");
        }
        // (Not an internal error: a file at the bound; probe 103.)
        if !crate::config::within_weight(&text) {
            return Err(refused(format!(
                "the users file would be too large to load (past the weight a file may have: about \
                 113,000 users; see the README); nothing written to {}",
                shown_path(&self.path)
            )));
        }
        if let Err(e) = parse_users(&self.path, &text, &self.config) {
            return Err(refused(format!(
                "internal error: the edit would make the users file invalid; nothing written ({})",
                e.to_string().replace('\n', "; ")
            )));
        }
        // Held until this function returns, the rename included.
        let _lock = lock_folder(&self.real)?;
        self.other_links = atomic_write(&self.real, text.as_bytes(), || self.unchanged())?;
        self.saved = true;
        Ok(())
    }

    /// `Ok` when the users file is still the one read, checked right
    /// before the rename; else the refusal that nothing was written.
    fn unchanged(&self) -> Result<(), UsersError> {
        let now = match crate::config::file::read_file(&self.real) {
            Ok(b) => Some(b),
            Err(e) if e.kind() == io::ErrorKind::NotFound => None,
            Err(source) => {
                return Err(UsersError::Io { path: self.path.clone(), what: "cannot read", source });
            }
        };
        // Where the path leads now, too: a symlink pointed elsewhere in
        // the meantime (a Kubernetes `..data` swap) left the file it now
        // names, the one the proxy reads, unchanged, and the command said
        // it was done (probe 100).
        let moved = !written_at(&self.path).is_ok_and(|real| real == self.real);
        if moved || now.as_deref() != self.original.as_deref().map(str::as_bytes) {
            return Err(refused(format!(
                "{} changed while this command ran; nothing written, run it again",
                shown_path(&self.path)
            )));
        }
        Ok(())
    }
}

/// Where a users file at `path` is written: the symlink's target when
/// `path` is a symlink (as a Kubernetes-style mount is), so that the link is
/// kept; `path` otherwise.
fn written_at(path: &Path) -> io::Result<PathBuf> {
    match fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_symlink() => fs::canonicalize(path),
        _ => Ok(path.to_path_buf()),
    }
}

/// NFC-normalises and checks a user name given on the command line.
fn user_name(raw: &str) -> Result<String, UsersError> {
    let name = nfc(raw);
    check_name(&name).map_err(|m| refused(refused_name(&name, &m, shown)))?;
    Ok(name)
}

/// NFC-normalises, checks and de-duplicates `--group` values, keeping their
/// order (`café` composed and decomposed are one group, as in the proxy).
fn group_names(groups: Vec<String>) -> Result<Vec<String>, UsersError> {
    let mut out: Vec<String> = Vec::new();
    for g in groups {
        let g = nfc(&g);
        if let Err(m) = crate::config::check_group(&g) {
            // Not quoted when it may be a passphrase, as in the users file
            // and in rules.
            return Err(refused(if g.is_empty() {
                // (Not `group ``:`, probe 202.)
                format!("--group: {m}")
            } else if crate::config::may_hold_a_password(&g) || g.contains('@') {
                format!("a group: {m} {}", crate::config::NOT_SHOWN)
            } else {
                format!("group `{}`: {m}", shown(&g))
            }));
        }
        if !out.contains(&g) {
            out.push(g);
        }
    }
    Ok(out)
}

/// Parses `--expires`: an RFC 3339 date-time with offset, or a bare date
/// (midnight UTC). Returns the instant and the UTC TOML date-time to write.
fn parse_expires(raw: &str) -> Result<(SystemTime, toml_edit::Datetime), UsersError> {
    // Shown only when it is made of what dates are made of, with a date's
    // `-`: a value with `@` (a pasted `user:password@…`, probe 102),
    // letters (a password typed at the wrong prompt, `--expires S3cretpw`,
    // probe 315) or digits alone (`123456`, probe 319) is not.
    let date_like = raw.bytes().all(|b| b.is_ascii_digit() || b"-:.+TtZz ".contains(&b));
    let value = if date_like && raw.contains('-') && raw.bytes().any(|b| b.is_ascii_digit()) {
        format!(" `{}`", shown(raw))
    } else {
        String::new()
    };
    let bad = || {
        refused(format!(
            "--expires{value}: use an RFC 3339 date-time with offset (2027-03-31T00:00:00Z) or a date (2027-03-31, midnight UTC), from 1970 to 9999"
        ))
    };
    let dt: toml_edit::Datetime = raw.trim().parse().map_err(|_| bad())?;
    // Read as the users file's `expires` is read (this was a copy of that,
    // which had to be kept in step: fractions, offsets, leap seconds).
    let instant = match crate::config::to_system_time(&dt) {
        Some(t) => t,
        // (Said so: a second 60 is RFC 3339; probe 150.)
        None if crate::config::misplaced_leap_second(&dt) => {
            return Err(refused(format!("--expires{value}: {}", crate::config::LEAP_ONLY)));
        }
        None => return Err(bad()),
    };
    Ok((instant, utc_datetime(instant).ok_or_else(bad)?))
}

/// A warning when `[auth.argon2]` makes the hash just written slow to
/// verify (see [`crate::auth::store::costly_new_hashes`]).
fn slow_hash_warning(auth: &Auth) -> Option<String> {
    crate::auth::store::costly_new_hashes(&auth.argon2).map(|m| format!("warning: {m}"))
}

/// A warning, as every other goes out (on standard error, `authgate:
/// warning: …`), when `expires` has passed: it was a `note:` line on
/// standard output, among what a script reads (probe 160).
fn expiry_warning(expires: Option<SystemTime>) -> Vec<String> {
    match expires {
        Some(t) if t <= SystemTime::now() => vec![format!(
            "warning: expires {} has passed: the user cannot log in until it is changed",
            expiry_text(t)
        )],
        _ => Vec::new(),
    }
}

/// Reads a new password and hashes it with the configured argon2id costs.
fn new_hash(auth: &Auth, from_stdin: bool) -> Result<String, UsersError> {
    let password = if from_stdin {
        password_from_stdin()?
    } else if io::stdin().is_terminal() {
        password_from_tty()?
    } else {
        return Err(refused(
            "no terminal to ask for the password on; pass it on standard input with --password-stdin",
        ));
    };
    crate::auth::password::check_new_password(&password).map_err(refused)?;
    crate::auth::password::hash_password(&password, auth.argon2.clone())
        .map(|h| h.to_string())
        .map_err(|e| refused(format!("cannot hash the password: {e}")))
}

/// Asked twice on the terminal (see [`crate::cli::ask_new_password`]).
fn password_from_tty() -> Result<String, UsersError> {
    crate::cli::ask_new_password("New password: ").map_err(|e| match e.as_str() {
        "the two passwords differ" => refused(format!("{e}; nothing changed")),
        _ => refused(e),
    })
}

/// One line of standard input as the password (see [`crate::cli::password_line`]).
/// From a terminal, read without echo: `--password-stdin` typed at a prompt
/// showed the password as it was typed (probe 114).
fn password_from_stdin() -> Result<String, UsersError> {
    if io::stdin().is_terminal() {
        return crate::cli::prompt_hidden("").map_err(|e| refused(format!("cannot read the password: {e}")));
    }
    crate::cli::password_line(&mut io::stdin().lock()).map_err(refused)
}

/// `` user `name` `` in a message, or, for a name that
/// [`may_hold_a_password`](crate::config::may_hold_a_password), a user whose
/// name is not shown, as problems in the users file say it: `users` echoed
/// a hash-shaped name such as `q$w$e$r` that `explain --user` hid (probe
/// 202).
pub(super) fn user_named(name: &str) -> String {
    if crate::config::may_hold_a_password(name) {
        format!("a user {}", crate::config::NOT_SHOWN)
    } else {
        format!("user `{name}`")
    }
}

/// [`name_arg`], or `NAME` for a name [`user_named`] does not show.
pub(super) fn name_arg_shown(name: &str) -> String {
    if crate::config::may_hold_a_password(name) { "NAME".to_owned() } else { name_arg(name) }
}

/// `name` as the NAME argument of a command a message suggests, for a
/// POSIX shell: as it is when it holds nothing a shell reads specially,
/// else in single quotes (a name from an imported htpasswd file may hold
/// `;` or `$(…)`, and a suggestion pasted as shown ran it: probe 114);
/// after `--` when it starts with `-`, which the command would take for an
/// option (probe 119).
pub(super) fn name_arg(name: &str) -> String {
    let word = shell_word(name);
    if name.starts_with('-') { format!("-- {word}") } else { word }
}

/// `t` as the TOML date-time written for it: UTC, with its fraction of a
/// second, if any, without trailing zeros (`…T13:30:00.25Z`).
fn utc_datetime(t: SystemTime) -> Option<toml_edit::Datetime> {
    humantime::format_rfc3339(t).to_string().parse().ok()
}

/// An expiry as the users file has it (see [`utc_datetime`]).
fn expiry_text(t: SystemTime) -> String {
    utc_datetime(t).map_or_else(|| humantime::format_rfc3339_seconds(t).to_string(), |d| d.to_string())
}

/// The widest the GROUPS column of `users list` is padded to, in terminal
/// columns (the others are bounded: a name by 64 characters). A wider cell
/// (a user in 1,000 groups) moves the rest of its own row right, not of
/// every row: padded to the widest, one such user made each of 50,000 rows
/// 5,930 characters (296 MB of output), and one in 10,000 groups made the
/// listing of a 1.3 MB file abort for want of 700 MB (probe 377). (Bounding
/// every column put long names out of line, probe 378.)
const MAX_GROUPS_COLUMN: usize = 48;

/// `users list`: a table of name, groups, disabled, expires, scheme.
fn list(users: &[User], now: SystemTime) -> String {
    let mut rows = vec![["NAME", "GROUPS", "DISABLED", "EXPIRES", "SCHEME"].map(str::to_owned)];
    for u in users {
        let groups = if u.groups.is_empty() { "-".to_owned() } else { u.groups.join(",") };
        let expires = match u.expires {
            None => "-".to_owned(),
            Some(t) if t <= now => format!("{} (expired)", expiry_text(t)),
            Some(t) => expiry_text(t),
        };
        let disabled = if u.disabled { "yes" } else { "no" };
        rows.push([u.name.to_string(), groups, disabled.to_owned(), expires, u.hash().scheme()]);
    }
    // Padded by terminal columns, not characters: a CJK character takes two.
    let mut widths = [0usize; 5];
    for row in &rows {
        for (i, (w, cell)) in widths.iter_mut().zip(row).enumerate() {
            let cap = if i == 1 { MAX_GROUPS_COLUMN } else { usize::MAX };
            *w = (*w).max(cell.width().min(cap));
        }
    }
    let mut out = String::new();
    for row in &rows {
        let mut line = String::new();
        for (cell, w) in row.iter().zip(widths) {
            line.push_str(cell);
            line.extend(std::iter::repeat_n(' ', w.saturating_sub(cell.width()) + 2));
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

fn set_disabled(file: &mut UsersFile, name: &str, disabled: bool) -> Result<Outcome, UsersError> {
    let key = file.existing(name)?;
    let shown_name = nfc(&key);
    let is_disabled = file.users.iter().any(|u| *u.name == *shown_name && u.disabled);
    let word = if disabled { "disabled" } else { "enabled" };
    if is_disabled == disabled {
        return Ok(Outcome {
            stdout: format!("{} is already {word}; nothing changed\n", user_named(&shown_name)),
            ..Outcome::default()
        });
    }
    let mut doc = file.take_doc();
    set(user_mut(&mut doc, &key)?, "disabled", Value::from(disabled));
    file.save(doc)?;
    Ok(Outcome {
        stdout: format!("{word} {} in {}\n", user_named(&shown_name), shown_path(&file.path)),
        ..Outcome::default()
    })
}
