//! Config problems are reported with file:line:col (and never leak a hash),
//! through the library and through the real `authgate` binary.

mod common;
#[path = "support/pki.rs"]
mod pki;

use std::path::Path;
use std::process::{Command, Output, Stdio};

use common::*;

/// A minimal valid config (no listener is bound by `load`).
const GOOD_CONFIG: &str = r#"[server]
listen = ["127.0.0.1:3128"]
realm = "corp"

[auth]
users_file = "users.toml"
cache_ttl = "5m"

[auth.argon2]
m_cost = 8
t_cost = 1
p_cost = 1
"#;

fn good_users() -> String {
    users_toml(&[("alice", "alice-pw")])
}

/// Writes `config` and `users` into a fresh dir and loads them.
fn load(config: &str, users: &str) -> (TempDir, Result<authgate::Snapshot, String>) {
    let dir = TempDir::new();
    let path = dir.write("authgate.toml", config);
    dir.write("users.toml", users);
    let result = authgate::config::load(&path).map_err(|e| e.to_string());
    (dir, result)
}

/// A hash or passphrase pasted where a key of the config file belongs is
/// located, not echoed (a reload logs the problem), in a table's name as
/// well; a key shaped like a setting's name, as a typo is, is still quoted.
#[test]
fn a_secret_typed_as_a_config_key_is_located_not_echoed() {
    let hash = "$argon2id$v=19$m=8,t=1,p=1$secretsalt$secrethash";
    for (config, at) in [
        (format!("{GOOD_CONFIG}\"{hash}\" = 1\n"), "authgate.toml:13:1:"),
        (format!("[server]\n\"correct horse battery\" = true\n{}", &GOOD_CONFIG[9..]), "authgate.toml:2:1:"),
        (format!("{GOOD_CONFIG}[\"{hash}\"]\nx = 1\n"), "authgate.toml:13:"),
        (format!("{GOOD_CONFIG}[auth.\"S3cret pw\"]\n"), "authgate.toml:13:"),
    ] {
        let (_dir, result) = load(&config, &good_users());
        let err = result.expect_err("refused");
        assert!(err.contains(at), "{err}");
        for secret in ["secretsalt", "secrethash", "horse", "S3cret"] {
            assert!(!err.contains(secret), "{secret} echoed: {err}");
        }
    }
    let (_dir, result) = load(&format!("{GOOD_CONFIG}cach_ttl = \"1m\"\n"), &good_users());
    let err = result.expect_err("refused");
    assert!(err.contains("unknown field `cach_ttl`, expected one of"), "{err}");
}

fn load_err(config: &str, users: &str) -> String {
    match load(config, users).1 {
        Ok(_) => panic!("config should have been rejected:\n{config}\n---\n{users}"),
        Err(e) => e,
    }
}

/// An integer past TOML's range names its setting (the parser's message,
/// "number too large to fit in target type", named nothing; probe 130),
/// and only a setting's name: a key may be a password typed there.
#[test]
fn an_integer_too_large_for_toml_names_its_setting() {
    let err = load_err("[limits]\nmax_header_bytes = 99999999999999999999\n", &good_users());
    assert!(err.contains("authgate.toml:2:20: limits.max_header_bytes: number too large"), "{err}");
    let err = load_err("[limits]\nmax_connections = -99999999999999999999\n", &good_users());
    assert!(err.contains("limits.max_connections: number too small"), "{err}");
    let err = load_err("[[rules]]\naction = \"allow\"\nports = [1, 99999999999999999999]\n", &good_users());
    assert!(err.contains("rules.ports: number too large"), "{err}");
    // Not an integer setting: the parser's words, no setting, no range;
    // also a key of one in another table, and a table read off a line in
    // a string (probe 134).
    for (table, key) in [
        ("limits", "S3cretPw"),
        ("server", "via"),
        ("limits", "idle_timeout"),
        ("server", "max_connections"),
        ("server]\nrealm = \"\"\"\n[S3cretPw\n\"\"\"\n#", "worker_threads"),
    ] {
        let err = load_err(&format!("[{table}]\n{key} = 99999999999999999999\n"), &good_users());
        assert!(
            err.contains("number too large") && !err.contains("S3cretPw") && !err.contains("range"),
            "{err}"
        );
    }
}

/// A duration past a bound of its own is told that bound, not first the
/// 365 days of all durations (`delay = "1y"` was told "at most 365 days",
/// and then `365d` "at most 60s"; probe 133).
#[test]
fn a_duration_past_its_own_bound_is_told_that_bound() {
    for value in ["1y", "365d", "61s"] {
        let err = load_err(&format!("[auth.throttle]\ndelay = \"{value}\"\n"), &good_users());
        assert!(err.contains("auth.throttle.delay: must be at most 60s") && !err.contains("365"), "{err}");
    }
}

/// A capital `M` is months to the duration parser, and every other capital
/// unit an error: `"5M"` meant five minutes and loaded as five months
/// (probe 160). It is refused, with what to write; `months` still reads.
#[test]
fn a_capital_m_in_a_duration_is_refused() {
    for value in ["5M", "1h 5M", "2M30s"] {
        let err = load_err(&format!("[auth]\ncache_ttl = \"{value}\"\n"), &good_users());
        assert!(
            err.contains(":2:13: auth.cache_ttl: bad duration") && err.contains("`M` is months"),
            "{err}"
        );
    }
    let (_dir, result) =
        load("[auth]\nusers_file = \"users.toml\"\ncache_ttl = \"2months\"\n", &good_users());
    assert!(result.is_ok(), "{:?}", result.err().map(|e| e.to_string()));
}

/// humantime reads digits across spaces as one number: `"1 0s"` loaded as
/// 10 s, and `"1 30m"` (a typo for `"1h 30m"`) as 130 minutes, without a
/// word (probe 228). A space inside a number is refused; spaces between a
/// unit and the next number, around the value, and fractions still read
/// (one that does not, of an hour, is told why).
#[test]
fn a_space_inside_a_durations_number_is_refused() {
    for value in ["1 0s", "1 30m", "1. 5s", "1 .5s", "1h 3 0m"] {
        let err = load_err(&format!("[limits]\nidle_timeout = \"{value}\"\n"), &good_users());
        assert!(
            err.contains(":2:16: limits.idle_timeout: bad duration")
                && err.contains("a space inside a number"),
            "{value}: {err}"
        );
    }
    // A fraction of an hour that is no whole number of seconds was told
    // "number is too large".
    for value in ["0.0001h", "0.00001d", "0.00001y", "0.0000005ms", "1.0ns"] {
        let err = load_err(&format!("[limits]\nidle_timeout = \"{value}\"\n"), &good_users());
        assert!(
            err.contains("a fraction must come to whole") && !err.contains("too large"),
            "{value}: {err}"
        );
    }
    // With the same length in units that read, worked out from the value:
    // a fixed "360ms" (right for "0.0001h" only) set "0.001h" ten times too
    // short (probe 300).
    for (value, instead) in [
        ("0.0001h", "write \"360ms\""),
        ("0.001h", "write \"3s 600ms\""),
        ("1.5h 0.0001d", "write \"1h 30m 8s 640ms\""),
        ("0.0000005ms", "comes to part of a nanosecond"),
        // A month as humantime reads it (30.44 days), every spelling of a
        // unit, a space before it, zeros ending a fraction; too long said
        // so (probe 305).
        ("0.0001months", "write \"4m 23s 1ms 600us\""),
        ("1month 0.0001h", "write \"1month 360ms\""),
        ("0.0001hrs", "write \"360ms\""),
        ("0.0001 h", "write \"360ms\""),
        ("1.000000000000000000000000000000s", "write \"1s\""),
        ("0.0001weeks 660565month", "and at most 365 days"),
    ] {
        let err = load_err(&format!("[limits]\nidle_timeout = \"{value}\"\n"), &good_users());
        assert!(err.contains(instead), "{value}: {err}");
    }
    // A number without a unit is told to add one, with its own value: the
    // example was humantime's "0sec", refused by most settings, and
    // "1sec" for "1.5" (probe 300).
    for (value, instead) in [("0.5", "\"0.5s\""), ("1.5", "\"1.5s\""), ("30", "\"30s\"")] {
        let err = load_err(&format!("[limits]\nshutdown_grace = \"{value}\"\n"), &good_users());
        assert!(
            err.contains("a unit is needed") && err.contains(instead) && !err.contains("sec or"),
            "{value}: {err}"
        );
    }
    // Too large indeed, fraction or not: humantime's words.
    for value in ["99999999999999999999.5s", "999999999999.5y"] {
        let err = load_err(&format!("[limits]\nidle_timeout = \"{value}\"\n"), &good_users());
        assert!(err.contains("too large") && !err.contains("a fraction"), "{value}: {err}");
    }
    for (value, seconds) in [
        ("1h 30m", 5400.0),
        (" 90s ", 90.0),
        ("1.5s", 1.5),
        ("1h\t30m", 5400.0),
        ("0.001m", 0.06),
        ("0.5h", 1800.0),
    ] {
        let (_dir, result) = load(
            &format!("[auth]\nusers_file = \"users.toml\"\n[limits]\nidle_timeout = \"{value}\"\n"),
            &good_users(),
        );
        let snap = result.unwrap_or_else(|e| panic!("{value}: {e}"));
        assert_eq!(snap.limits.idle_timeout.as_secs_f64(), seconds, "{value}");
    }
}

/// A port that is neither a number nor a range string (`443.0`, `true`)
/// names its rule and setting, at the element: serde's message named
/// neither and pointed at the array (probe 230).
#[test]
fn a_port_of_another_type_names_its_rule_at_the_element() {
    let err = load_err(
        "[policy]\ndefault = \"deny\"\n[[rules]]\nname = \"web\"\naction = \"allow\"\nports = [80, 443.0, true, [8080], {a = 1}, 1979-05-27]\n",
        &good_users(),
    );
    assert!(err.contains(":6:14: rule `web`: ports: a floating-point number is not a port"), "{err}");
    assert!(err.contains(":6:21: rule `web`: ports: a boolean is not a port"), "{err}");
    // "an array", not "a array" (probe 281).
    assert!(err.contains(":6:27: rule `web`: ports: an array is not a port"), "{err}");
    // Named as the other errors name them (probe 292).
    assert!(err.contains(":6:35: rule `web`: ports: an inline table is not a port"), "{err}");
    assert!(err.contains(":6:44: rule `web`: ports: a date or time is not a port"), "{err}");
}

#[test]
fn good_config_loads() {
    let (_dir, result) = load(GOOD_CONFIG, &good_users());
    let snap = result.unwrap_or_else(|e| panic!("good config rejected:\n{e}"));
    assert_eq!(snap.server.realm, "corp");
    assert_eq!(snap.users.len(), 1);
}

#[test]
fn unknown_key_is_reported_with_line_and_column() {
    let config = "[server]\nlisten = [\"127.0.0.1:3128\"]\ncolour = \"blue\"\n";
    let err = load_err(config, &good_users());
    assert!(err.contains("authgate.toml:3:1"), "{err}");
    assert!(err.contains("colour"), "the message should name the key: {err}");
}

#[test]
fn bad_duration_is_reported_with_line_and_column() {
    let config = "[auth]\ncache_ttl = \"5 parsecs\"\n";
    let err = load_err(config, &good_users());
    assert!(err.contains("authgate.toml:2:13"), "{err}");
    assert!(err.contains("cache_ttl"), "{err}");
}

#[test]
fn new_limits_are_checked_with_line_and_column() {
    let config = "[auth.throttle]\ndelay = \"2m\"\n[limits]\nsend_timeout = \"0s\"\n";
    let err = load_err(config, &good_users());
    assert!(err.contains("authgate.toml:2:9") && err.contains("auth.throttle.delay"), "{err}");
    assert!(err.contains("authgate.toml:4:16") && err.contains("limits.send_timeout"), "{err}");
    let (_dir, snap) =
        load("[auth.throttle]\ndelay = \"0s\"\n[limits]\nsend_timeout = \"5s\"\n", &good_users());
    let snap = snap.expect("valid");
    assert_eq!(snap.auth.throttle.delay, std::time::Duration::ZERO);
    assert_eq!(snap.limits.send_timeout, std::time::Duration::from_secs(5));
}

#[test]
fn bad_listen_address_is_reported_with_line_and_column() {
    let config = "[server]\nlisten = [\"127.0.0.1:3128\", \"localhost:99999\"]\n";
    let err = load_err(config, &good_users());
    assert!(err.contains("authgate.toml:2:29"), "{err}");
    assert!(err.contains("localhost:99999"), "{err}");
}

#[test]
fn every_problem_is_reported_not_just_the_first() {
    let config = "[server]\nlisten = [\"nowhere\"]\n\n[auth]\ncache_ttl = \"soon\"\n";
    let err = load_err(config, &good_users());
    assert!(err.contains("authgate.toml:2:11"), "{err}");
    assert!(err.contains("authgate.toml:5:13"), "{err}");
    // In file order, whatever order the sections are checked in.
    let config = "[auth]\ncache_ttl = \"soon\"\n\n[server]\nlisten = [\"nowhere\"]\n";
    let err = load_err(config, &good_users());
    let at: Vec<&str> = err.lines().map(|l| l.split(": ").next().unwrap_or("")).collect();
    assert!(at[0].ends_with("authgate.toml:2:13") && at[1].ends_with("authgate.toml:5:11"), "{err}");
}

/// A value of the wrong type in the config file names its setting, also in
/// an array of tables and an inline table: it was "invalid type: a string,
/// expected a boolean", with only a line and column to find it by.
#[test]
fn a_config_value_of_the_wrong_type_names_its_setting() {
    each_refused_saying(&[
        (
            "[server]\nvia = \"yes\"\n",
            "authgate.toml:2:7: server.via: invalid type: a string, expected a boolean",
        ),
        (
            "[[server.tls]]\nlisten = [\"127.0.0.1:1\"]\n",
            "authgate.toml:2:10: server.tls.listen: invalid type: an array, expected a string",
        ),
        ("limits = { max_connections = \"many\" }\n", "limits.max_connections: invalid type: a string"),
        // A table where a value belongs, by dotted keys or a header: named,
        // and what it expects told right. It was "invalid type: a table,
        // expected a string" for an integer or an array, unnamed (probe 272).
        (
            "[limits]\nmax_connections.x = 1\n",
            "authgate.toml:2:17: limits.max_connections: invalid type: a table, expected an integer",
        ),
        (
            "[limits.idle_timeout]\nx = 1\n",
            "authgate.toml:1:1: limits.idle_timeout: invalid type: a table, expected a string",
        ),
        (
            "[reload]\nwatch.x = 1\n",
            "authgate.toml:2:1: reload.watch: invalid type: a table, expected a boolean",
        ),
        (
            "[[rules]]\nname = \"r\"\naction = \"deny\"\nports.x = 1\n",
            "authgate.toml:4:7: rules.ports: invalid type: a table, expected an array",
        ),
        (
            "[server.tls]\nlisten = \"127.0.0.1:1\"\n",
            "authgate.toml:1:1: server.tls: invalid type: a table, expected an array",
        ),
        (
            "[auth.argon2.m_cost]\n",
            "authgate.toml:1:1: auth.argon2.m_cost: invalid type: a table, expected an integer",
        ),
    ]);
}

/// Each config of `cases`, with good users, is refused with its problem.
fn each_refused_saying(cases: &[(&str, &str)]) {
    for (config, said) in cases {
        let err = load_err(config, &good_users());
        assert!(err.contains(said), "{config}: {err}");
    }
}

/// A key missing from a table names the table, and a rule by its name: it
/// was "missing field `action`" at a `[[rules]]` header, with neither
/// (probe 272).
#[test]
fn a_missing_key_names_its_table() {
    each_refused_saying(&[
        (
            "[[rules]]\nname = \"a\"\naction = \"deny\"\n[[rules]]\nname = \"web\"\nhosts = [\"x\"]\n",
            "authgate.toml:4:1: rule `web`: missing field `action`",
        ),
        ("[[rules]]\naction = \"deny\"\n", "authgate.toml:1:1: rules: missing field `name`"),
        ("[[rules]]\nname = \"a b\"\nhosts = [\"x\"]\n", "authgate.toml:1:1: rules: missing field `action`"),
        (
            "[[server.tls]]\nlisten = \"127.0.0.1:1\"\ncert = \"c.pem\"\n",
            "authgate.toml:1:1: server.tls: missing field `key`",
        ),
    ]);
}

/// In the users file too: a value of the wrong type or an unknown key (which
/// end serde's reading of the file) in one user's `[users.NAME]` table is
/// reported with the problems of the users around it. It hid them all, so
/// an admin fixed a broken file one `check` at a time (probe 190).
#[test]
fn a_users_file_type_error_does_not_hide_the_other_users_problems() {
    let good = good_users();
    let hash = good.lines().find_map(|l| l.strip_prefix("password = ")).unwrap_or_else(|| panic!("{good}"));
    let users = format!(
        "[users.alice]\npassword = \"$hunter2\"\ngroups = [\"a b\"]\n\
         [users.frank]\ndisabled = \"yes\"\npassword = {hash}\n\
         [users.gina]\npassword = {hash}\npasword = \"x\"\n\
         [users.hal]\npassword = 5\n\
         [users.ivy]\ngroups = [\"\"]\npassword = {hash}\n\
         [users.jo]\ngroups = [\"ok\"]\n"
    );
    let err = load_err(GOOD_CONFIG, &users);
    let at: Vec<&str> = err
        .lines()
        .filter_map(|l| l.split(": ").next()?.rsplit_once("users.toml:"))
        .map(|(_, at)| at)
        .collect();
    // alice's hash and group, frank's type, gina's key, hal's type, ivy's
    // group, jo's missing password: in file order.
    assert_eq!(at, ["2:12", "3:11", "5:12", "9:1", "11:12", "13:11", "15:1"], "{err}");
    assert!(err.contains("user `frank`: disabled: invalid type"), "{err}");
    assert!(err.contains("user `jo`: missing field `password`"), "{err}");
    // An unknown key names its user too (it named none; probe 197).
    assert!(err.contains("users.toml:9:1: user `gina`: unknown field `pasword`"), "{err}");
    // A syntax error still stops the reading: what follows it cannot be
    // read as the admin meant it.
    let err = load_err(GOOD_CONFIG, &format!("{users}[users.kim\npassword = 5\n"));
    assert_eq!(err.lines().filter(|l| l.contains("users.toml:")).count(), 1, "{err}");
    // So does a user written inline, whose table is not blanked out.
    let inline = "[users]\nlee = { password = 5 }\n[users.hal]\npassword = 5\n";
    let err = load_err(GOOD_CONFIG, inline);
    assert_eq!(err.lines().filter(|l| l.contains("users.toml:")).count(), 1, "{err}");
}

#[test]
fn bad_password_hash_names_the_user_and_never_the_hash() {
    let secret_ish = "$argon2id$v=19$m=8,t=1,p=1$c2FsdHNhbHQ$Zm9vYmFy!!NOTBASE64";
    let users = format!(
        "[users.alice]\npassword = {}\n\n[users.bob]\npassword = {}\n",
        toml_str(&hash("alice-pw")),
        toml_str(secret_ish)
    );
    let err = load_err(GOOD_CONFIG, &users);
    assert!(err.contains("users.toml:5:12"), "{err}");
    assert!(err.contains("bob"), "the message should name the user: {err}");
    assert!(!err.contains("NOTBASE64"), "the hash leaked: {err}");
    assert!(!err.contains("c2FsdHNhbHQ"), "the salt leaked: {err}");
}

/// A password typed where its hash belongs reads as a PHC string whose
/// algorithm is the password (`"$hunter2"`): only a scheme's own name is
/// shown, also when the rest of its string is not PHC (`$apr1$`, `$5$`
/// said "salt invalid"). No character of a value is quoted (a salt or a
/// parameter with a `!` or an `S` in it was quoted that character).
#[test]
fn a_password_typed_as_a_hash_is_not_named_as_its_algorithm() {
    for (typed, said) in [
        ("$hunter2", "unsupported algorithm (not named"),
        ("$dlbtwopwx$Dl2bMOREzz", "unsupported algorithm (not named"),
        ("$scrypt$ln=16,r=8,p=1$aGVsbG8$aGFzaGhhc2hoYXNoaGFzaA", "unsupported algorithm `scrypt`"),
        ("$apr1$abc$def", "unsupported algorithm `apr1`"),
        ("$5$rounds=5000$abc$def", "unsupported algorithm `5`"),
        (
            "$argon2id$v=19$m=64,t=1,p=1$S3cret!Pass$aGFzaGhhc2hoYXNoaGFzaA",
            "(the salt holds a character it may not)",
        ),
        ("$argon2id$v=19$m=64,t=1,p=1$abc$aGFzaGhhc2hoYXNoaGFzaA", "(the salt is too short)"),
        (
            "$argon2id$v=19$m=Qw3rtyPass,t=1,p=1$aGVsbG8xMjM0$aGFzaGhhc2hoYXNoaGFzaA",
            "(a parameter's value holds a character it may not)",
        ),
    ] {
        let users = format!("[users.bob]\npassword = {}\n", toml_str(typed));
        let err = load_err(GOOD_CONFIG, &users);
        assert!(
            err.contains("users.toml:2:12: user `bob`: password: ") && err.contains(said),
            "{typed}: {err}"
        );
        for secret in ["hunter2", "dlbtwopwx", "'!'", "'S'", "'Q'", "to short"] {
            assert!(!err.contains(secret), "{secret} in {err}");
        }
    }
}

#[test]
fn missing_users_file_names_the_path_it_looked_for() {
    let dir = TempDir::new();
    let config = GOOD_CONFIG.replace("users.toml", "nope/people.toml");
    let path = dir.write("authgate.toml", &config);
    let err = authgate::config::load(&path).expect_err("a missing users file must be an error").to_string();
    let looked_for = dir.path().join("nope/people.toml");
    assert!(err.contains(&looked_for.display().to_string()), "should name {}: {err}", looked_for.display());
}

fn authgate_bin(args: &[&str], stdin: Option<&str>) -> Output {
    use std::io::Write;
    let mut child = Command::new(env!("CARGO_BIN_EXE_authgate"))
        .args(args)
        .stdin(if stdin.is_some() { Stdio::piped() } else { Stdio::null() })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run the authgate binary");
    if let Some(input) = stdin {
        // A command that fails before it reads (a config error) may have
        // exited already: the write then meets a closed pipe, which is not
        // the test's failure (its output and exit code say what happened).
        let _ = child.stdin.take().unwrap().write_all(input.as_bytes());
    }
    child.wait_with_output().unwrap()
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn config_arg(p: &Path) -> String {
    p.display().to_string()
}

/// A listener that cannot be bound is told in words for the admin, not
/// the system's ("Cannot assign requested address (os error 99)"; probe
/// 160). 192.0.2.1 (TEST-NET-1) is on no interface here: only the bind is
/// tried, nothing is sent.
#[test]
fn a_listener_that_cannot_be_bound_is_told_why() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let taken = taken.local_addr().unwrap();
    let dir = TempDir::new();
    dir.write("users.toml", good_users());
    for (listen, says) in [
        (taken.to_string(), format!("authgate: cannot listen on {taken}: the address is in use (by a listener, or by a connection with it as its local port)")),
        (
            "192.0.2.1:3128".to_owned(),
            "authgate: cannot listen on 192.0.2.1:3128: no network interface of this machine has that address"
                .to_owned(),
        ),
    ] {
        let path = dir.write(
            "authgate.toml",
            format!("[server]\nlisten = [\"{listen}\"]\n[auth]\nusers_file = \"users.toml\"\n[dns]\nservers = [\"127.0.0.1:1\"]\n"),
        );
        let out = authgate_bin(&["--config", &config_arg(&path)], None);
        assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
        assert!(text(&out.stderr).contains(&says), "{}", text(&out.stderr));
        assert!(!text(&out.stderr).contains("os error"), "{}", text(&out.stderr));
    }
}

/// An IPv6 listener takes IPv4 connections too, whatever the host's
/// `net.ipv6.bindv6only` says, as `check` takes it to (`[::]:P` overlaps
/// `0.0.0.0:P`, `[::ffff:127.0.0.1]:P` is 127.0.0.1:P). Run in a network
/// namespace of its own (`unshare -rn`) with the sysctl at 1: `[::]:3128`
/// answers a client of 127.0.0.1, and `[::ffff:127.0.0.2]:3129` binds (it
/// failed with "Invalid argument", and `0.0.0.0:P` beside `[::]:P`, which
/// `check` refuses, bound; probe 173). Where user namespaces are not
/// allowed, the test says so and checks nothing.
#[test]
fn ipv6_listeners_take_ipv4_connections_even_with_bindv6only_set() {
    if !Command::new("unshare").args(["-rn", "true"]).status().is_ok_and(|s| s.success()) {
        eprintln!("SKIPPED: `unshare -rn` is not allowed here (no user namespaces)");
        return;
    }
    let dir = TempDir::new();
    dir.write("users.toml", good_users());
    let path = dir.write(
        "authgate.toml",
        "[server]\nlisten = [\"[::]:3128\", \"[::ffff:127.0.0.2]:3129\"]\n[auth]\nusers_file = \"users.toml\"\n[dns]\nservers = [\"127.0.0.1:1\"]\n",
    );
    // In the namespace: the sysctl at 1, loopback up, the proxy started,
    // and a request without credentials to each listener once it answers.
    let script = r#"echo 1 > /proc/sys/net/ipv6/bindv6only || exit 97
ip link set lo up || exit 97
"$1" --config "$2" >/dev/null 2>"$3" & pid=$!
ask() { curl -s -o /dev/null -w '%{http_code}' --max-time 2 -x "http://$1" http://127.0.0.1:9/; }
i=0
while [ $i -lt 200 ] && kill -0 $pid 2>/dev/null; do
  [ "$(ask 127.0.0.1:3128)" = 407 ] && break
  sleep 0.05; i=$((i+1))
done
echo "$(ask 127.0.0.1:3128) $(ask 127.0.0.2:3129)"
kill $pid 2>/dev/null; wait $pid
"#;
    let stderr = dir.path().join("stderr");
    let out = Command::new("unshare")
        .args(["-rn", "sh", "-c", script, "sh", env!("CARGO_BIN_EXE_authgate"), &config_arg(&path)])
        .arg(&stderr)
        .output()
        .expect("unshare runs");
    let said = std::fs::read_to_string(&stderr).unwrap_or_default();
    assert_ne!(out.status.code(), Some(97), "could not set up the namespace: {}", text(&out.stderr));
    assert_eq!(text(&out.stdout).trim(), "407 407", "authgate said: {said}");
}

#[test]
fn check_command_prints_line_and_column_and_exits_1() {
    let dir = TempDir::new();
    let path = dir.write("authgate.toml", "[server]\nlisten = [\"127.0.0.1:3128\"]\ncolour = \"blue\"\n");
    dir.write("users.toml", good_users());
    let out = authgate_bin(&["check", "--config", &config_arg(&path)], None);
    assert_eq!(out.status.code(), Some(1), "stderr: {}", text(&out.stderr));
    assert!(text(&out.stderr).contains("authgate.toml:3:1"), "stderr: {}", text(&out.stderr));
}

#[test]
fn check_command_says_ok_for_a_good_config() {
    let dir = TempDir::new();
    let path = dir.write("authgate.toml", GOOD_CONFIG);
    dir.write("users.toml", good_users());
    let out = authgate_bin(&["check", "--config", &config_arg(&path)], None);
    assert_eq!(out.status.code(), Some(0), "stderr: {}", text(&out.stderr));
    assert!(text(&out.stdout).starts_with("ok"), "stdout: {}", text(&out.stdout));
}

#[test]
fn hash_password_reads_stdin_and_prints_a_usable_argon2id_hash() {
    let dir = TempDir::new();
    let path = dir.write("authgate.toml", GOOD_CONFIG);
    let out =
        authgate_bin(&["hash-password", "--config", &config_arg(&path)], Some("correct horse: battery\n"));
    assert_eq!(out.status.code(), Some(0), "stderr: {}", text(&out.stderr));
    let stdout = text(&out.stdout);
    let phc = stdout.trim();
    assert!(phc.starts_with("$argon2id$"), "stdout: {stdout}");
    assert!(!stdout.contains("correct horse"), "the password was echoed: {stdout}");

    // The printed hash works as a users-file entry for that password.
    let users = format!("[users.carol]\npassword = {}\n", toml_str(phc));
    let (_d, result) = load(GOOD_CONFIG, &users);
    let snap = result.unwrap_or_else(|e| panic!("hash-password output rejected:\n{e}"));
    assert_eq!(snap.users.len(), 1);
    let parsed = argon2::password_hash::PasswordHashString::new(phc).unwrap();
    assert!(authgate::auth::password::verify_argon2(&parsed, "correct horse: battery"));
    assert!(!authgate::auth::password::verify_argon2(&parsed, "correct horse: battery\n"));
    // A byte order mark before it (a file saved by a Windows editor) is no
    // part of it: it was, and the user could not log in (probe 391).
    let out = authgate_bin(&["hash-password", "--config", &config_arg(&path)], Some("\u{feff}pw\r\n"));
    assert_eq!(out.status.code(), Some(0), "stderr: {}", text(&out.stderr));
    let marked = argon2::password_hash::PasswordHashString::new(text(&out.stdout).trim()).unwrap();
    assert!(authgate::auth::password::verify_argon2(&marked, "pw"), "the mark was hashed with the password");

    // Standard output closed (`>&-`: the runtime opens /dev/null in its
    // place) or /dev/null: the hash, its one output, was lost with exit 0
    // (probe 391).
    let mut child = Command::new(env!("CARGO_BIN_EXE_authgate"))
        .args(["hash-password", "--config", &config_arg(&path)])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // (Refused before it reads: the write may meet a closed pipe.)
    let _ = std::io::Write::write_all(&mut child.stdin.take().unwrap(), b"pw\n");
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    assert!(text(&out.stderr).contains("standard output is closed or /dev/null"), "{}", text(&out.stderr));
    // Standard input is read up to 4096 bytes (an endless stream such as
    // /dev/zero once grew memory until the allocator aborted), and a
    // password longer than 1024 bytes is refused: it could never be sent.
    for (input, why) in [
        ("z".repeat(5000), "longer than 1024 bytes refused"),
        ("y".repeat(2000) + "\n", "longer than 1024 bytes refused"),
    ] {
        let out = authgate_bin(&["hash-password", "--config", &config_arg(&path)], Some(&input));
        assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
        assert!(text(&out.stderr).contains(why), "{}", text(&out.stderr));
        assert!(out.stdout.is_empty());
    }
}

/// The realm goes verbatim into `Proxy-Authenticate: Basic realm="…"`:
/// whatever cannot stand there unchanged is refused at load, with its place.
#[test]
fn a_realm_that_cannot_be_sent_verbatim_is_refused_with_line_and_column() {
    let long = "r".repeat(101);
    for bad in
        ["\"\"", "'say \"hi\"'", "'back\\slash'", "\"tab\\there\"", "\"Zürich\"", &format!("\"{long}\"")]
    {
        let config = format!(
            "[server]\nlisten = [\"127.0.0.1:3128\"]\nrealm = {bad}\n[auth]\nusers_file = \"users.toml\"\n"
        );
        let err = load_err(&config, &good_users());
        assert!(err.contains("authgate.toml:3:9") && err.contains("server.realm"), "{bad}: {err}");
    }
    let config = "[server]\nlisten = [\"127.0.0.1:3128\"]\nrealm = \"Corp proxy (EU) - log in\"\n[auth]\nusers_file = \"users.toml\"\n";
    let (_dir, snap) = load(config, &good_users());
    assert_eq!(snap.unwrap().server.realm, "Corp proxy (EU) - log in");
}

/// A proxy that would listen on nothing, or twice on one address, is refused
/// at load (and by `authgate check`) instead of starting useless or failing
/// later at bind time.
#[test]
fn no_listener_and_duplicate_listeners_are_refused_with_line_and_column() {
    let users = good_users();
    let err = load_err("[server]\nlisten = []\n[auth]\nusers_file = \"users.toml\"\n", &users);
    assert!(err.contains("authgate.toml:2:10") && err.contains("no listener"), "{err}");

    let twice =
        "[server]\nlisten = [\"127.0.0.1:3128\", \"127.0.0.1:3128\"]\n[auth]\nusers_file = \"users.toml\"\n";
    let err = load_err(twice, &users);
    assert!(err.contains("authgate.toml:2:29") && err.contains("127.0.0.1:3128 is listed twice"), "{err}");

    // Port 0 (any free port) may appear more than once.
    let (_dir, ok) = load(
        "[server]\nlisten = [\"127.0.0.1:0\", \"127.0.0.1:0\"]\n[auth]\nusers_file = \"users.toml\"\n",
        &users,
    );
    assert_eq!(ok.unwrap().server.listen.len(), 2);

    // A TLS listener on a plain listener's address, whose certificate is
    // missing too: both are told (the certificate was not read, and its
    // problem showed only once the clash was fixed; probe 136).
    let clash = "[server]\nlisten = [\"127.0.0.1:3128\"]\n[[server.tls]]\nlisten = \"127.0.0.1:3128\"\ncert = \"none.pem\"\nkey = \"none.pem\"\n[auth]\nusers_file = \"users.toml\"\n";
    let err = load_err(clash, &users);
    assert!(err.contains(
            "authgate.toml:4:10: server.tls.listen: 127.0.0.1:3128 is already a listener's address (server.listen has 127.0.0.1:3128)"
        ),
        "{err}"
    );
    assert!(
        err.contains("authgate.toml:5:8: server.tls: ") && err.contains("none.pem: cannot read certificate"),
        "{err}"
    );
    // Two TLS listeners on one port of one address: the second is told
    // which it clashes with.
    let twice = "[server]\nlisten = [\"127.0.0.1:3128\"]\n[[server.tls]]\nlisten = \"0.0.0.0:3129\"\ncert = \"none.pem\"\nkey = \"none.pem\"\n[[server.tls]]\nlisten = \"127.0.0.1:3129\"\ncert = \"none.pem\"\nkey = \"none.pem\"\n";
    let err = load_err(twice, &users);
    assert!(
        err.contains(
            "authgate.toml:8:10: server.tls.listen: 127.0.0.1:3129 is already a listener's address (a [[server.tls]] listener has 0.0.0.0:3129)"
        ),
        "{err}"
    );
    // And an admin listener on the address of a TLS listener whose
    // certificate is missing: both too (the clash was not seen).
    let admin = "[server]\nlisten = [\"127.0.0.1:3128\"]\n[[server.tls]]\nlisten = \"127.0.0.1:3129\"\ncert = \"none.pem\"\nkey = \"none.pem\"\n[admin]\nlisten = \"127.0.0.1:3129\"\n";
    let err = load_err(admin, &users);
    assert!(err.contains("none.pem: cannot read certificate"), "{err}");
    assert!(
        err.contains(
            "authgate.toml:8:10: admin.listen: must not be a proxy listener's address (a [[server.tls]] listener has 127.0.0.1:3129)"
        ),
        "{err}"
    );
}

/// The admin listener must not share a proxy listener's address (it asks
/// for no credentials): refused at load with its place.
#[test]
fn an_admin_listener_on_a_proxy_address_is_refused_with_line_and_column() {
    let config = "[server]\nlisten = [\"127.0.0.1:3128\"]\n[auth]\nusers_file = \"users.toml\"\n[admin]\nlisten = \"127.0.0.1:3128\"\n";
    let err = load_err(config, &good_users());
    assert!(
        err.contains("authgate.toml:6:10") && err.contains("must not be a proxy listener's address"),
        "{err}"
    );
    let ok = config.replace("listen = \"127.0.0.1:3128\"", "listen = \"127.0.0.1:9090\"");
    let (_dir, snap) = load(&ok, &good_users());
    assert_eq!(snap.unwrap().admin, Some("127.0.0.1:9090".parse().unwrap()));
    // A wildcard on the same port cannot be bound beside it either (check
    // said ok, the start failed with "Address already in use").
    for (proxy, admin) in [
        ("127.0.0.1:3128", "0.0.0.0:3128"),
        ("0.0.0.0:3128", "127.0.0.1:3128"),
        ("127.0.0.1:3128", "[::]:3128"),
        // An IPv4-mapped address binds the IPv4 one (probe 170).
        ("127.0.0.1:3128", "[::ffff:127.0.0.1]:3128"),
        ("[::ffff:0.0.0.0]:3128", "127.0.0.1:3128"),
    ] {
        let config = format!("[server]\nlisten = [\"{proxy}\"]\n[admin]\nlisten = \"{admin}\"\n");
        let err = load_err(&config, &good_users());
        assert!(
            err.contains(&format!(
                "authgate.toml:4:10: admin.listen: must not be a proxy listener's address (server.listen has {proxy})"
            )),
            "{err}"
        );
    }
    let err = load_err("[server]\nlisten = [\"0.0.0.0:3128\", \"127.0.0.1:3128\"]\n", &good_users());
    assert!(
        err.contains(
            "authgate.toml:2:27: server.listen: 127.0.0.1:3128 overlaps 0.0.0.0:3128, listed before it: both bind port 3128 of one address"
        ),
        "{err}"
    );
    let mapped = "[server]\nlisten = [\"127.0.0.1:3128\", \"[::ffff:127.0.0.1]:3128\"]\n";
    let err = load_err(mapped, &good_users());
    assert!(
        err.contains("authgate.toml:2:29: server.listen: [::ffff:127.0.0.1]:3128 overlaps 127.0.0.1:3128, listed before it"),
        "{err}"
    );
    // Different families without a dual-stack wildcard, or other ports: fine.
    for (proxy, admin) in [("0.0.0.0:3128", "[::1]:3128"), ("0.0.0.0:3128", "0.0.0.0:9090")] {
        let config = format!("[server]\nlisten = [\"{proxy}\"]\n[admin]\nlisten = \"{admin}\"\n");
        assert!(load(&config, &good_users()).1.is_ok(), "{proxy} {admin}");
    }
}

/// An address no TCP connection can reach is no listener's: `check` said
/// ok, and the listener failed to bind or took nothing (probe 173).
#[test]
fn a_listener_address_that_takes_no_connection_is_refused_with_why() {
    for (listen, why) in [
        ("224.0.0.1:3128", "is a multicast address, which takes no TCP connection"),
        ("[ff02::1]:3128", "is a multicast address"),
        ("[::ffff:224.0.0.1]:3128", "is a multicast address"),
        ("255.255.255.255:3128", "is the broadcast address, which takes no TCP connection"),
        ("[fe80::1]:3128", "is link-local, which needs a zone id, and authgate takes none"),
    ] {
        let err = load_err(&format!("[server]\nlisten = [\"{listen}\"]\n"), &good_users());
        assert!(err.contains(&format!("authgate.toml:2:11: server.listen: {listen} {why}")), "{err}");
        let admin = format!("[server]\nlisten = [\"127.0.0.1:3128\"]\n[admin]\nlisten = \"{listen}\"\n");
        let err = load_err(&admin, &good_users());
        assert!(err.contains(&format!("authgate.toml:4:10: admin.listen: {listen} {why}")), "{err}");
    }
    let tls = "[server]\nlisten = []\n[[server.tls]]\nlisten = \"224.0.0.1:3129\"\ncert = \"c.pem\"\nkey = \"k.pem\"\n";
    let err = load_err(tls, &good_users());
    assert!(
        err.contains("authgate.toml:4:10: server.tls.listen: 224.0.0.1:3129 is a multicast address"),
        "{err}"
    );
    // Link-local IPv4 may be an interface's address: taken.
    let (_dir, snap) = load("[server]\nlisten = [\"169.254.1.1:3128\"]\n", &good_users());
    assert!(snap.is_ok(), "{snap:?}");
}

/// authgate compares IPv4-mapped addresses (`::ffff:a.b.c.d`) as IPv4, so a
/// CIDR written in that form could never match: it is refused at load, with
/// the IPv4 CIDR to write instead. NAT64 and 6to4 ranges are IPv6 ranges
/// (authgate dials those addresses as IPv6) and load. A CIDR with bits set
/// past its prefix is refused: the address or the range, which was meant?
#[test]
fn a_mapped_cidr_or_one_with_host_bits_is_refused_with_what_to_write() {
    let users = good_users();
    let head = "[server]\nlisten = [\"127.0.0.1:3128\"]\n[auth]\nusers_file = \"users.toml\"\n";
    let rule = format!(
        "{head}[[rules]]\nname = \"dns\"\naction = \"deny\"\ncidrs = [\"fd00::/8\", \"::ffff:8.8.8.0/120\"]\n"
    );
    let err = load_err(&rule, &users);
    assert!(err.contains("authgate.toml:8:") && err.contains("write \"8.8.8.0/24\""), "{err}");
    // The whole mapped range is every IPv4 address: no "write 0.0.0.0/0".
    let egress = format!("{head}[egress]\nallow_cidrs = [\"::ffff:0:0/96\"]\n");
    let err = load_err(&egress, &users);
    assert!(err.contains("stands for every IPv4 address") && !err.contains("write"), "{err}");
    // Host bits: `::1/64` opened `::/64`, `::` (this host) with it.
    let egress = format!("{head}[egress]\nallow_cidrs = [\"::1/64\", \"10.1.2.3/8\"]\n");
    let err = load_err(&egress, &users);
    assert!(err.contains("`::1/64` has bits set past its /64: write \"::/64\""), "{err}");
    assert!(err.contains("`10.1.2.3/8` has bits set past its /8: write \"10.0.0.0/8\""), "{err}");
    // Plain IPv6 and IPv4 CIDRs load, and so do NAT64 and 6to4 ranges.
    let fine = format!(
        "{head}[egress]\nallow_cidrs = [\"fd00::/8\", \"10.0.0.0/8\", \"::1\", \"64:ff9b::/96\", \"2002:c0a8::/32\"]\n"
    );
    let (_dir, snap) = load(&fine, &users);
    snap.unwrap_or_else(|e| panic!("{e}"));
}

/// A file that is not UTF-8 is located: the line and column of its first
/// byte that is not, in the config and in the users file (the problem had
/// no location).
#[test]
fn a_file_that_is_not_utf8_is_located() {
    let dir = TempDir::new();
    let mut config = GOOD_CONFIG.as_bytes().to_vec();
    let at = GOOD_CONFIG.find("corp").unwrap() + 2;
    config[at] = 0xff;
    let path = dir.write("authgate.toml", &config);
    dir.write("users.toml", good_users());
    let err = authgate::config::load(&path).unwrap_err().to_string();
    assert!(err.contains("authgate.toml:3:12: not UTF-8 text (byte 0xff here)"), "{err}");
    dir.write("authgate.toml", GOOD_CONFIG);
    dir.write("users.toml", [good_users().as_bytes(), b"# caf\xe9\n"].concat());
    let err = authgate::config::load(&path).unwrap_err().to_string();
    let line = good_users().lines().count() + 1;
    assert!(err.contains(&format!("users.toml:{line}:6: not UTF-8 text (byte 0xe9 here)")), "{err}");
}

/// A DNS server at port 0, or at an unspecified (any of 0.0.0.0/8),
/// broadcast or multicast address, is refused (they were accepted); the
/// port left out is 53.
#[test]
fn a_dns_server_at_port_0_is_refused() {
    let err = load_err(
        &format!("{GOOD_CONFIG}[dns]\nservers = [\"127.0.0.1:53\", \"127.0.0.1:0\"]\n"),
        &good_users(),
    );
    assert!(err.contains("authgate.toml:14:") && err.contains("port 0 is no server's"), "{err}");
    let servers = [
        "0.0.0.0",
        "[::]:53",
        "[::ffff:0.0.0.0]",
        "0.0.0.1",
        "0.255.0.1:53",
        "255.255.255.255",
        "224.0.0.1",
        "[ff02::1]:53",
    ];
    let err = load_err(&format!("{GOOD_CONFIG}[dns]\nservers = {servers:?}\n"), &good_users());
    assert_eq!(err.matches("address is no server's").count(), 8, "{err}");
    // Link-local: no query reaches it without a zone id (probe 300).
    let err = load_err(
        &format!("{GOOD_CONFIG}[dns]\nservers = [\"[fe80::1]\", \"[febf::1]:53\"]\n"),
        &good_users(),
    );
    assert_eq!(
        err.matches("dns.servers: a link-local address (fe80::/10) needs a zone id").count(),
        2,
        "{err}"
    );
    let (_dir, snap) = load(
        &format!("{GOOD_CONFIG}[dns]\nservers = [\"127.0.0.1\", \"[::1]:5353\", \"[::2]\"]\n"),
        &good_users(),
    );
    let snap = snap.unwrap_or_else(|e| panic!("{e}"));
    let servers: Vec<String> = snap.dns_servers.iter().map(ToString::to_string).collect();
    assert_eq!(servers, ["127.0.0.1:53", "[::1]:5353", "[::2]:53"]);
}

/// An IPv6 DNS server without brackets is refused: `::1:5353` is an
/// address of its own, and was read as that address, port 53, where the
/// admin meant ::1, port 5353 (probe 99).
#[test]
fn a_dns_server_in_ipv6_without_brackets_is_refused() {
    let err =
        load_err(&format!("{GOOD_CONFIG}[dns]\nservers = [\"::1:5353\", \"fd00::53\"]\n"), &good_users());
    assert_eq!(err.matches("write an IPv6 address in brackets").count(), 2, "{err}");
    assert!(
        err.contains("authgate.toml:14:12: dns.servers: write an IPv6 address in brackets, \"[::1:5353]\""),
        "{err}"
    );
}

/// An IPv4 CIDR with a leading zero in a number is refused: a rule's
/// `hosts` read `010.0.0.1` as inet_aton does (8.0.0.1), and the CIDR was
/// read as 10.0.0.0/24, one spelling for two addresses in one file. IPv6
/// groups with leading zeros are plain hexadecimal and load.
#[test]
fn an_ipv4_cidr_with_a_leading_zero_is_refused() {
    let users = good_users();
    let head = "[server]\nlisten = [\"127.0.0.1:3128\"]\n[auth]\nusers_file = \"users.toml\"\n";
    let rule = format!("{head}[[rules]]\nname = \"oct\"\naction = \"deny\"\ncidrs = [\"010.0.0.0/24\"]\n");
    let err = load_err(&rule, &users);
    assert!(
        err.contains("authgate.toml:8:") && err.contains("`010.0.0.0/24` has a number with a leading zero"),
        "{err}"
    );
    // Both readings are offered when they differ: only the decimal one
    // made a deny rule for loopback (`0177.0.0.0/8`) cover public 177/8
    // (probe 363).
    let rule = format!("{head}[[rules]]\nname = \"oct\"\naction = \"deny\"\ncidrs = [\"0177.0.0.0/8\"]\n");
    let err = load_err(&rule, &users);
    assert!(
        err.contains("write the one you mean without it: \"127.0.0.0/8\" (octal, as a host reads it) or \"177.0.0.0/8\" (decimal)"),
        "{err}"
    );
    // Each reading offered is a CIDR the next load takes (bits past the
    // prefix cleared); one that is no address is not offered, and the
    // octal one alone is (`0300.0250.0.0/16`); an empty prefix is none, not
    // `/0` (probe 371).
    let cases = [
        ("0177.0.0.01/8", "\"127.0.0.0/8\" (octal, as a host reads it) or \"177.0.0.0/8\" (decimal)"),
        (
            "0300.0250.0.0/16",
            "write \"192.168.0.0/16\" if you mean it as a host reads it (as decimal it is no address)",
        ),
        (
            "08.0.0.0/8",
            "a host refuses this one (8 and 9 are no octal digits): write it without (\"8.0.0.0/8\")",
        ),
        ("010.0.0.0/", "`010.0.0.0/` is not a CIDR"),
        ("00.0.0.0/", "`00.0.0.0/` is not a CIDR"),
    ];
    let egress = format!("{head}[egress]\nallow_cidrs = {:?}\n", cases.map(|(cidr, _)| cidr));
    let err = load_err(&egress, &users);
    for (cidr, said) in cases {
        assert!(err.contains(said), "{cidr}: {err}");
    }
    assert!(!err.contains("/0\""), "{err}");
    let egress =
        format!("{head}[egress]\nallow_cidrs = [\"10.0.0.0/8\", \"192.168.001.0/024\", \"10.1.1.01\"]\n");
    let err = load_err(&egress, &users);
    assert!(err.contains("`192.168.001.0/024` has a number with a leading zero"), "{err}");
    assert!(err.contains("write it without (\"192.168.1.0/24\")"), "the prefix's zero too: {err}");
    assert!(err.contains("`10.1.1.01` has a number with a leading zero"), "{err}");
    assert!(!err.contains("`10.0.0.0/8`"), "{err}");
    // Not a dotted quad of decimals: not a CIDR, not a zero to drop.
    let bad = ["0x0a.0.0.0/8", "012", ".010.0.0", "010..0.0", "0999.0.0.0/8", "010.0.0.0/33"];
    let egress = format!("{head}[egress]\nallow_cidrs = {bad:?}\n");
    let err = load_err(&egress, &users);
    for cidr in bad {
        assert!(err.contains(&format!("`{cidr}` is not a CIDR")), "{cidr}: {err}");
    }
    assert!(!err.contains("leading zero"), "{err}");
    let fine = format!("{head}[egress]\nallow_cidrs = [\"10.0.0.0/8\", \"fd00:0000::/32\", \"0.0.0.0/0\"]\n");
    let (_dir, snap) = load(&fine, &users);
    snap.unwrap_or_else(|e| panic!("{e}"));
}

/// An IPv4 address in a rule's `hosts` with a leading zero in a number is
/// refused as it is in a CIDR: `hosts` read `127.0.0.010` as a target is
/// read (octal, 127.0.0.8), silently, so a deny rule for an address pasted
/// with padded numbers let the host it named through (probe 382).
#[test]
fn an_ipv4_address_in_hosts_with_a_leading_zero_is_refused() {
    let users = good_users();
    let head = "[server]\nlisten = [\"127.0.0.1:3128\"]\n[auth]\nusers_file = \"users.toml\"\n";
    let rule = format!("{head}[[rules]]\nname = \"db\"\naction = \"deny\"\nhosts = [\"127.0.0.010\"]\n");
    let err = load_err(&rule, &users);
    assert!(
        err.contains("authgate.toml:8:")
            && err.contains("`127.0.0.010` has a number with a leading zero")
            && err.contains("\"127.0.0.8\" (octal, as a host reads it) or \"127.0.0.10\" (decimal)"),
        "{err}"
    );
    let cases = [
        ("0127.0.0.1", "\"87.0.0.1\" (octal, as a host reads it) or \"127.0.0.1\" (decimal)"),
        ("0177.1", "\"127.0.0.1\" (octal, as a host reads it) or \"177.0.0.1\" (decimal)"),
        (
            "0300.0250.0.1.",
            "write \"192.168.0.1\" if you mean it as a host reads it (as decimal it is no address)",
        ),
        ("10.0.0.01", "write it without (\"10.0.0.1\")"),
        // No address to a host (`08` is no octal number), one without the zero.
        (
            "127.0.0.08",
            "`127.0.0.08` has a number with a leading zero, which reads as octal where a host is matched (`010.0.0.1` is 8.0.0.1): a host refuses this one (8 and 9 are no octal digits): write it without (\"127.0.0.8\")",
        ),
        // Fullwidth digits and dots, which a rule's host is read from.
        (
            "\u{ff11}\u{ff12}\u{ff17}\u{ff0e}\u{ff10}\u{ff0e}\u{ff10}\u{ff0e}\u{ff10}\u{ff11}\u{ff10}",
            "(octal, as a host reads it) or \"127.0.0.10\"",
        ),
    ];
    let rule = format!(
        "{head}[[rules]]\nname = \"pad\"\naction = \"allow\"\nhosts = {:?}\n",
        cases.map(|(host, _)| host)
    );
    let err = load_err(&rule, &users);
    for (host, said) in cases {
        assert!(err.contains(said), "{host}: {err}");
    }
    // Names, unpadded forms and IPv6 load as before.
    let fine = format!(
        "{head}[[rules]]\nname = \"ok\"\naction = \"allow\"\n\
         hosts = [\"010.example\", \"10.0.0.1\", \"0x7f.0.0.1\", \"127.1\", \"0\", \"::0001\"]\n"
    );
    let (_dir, snap) = load(&fine, &users);
    snap.unwrap_or_else(|e| panic!("{e}"));
}

/// A refused group in the users file is named (escaped), with the reason.
/// A refused group in the users file is located (line:col) and said why,
/// but not quoted: what was typed there may be a password (a passphrase
/// with spaces pasted into the list), and a reload logs the problem.
#[test]
fn a_refused_group_is_located_with_why_and_not_quoted() {
    let users = format!(
        "[users.grp]\npassword = {}\ngroups = [\"ok\", \"g\u{fe0f}\", \"\", \"hunter2 pw\", \"a:b\"]\n",
        toml_str(&hash("pw"))
    );
    let err = load_err("[auth]\nusers_file = \"users.toml\"\n", &users);
    assert!(
        err.contains("users.toml:3:17: user `grp`: a group: group names must not contain control, invisible"),
        "{err}"
    );
    assert!(err.contains("users.toml:3:23: user `grp`: a group: group names must not be empty"), "{err}");
    // `users list` separates its columns with spaces; `:` as in user names.
    assert!(
        err.contains("users.toml:3:27: user `grp`: a group: group names must not contain spaces"),
        "{err}"
    );
    assert!(err.contains("a group: group names must not contain ':'"), "{err}");
    assert!(!err.contains("hunter2") && !err.contains("a:b"), "{err}");
}

/// Every problem of one user is said: a bad password hid a bad group and a
/// bad `expires` until it was fixed.
#[test]
fn each_problem_of_a_user_is_said() {
    let users = "[users.dave]\npassword = \"$hunter2\"\ngroups = [\"a b\"]\nexpires = 1979-05-27T07:32:00\n";
    let err = load_err("[auth]\nusers_file = \"users.toml\"\n", users);
    assert!(err.contains("users.toml:2:12: user `dave`: password: unsupported algorithm"), "{err}");
    assert!(
        err.contains("users.toml:3:11: user `dave`: a group: group names must not contain spaces"),
        "{err}"
    );
    assert!(err.contains("users.toml:4:11: user `dave`: expires:"), "{err}");
}

/// A user name the users file refuses for a `:` or a space is located and
/// said why, not quoted: it is most likely `name:password` (an htpasswd
/// line) or a passphrase typed where a name belongs, and a reload logs the
/// problem; it was quoted whole. One refused for an invisible character
/// is quoted, with the character made visible.
#[test]
fn a_user_name_refused_for_a_colon_or_a_space_is_located_not_quoted() {
    let pw = toml_str(&hash("pw"));
    let users = format!(
        "[users.\"carol:Hunter2Secret\"]\npassword = {pw}\n[users.\"dave Hunter3Secret\"]\npassword = {pw}\n[users.\"ad\u{200b}min\"]\npassword = {pw}\n"
    );
    let err = load_err("[auth]\nusers_file = \"users.toml\"\n", &users);
    assert!(err.contains("users.toml:1:8: user name must not contain ':'"), "{err}");
    assert!(err.contains("users.toml:3:8: user name must not contain spaces"), "{err}");
    assert!(!err.contains("Hunter"), "{err}");
    assert!(err.contains("user `ad\\u{200b}min`: user name must not contain invisible"), "{err}");
    // Nor when such a table is defined twice (a name defined twice is
    // otherwise named).
    let twice = format!(
        "[users.\"carol:Hunter2Secret\"]\npassword = {pw}\n[users.\"carol:Hunter2Secret\"]\npassword = {pw}\n"
    );
    let err = load_err("[auth]\nusers_file = \"users.toml\"\n", &twice);
    assert!(
        err.contains("users.toml:3:") && err.contains("duplicate key") && !err.contains("Hunter"),
        "{err}"
    );
    let twice = format!("[users.carol]\npassword = {pw}\n[users.carol]\npassword = {pw}\n");
    let err = load_err("[auth]\nusers_file = \"users.toml\"\n", &twice);
    assert!(err.contains("duplicate key `carol`"), "{err}");
}

/// `proxy_protocol_from` takes CIDRs and addresses; anything else is an
/// error at its place.
#[test]
fn proxy_protocol_from_takes_cidrs_and_addresses() {
    let users = good_users();
    let server = "[server]\nlisten = [\"127.0.0.1:3128\"]\nproxy_protocol = true\n";
    let tail = "[auth]\nusers_file = \"users.toml\"\n";
    let bad = format!("{server}proxy_protocol_from = [\"10.0.0.0/8\", \"balancer.internal\"]\n{tail}");
    let err = load_err(&bad, &users);
    assert!(err.contains("authgate.toml:4:") && err.contains("server.proxy_protocol_from"), "{err}");
    assert!(err.contains("`balancer.internal` is not a CIDR"), "{err}");
    let good = format!("{server}proxy_protocol_from = [\"10.0.0.0/8\", \"fd00::1\"]\n{tail}");
    let (_dir, snap) = load(&good, &users);
    let snap = snap.unwrap_or_else(|e| panic!("{e}"));
    assert!(snap.server.may_send_proxy_header("10.1.2.3".parse().unwrap()));
    assert!(snap.server.may_send_proxy_header("::ffff:10.1.2.3".parse().unwrap()));
    assert!(snap.server.may_send_proxy_header("fd00::1".parse().unwrap()));
    assert!(!snap.server.may_send_proxy_header("192.0.2.1".parse().unwrap()));
    assert!(!snap.server.may_send_proxy_header("fd00::2".parse().unwrap()));
}

/// `proxy_protocol` is `true` (every plain listener), `false`, or a list of
/// `listen` addresses; an address not listened on is an error at its place.
#[test]
fn proxy_protocol_names_all_plain_listeners_or_some() {
    let users = good_users();
    let tail = "[auth]\nusers_file = \"users.toml\"\n";
    let listen = "[server]\nlisten = [\"127.0.0.1:3128\", \"[::1]:3128\"]\n";
    let addr = |a: &str| a.parse::<std::net::SocketAddr>().unwrap();
    for (pp, expected) in [
        ("true", vec![addr("127.0.0.1:3128"), addr("[::1]:3128")]),
        ("false", vec![]),
        ("[\"[::1]:3128\"]", vec![addr("[::1]:3128")]),
        ("[\" 127.0.0.1:3128\", \"127.0.0.1:3128\"]", vec![addr("127.0.0.1:3128")]),
        // A mapped spelling names the IPv4 listener (probe 173).
        ("[\"[::ffff:127.0.0.1]:3128\"]", vec![addr("127.0.0.1:3128")]),
        ("[]", vec![]),
    ] {
        let (_dir, snap) = load(&format!("{listen}proxy_protocol = {pp}\n{tail}"), &users);
        let snap = snap.unwrap_or_else(|e| panic!("{pp}: {e}"));
        assert_eq!(snap.server.proxy_protocol, expected, "{pp}");
        if pp == "[\"[::1]:3128\"]" {
            // `check` and the start say which listeners expect the header.
            let summary = snap.summary();
            assert!(
                summary.contains("listening on 127.0.0.1:3128, [::1]:3128 (PROXY protocol);"),
                "{summary}"
            );
        }
    }
    // Each entry where it is (all were put at the `[`; probe 147).
    let err = load_err(
        &format!("{listen}proxy_protocol = [\n  \"127.0.0.1:3128\",\n  \"127.0.0.1:3129\",\n]\n{tail}"),
        &users,
    );
    assert!(
        err.contains("authgate.toml:5:3: server.proxy_protocol: 127.0.0.1:3129 is not one of server.listen"),
        "{err}"
    );
    // A TLS listener's address: the error says where its switch is (probe 207).
    let tls = "[[server.tls]]\nlisten = \"127.0.0.1:3129\"\ncert = \"none.pem\"\nkey = \"none.pem\"\n";
    let err = load_err(&format!("{listen}proxy_protocol = [\"127.0.0.1:3129\"]\n{tls}{tail}"), &users);
    assert!(
        err.contains(
            "server.proxy_protocol: 127.0.0.1:3129 is not one of server.listen; it is a [[server.tls]] listener: \
             set proxy_protocol = true in its table"
        ),
        "{err}"
    );
    // `true` with only TLS listeners applied to none of them (probe 207).
    let err = load_err(&format!("[server]\nlisten = []\nproxy_protocol = true\n{tls}{tail}"), &users);
    assert!(
        err.contains(
            "authgate.toml:3:18: server.proxy_protocol = true, but server.listen is empty: there is no plain \
             listener for it; a [[server.tls]] listener takes proxy_protocol = true in its own table"
        ),
        "{err}"
    );
    let err = load_err(&format!("{listen}proxy_protocol = [\"balancer\"]\n{tail}"), &users);
    assert!(
        err.contains(
            "server.proxy_protocol: `balancer` is not an IP address and port (it has no port; host names are not \
             taken; write an entry of server.listen)"
        ),
        "{err}"
    );
    let err = load_err(&format!("{listen}proxy_protocol = \"yes\"\n{tail}"), &users);
    assert!(
        err.contains("authgate.toml:3:")
            && err.contains("expected true, false or a list of server.listen addresses"),
        "{err}"
    );
}

/// Stored hashes with costs beyond what authgate makes are refused at load
/// (each login of such a user, and the dummy verification of unknown
/// names, allocated terabytes or ran for days), with the user's place.
#[test]
fn stored_hashes_with_runaway_costs_are_refused_with_line_and_column() {
    let salt_hash = "wp3E4dDN5gPh7Kmnoa9+rQ$YW9SgE8SlePvAmnYlD8pCBn6UOv3F9X4f5RN5vtndoc";
    let cheap_bcrypt = bcrypt::hash_with_result("pw", 4).unwrap().format_for_version(bcrypt::Version::TwoY);
    for (hash, why) in [
        (format!("$argon2id$v=19$m=4294967295,t=1,p=1${salt_hash}"), "m=4294967295"),
        (format!("$argon2id$v=19$m=64,t=4294967295,p=1${salt_hash}"), "t=4294967295"),
        (cheap_bcrypt.replacen("$04$", "$31$", 1), "bcrypt cost 31"),
    ] {
        let users = format!("# users\n[users.slow]\npassword = \"{hash}\"\n");
        let err = load_err(GOOD_CONFIG, &users);
        assert!(err.contains("users.toml:3:12") && err.contains(why) && err.contains("beyond"), "{err}");
        assert!(!err.contains(salt_hash), "the hash is never echoed: {err}");
    }
    // Costs and versions that do not exist: the hash could never verify.
    for (hash, why) in [
        (cheap_bcrypt.replacen("$04$", "$00$", 1), "bcrypt cost 0 does not exist"),
        (cheap_bcrypt.replacen("$04$", "$03$", 1), "bcrypt cost 3 does not exist"),
        (format!("$argon2id$v=99$m=64,t=1,p=1${salt_hash}"), "argon2 version v=99 does not exist"),
    ] {
        let users = format!("# users\n[users.never]\npassword = \"{hash}\"\n");
        let err = load_err(GOOD_CONFIG, &users);
        assert!(err.contains("users.toml:3:12") && err.contains(why), "{err}");
    }
    // Within the bounds: loads.
    let users = format!("[users.ok]\npassword = \"{}\"\n", cheap_bcrypt.replacen("$04$", "$17$", 1));
    let (_d, ok) = load(GOOD_CONFIG, &users);
    ok.unwrap_or_else(|e| panic!("{e}"));
}

/// An expiry outside what authgate can represent (before 1970) is refused
/// with the supported range in the message, not just "use RFC 3339" (the
/// value is RFC 3339).
#[test]
fn an_expiry_before_1970_is_refused_with_the_supported_range() {
    // The last two are within the years as written, not in UTC: they loaded,
    // and then `users list` panicked formatting them.
    for when in ["1969-12-31T23:59:59Z", "1970-01-01T00:00:00+01:00", "9999-12-31T23:59:59-23:59"] {
        let users = format!("{}\nexpires = {when}\n", good_users().trim_end());
        let err = load_err(GOOD_CONFIG, &users);
        assert!(err.contains("expires") && err.contains("from 1970 to 9999"), "{when}: {err}");
        // Both forms it takes are named (the bare date was not; probe 100).
        assert!(err.contains("or a date (2027-03-31, midnight UTC)"), "{when}: {err}");
    }
    let users = format!("{}\nexpires = 9999-12-31T23:59:59Z\n", good_users().trim_end());
    assert!(load(GOOD_CONFIG, &users).1.is_ok());
}

/// Runs the binary, failing the test instead of hanging when it does not
/// exit within 20 s (the bug this guards against was a hang).
fn authgate_bin_within(args: &[&str]) -> Output {
    let child = Command::new(env!("CARGO_BIN_EXE_authgate"))
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run the authgate binary");
    output_within_20s(child, &format!("`authgate {}`", args.join(" ")))
}

/// A mistyped option or command is refused (exit 2) with the one it was
/// probably meant to be: `--grop` got only "to pass '--grop' as a value,
/// use '-- --grop'".
#[test]
fn a_mistyped_option_or_command_is_answered_with_the_likely_one() {
    for (args, meant) in [
        (&["users", "add", "dave", "--grop", "staff"][..], "a similar argument exists: '--group'"),
        (&["usres", "list"][..], "a similar subcommand exists: 'users'"),
        // A path that begins with `-` is taken for a flag (probe 276).
        (&["-c", "-x.toml", "check"][..], "write --config=PATH"),
    ] {
        let out = authgate_bin_within(args);
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        assert!(text(&out.stderr).contains(meant), "{args:?}: {}", text(&out.stderr));
    }
}

/// `--config` given before and after the command is refused, as twice on
/// one side is: the later one was used without a word, so a wrapper's
/// `-c` could be overridden unseen (probe 276).
#[test]
fn a_config_given_before_and_after_the_command_is_refused() {
    let dir = TempDir::new();
    let good = dir.write("authgate.toml", GOOD_CONFIG);
    dir.write("users.toml", good_users());
    let good = config_arg(&good);
    let gone = config_arg(&dir.path().join("gone.toml"));
    for args in [
        vec!["-c", &gone, "check", "-c", &good],
        vec!["--config", &gone, "check", "--config", &good],
        vec![&*format!("--config={gone}"), "check", "-c", &good],
        vec!["-c", &gone, "-c", &good, "check"],
    ] {
        let out = authgate_bin_within(&args);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {}", text(&out.stderr));
        assert!(
            text(&out.stderr).contains("cannot be used multiple times"),
            "{args:?}: {}",
            text(&out.stderr)
        );
    }
    // Once, on either side, it is used; a `-c` after `--` is no option.
    for args in [vec!["-c", &good, "check"], vec!["check", "-c", &good]] {
        let out = authgate_bin_within(&args);
        assert_eq!(out.status.code(), Some(0), "{args:?}: {}", text(&out.stderr));
    }
    let out = authgate_bin_within(&["-c", &good, "explain", "--user", "alice", "--", "-c"]);
    assert!(!text(&out.stderr).contains("multiple times"), "{}", text(&out.stderr));
}

#[test]
fn a_fifo_a_device_or_a_directory_named_as_a_file_is_an_error_not_a_hang() {
    let dir = TempDir::new();
    // A FIFO as the config: opening it used to block until a writer came.
    let fifo = dir.path().join("authgate.toml");
    let made = Command::new("mkfifo").arg(&fifo).status().expect("run mkfifo");
    assert!(made.success());
    let out = authgate_bin_within(&["check", "--config", &config_arg(&fifo)]);
    assert_eq!(out.status.code(), Some(1), "stderr: {}", text(&out.stderr));
    assert_eq!(
        text(&out.stderr).trim(),
        format!("{}: cannot read: not a regular file (a FIFO, socket or device)", fifo.display())
    );
    // /dev/zero as the users file: read until the allocator aborted.
    let config = dir.write("zero.toml", GOOD_CONFIG.replace("users.toml", "/dev/zero"));
    let out = authgate_bin_within(&["check", "--config", &config_arg(&config)]);
    assert_eq!(out.status.code(), Some(1), "stderr: {}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("/dev/zero: cannot read: not a regular file"),
        "stderr: {}",
        text(&out.stderr)
    );
    // ... and as a TLS listener's certificate and key.
    let tls = format!(
        "{GOOD_CONFIG}\n[[server.tls]]\nlisten = \"127.0.0.1:3129\"\ncert = \"/dev/zero\"\nkey = \"/dev/zero\"\n"
    );
    let config = dir.write("tls.toml", tls);
    dir.write("users.toml", good_users());
    let out = authgate_bin_within(&["check", "--config", &config_arg(&config)]);
    assert_eq!(out.status.code(), Some(1), "stderr: {}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("/dev/zero: cannot read certificate: not a regular file"),
        "stderr: {}",
        text(&out.stderr)
    );
    // A directory.
    let out = authgate_bin_within(&["check", "--config", &config_arg(dir.path())]);
    assert_eq!(out.status.code(), Some(1), "stderr: {}", text(&out.stderr));
    assert!(text(&out.stderr).contains("cannot read: is a directory, not a file"), "{}", text(&out.stderr));
    // `users` reads the users file the same way.
    let out = authgate_bin_within(&["users", "list", "--config", &config_arg(&dir.path().join("zero.toml"))]);
    assert_eq!(out.status.code(), Some(1), "stderr: {}", text(&out.stderr));
    assert!(text(&out.stderr).contains("not a regular file"), "stderr: {}", text(&out.stderr));
}

#[test]
fn a_file_larger_than_64_mib_is_refused_without_reading_it() {
    let dir = TempDir::new();
    let path = dir.write("authgate.toml", GOOD_CONFIG);
    let users = dir.write("users.toml", "");
    // Sparse: no disk space used.
    let f = std::fs::File::options().write(true).open(&users).unwrap();
    f.set_len(authgate::config::file::MAX_FILE_BYTES + 1).unwrap();
    let err = authgate::config::load(&path).expect_err("a 64 MiB users file must be refused").to_string();
    assert!(err.contains("users.toml: cannot read: larger than 64 MiB"), "{err}");
}

#[test]
fn a_config_that_does_not_parse_is_one_line_and_no_guess_about_the_users_file() {
    let dir = TempDir::new();
    // The users file it names exists; with the config unparsable, its path
    // is unknown, and the default `users.toml` (absent here) was reported
    // missing beside the real problem.
    let config = "[server]\nlisten = [\"127.0.0.1:3128\"]\n[server]\nrealm = \"x\"\n[auth]\nusers_file = \"people.toml\"\n";
    let path = dir.write("authgate.toml", config);
    dir.write("people.toml", good_users());
    let out = authgate_bin(&["check", "--config", &config_arg(&path)], None);
    assert_eq!(out.status.code(), Some(1), "stderr: {}", text(&out.stderr));
    assert_eq!(
        text(&out.stderr),
        format!("{}:3:1: invalid table header: duplicate key `server` in document root\n", path.display())
    );
}

#[test]
fn a_duration_beyond_365_days_is_refused_for_every_setting() {
    // "500000000000y" passed `check`, then every deadline computed from it
    // overflowed: a panic on each connection, login or forwarded request.
    let keys = [
        ("limits", "header_read_timeout"),
        ("limits", "idle_timeout"),
        ("limits", "connect_timeout"),
        ("limits", "dns_timeout"),
        ("limits", "upstream_response_timeout"),
        ("limits", "tunnel_idle_timeout"),
        ("limits", "upstream_idle_timeout"),
        ("limits", "send_timeout"),
        ("limits", "shutdown_grace"),
        ("auth", "cache_ttl"),
        ("auth.throttle", "window"),
    ];
    for (table, key) in keys {
        for value in ["500000000000y", "366days", "1y", "1yr"] {
            let err = load_err(&format!("[{table}]\n{key} = \"{value}\"\n"), &good_users());
            assert!(
                err.contains(&format!("authgate.toml:2:{}: {table}.{key}: at most 365 days", key.len() + 4)),
                "{err}"
            );
            // `1y` is 365.25 days to the parser: the message says so.
            assert_eq!(err.contains("a year counts 365.25 days"), !value.ends_with("days"), "{err}");
        }
        let (_dir, ok) = load(&format!("[{table}]\n{key} = \"365days\"\n"), &good_users());
        // 365 days itself is accepted where the setting has no lower cap.
        if let Err(e) = ok {
            assert!(!e.contains("at most 365 days"), "{e}");
        }
    }
}

/// `--help` and `--version` print on stdout, with exit 0.
#[test]
fn help_and_version_go_to_stdout() {
    for (args, says) in [
        (&["--help"][..], "Usage: authgate"),
        (&["--version"], "authgate "),
        (&["check", "--help"], "--reload"),
    ] {
        let out = authgate_bin_within(args);
        assert_eq!(out.status.code(), Some(0), "{args:?}: {}", text(&out.stderr));
        assert!(text(&out.stdout).contains(says) && out.stderr.is_empty(), "{args:?}: {}", text(&out.stdout));
    }
}

#[test]
fn a_standard_output_that_cannot_be_written_is_a_message_not_a_panic() {
    use std::io::Write;
    let dir = TempDir::new();
    // (With a default: `check` warns of a config without one.)
    let path = dir.write("authgate.toml", format!("{GOOD_CONFIG}[policy]\ndefault = \"allow\"\n"));
    dir.write("users.toml", good_users());
    let cfg = config_arg(&path);
    let cases: [(&[&str], Option<&str>); 6] = [
        (&["check", "--config", &cfg], None),
        (&["hash-password", "--config", &cfg], Some("a password\n")),
        (&["users", "list", "--config", &cfg], None),
        // clap's own printing said nothing of it, with exit 0 (probe 276).
        (&["--help"], None),
        (&["--version"], None),
        (&["help", "check"], None),
    ];
    for (args, stdin) in cases {
        let full = std::fs::File::options().write(true).open("/dev/full").expect("/dev/full");
        let mut child = Command::new(env!("CARGO_BIN_EXE_authgate"))
            .args(args)
            .stdin(if stdin.is_some() { Stdio::piped() } else { Stdio::null() })
            .stdout(Stdio::from(full))
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        if let Some(input) = stdin {
            child.stdin.take().unwrap().write_all(input.as_bytes()).unwrap();
        }
        let out = child.wait_with_output().unwrap();
        assert_eq!(out.status.code(), Some(1), "{args:?}: {}", text(&out.stderr));
        assert_eq!(
            text(&out.stderr),
            "authgate: cannot write to standard output: No space left on device (os error 28)\n",
            "{args:?}"
        );
    }
}

#[test]
fn hash_password_with_a_dangling_config_symlink_is_an_error_not_the_defaults() {
    let dir = TempDir::new();
    let link = dir.path().join("authgate.toml");
    std::os::unix::fs::symlink(dir.path().join("gone.toml"), &link).unwrap();
    let out = authgate_bin(&["hash-password", "--config", &config_arg(&link)], Some("a password\n"));
    assert_eq!(out.status.code(), Some(1), "stdout: {}", text(&out.stdout));
    assert!(text(&out.stderr).contains("cannot read: file not found"), "{}", text(&out.stderr));
    assert!(out.stdout.is_empty(), "no hash with default costs: {}", text(&out.stdout));
    // Nor does a config named with `--config` that is not there at all: a
    // typo in the path gave a hash with the default costs (probe 202).
    let missing = dir.path().join("authgate-typo.toml");
    let out = authgate_bin(&["hash-password", "--config", &config_arg(&missing)], Some("a password\n"));
    assert_eq!(out.status.code(), Some(1), "stdout: {}", text(&out.stdout));
    assert!(text(&out.stderr).contains("cannot read: file not found"), "{}", text(&out.stderr));
    assert!(out.stdout.is_empty(), "no hash with default costs: {}", text(&out.stdout));
}

#[test]
fn a_log_level_typo_is_refused_instead_of_silencing_every_log_line() {
    // Each parsed as a filter for a target of that name: no line was logged.
    for level in ["warning", "verbose", "", " ", "info,", "authgate", "info=", "info;authgate=debug"] {
        let err = load_err(&format!("[log]\nlevel = \"{level}\"\n"), &good_users());
        assert!(err.contains("authgate.toml:2:9: log.level: not a level or a filter"), "{level:?}: {err}");
    }
    // Span directives alone, or other targets alone, let no line through
    // either: authgate's lines are in no span (probe 380).
    for level in ["[]", "[]=error", "[span]", "Authgate=info", "hickory_proto=debug", "authgate::acess=info"]
    {
        let err = load_err(&format!("[log]\nlevel = \"{level}\"\n"), &good_users());
        assert!(
            err.contains("authgate.toml:2:9: log.level: a filter that lets no authgate line through"),
            "{level:?}: {err}"
        );
    }
    for level in [
        "WARN",
        "off",
        "debug",
        "info,authgate::access=off",
        "warn,authgate[request]=debug",
        "off,hickory_proto=debug",
        "authgate::access=info",
        "authgate=off",
    ] {
        let (_dir, ok) = load(&format!("[log]\nlevel = \"{level}\"\n"), &good_users());
        assert!(ok.is_ok(), "{level:?}: {:?}", ok.err());
    }
}

/// A filter's cost to read grows faster than its length: 100,000
/// directives took 8.5 s at every `check`, reload and `users` command
/// (probe 336). Refused past 4096 bytes or 64 directives, with the bound.
#[test]
fn a_log_filter_too_long_to_read_quickly_is_refused() {
    let many = vec!["authgate::t=info"; 65].join(",");
    let long = format!("info,{}=off", "a".repeat(4096));
    for level in [many, long] {
        let err = load_err(&format!("[log]\nlevel = \"{level}\"\n"), &good_users());
        assert!(
            err.contains("authgate.toml:2:9: log.level: too long (at most 4096 bytes and 64 directives)"),
            "{err}"
        );
    }
    let (_dir, ok) =
        load(&format!("[log]\nlevel = \"{}\"\n", vec!["authgate::t=info"; 64].join(",")), &good_users());
    assert!(ok.is_ok(), "{:?}", ok.err());
}

#[test]
fn users_written_with_dotted_keys_load_like_tables() {
    // Valid TOML; refused as "invalid type: string \"password\", expected a
    // borrowed string".
    let h = toml_str(&hash("pw"));
    for users in [
        format!("users.bob.password = {h}\nusers.bob.groups = [\"staff\"]\nusers.carol.password = {h}\n"),
        format!(
            "[users]\nbob.password = {h}\nbob.groups = [\"staff\"]\ncarol.password = {h}\ncarol.disabled = true\n"
        ),
    ] {
        let (_dir, snap) = load(GOOD_CONFIG, &users);
        let snap = snap.unwrap_or_else(|e| panic!("{e}\n{users}"));
        assert_eq!(snap.users.len(), 2);
    }
}

/// A table written as an array of its fields in order was taken (serde's
/// derived structs accept that), with extra elements dropped without a
/// word: a user `a = ["$argon2id$…", ["g1"], false, 2099-01-01T00:00:00Z,
/// "extra", 42]` loaded and could log in. Tables are tables only.
#[test]
fn a_table_written_as_an_array_is_refused() {
    let h = toml_str(&hash("pw"));
    let users = format!("[users]\na = [{h}, [\"g1\"], false, 2099-01-01T00:00:00Z, \"extra\", 42]\n");
    let err = load_err(GOOD_CONFIG, &users);
    assert!(err.contains("users.toml:2:5: invalid type: an array, expected a user table"), "{err}");
    let err = load_err(GOOD_CONFIG, "[users]\nu = 2099-01-01\n");
    assert!(err.contains("invalid type: a date or time, expected a table"), "{err}");
    assert!(!err.contains("argon2"), "{err}");
    for (config, said) in [
        (
            format!("log = [\"info\", \"text\", true]\n{GOOD_CONFIG}"),
            "authgate.toml:1:7: invalid type: an array, expected a [log] table",
        ),
        (
            GOOD_CONFIG.replace("[auth]\n", "[auth]\nthrottle = [true, 3, \"1m\", \"1s\"]\n"),
            "authgate.toml:6:12: invalid type: an array, expected an [auth.throttle] table",
        ),
        (
            format!("metrics = 2020-01-01\n{GOOD_CONFIG}"),
            "authgate.toml:1:11: metrics: invalid type: a date or time, expected a table",
        ),
        (
            format!("rules = [[\"r\", \"allow\"]]\n{GOOD_CONFIG}"),
            "authgate.toml:1:10: invalid type: an array, expected a [[rules]] table",
        ),
    ] {
        let err = load_err(&config, &good_users());
        assert!(err.contains(said), "{config}: {err}");
    }
}

/// The config file's type errors name kinds as TOML does, as the users
/// file's do: serde called a date "map", an array "sequence", an integer
/// "i64", a number "floating point `1.5`".
#[test]
fn config_type_errors_are_worded_in_toml_terms() {
    for (config, said) in [
        (
            GOOD_CONFIG.replace("[server]\n", "[server]\nvia = 1979-05-27\n"),
            "invalid type: a date or time, expected a boolean",
        ),
        (
            format!("[limits]\nmax_connections = 1979-05-27\n{GOOD_CONFIG}"),
            "invalid type: a date or time, expected an integer",
        ),
        (
            format!("[limits]\nmax_connections = 1.5\n{GOOD_CONFIG}"),
            "invalid type: a floating-point number, expected an integer",
        ),
        (
            format!("[limits]\nmax_connections = [1]\n{GOOD_CONFIG}"),
            "invalid type: an array, expected an integer",
        ),
        (
            format!("rules = 1979-05-27\n{GOOD_CONFIG}"),
            "authgate.toml:1:9: rules: invalid type: a date or time, expected an array",
        ),
        (
            format!("rules = {{}}\n{GOOD_CONFIG}"),
            "authgate.toml:1:9: rules: invalid type: an inline table, expected an array",
        ),
    ] {
        let err = load_err(&config, &good_users());
        assert!(err.contains(said), "{config}: {err}");
        for serde_word in ["map", "sequence", "i64", "floating point", "spanned"] {
            assert!(!err.contains(serde_word), "{config}: {err}");
        }
    }
    let err = load_err(GOOD_CONFIG, "users = 1979-05-27\n");
    assert!(err.contains("users.toml:1:9: invalid type: a date or time, expected a table"), "{err}");
}

#[test]
fn type_errors_say_what_was_expected_in_the_config_s_words() {
    // Messages named serde's internal types ("untagged enum RawPort",
    // "struct RawUser").
    let rules = "[[rules]]\nname = \"r\"\naction = \"allow\"\nports = [80.0]\n";
    let err = load_err(rules, &good_users());
    // (Now at the element, with the rule and the setting; probe 230.)
    assert!(
        err.contains("authgate.toml:4:10: rule `r`: ports: a floating-point number is not a port"),
        "{err}"
    );
    assert!(!err.contains("RawPort") && !err.contains("untagged"), "{err}");
    // `a = "..."` may be a password written where its table belongs: the
    // value is not quoted.
    let err = load_err(GOOD_CONFIG, "[users]\na = \"x\"\n");
    assert!(err.contains("users.toml:2:5: invalid type: a string, expected a user table: password"), "{err}");
    assert!(!err.contains("Raw"), "{err}");
}

/// Two user names equal after NFC are an error on the later entry, which
/// names the earlier one and its line (it said "another user").
#[test]
fn a_name_equal_to_another_after_nfc_names_that_other() {
    let dir = TempDir::new();
    let path = dir.write("authgate.toml", "[auth]\nusers_file = \"users.toml\"\n");
    let h = toml_str(&hash("pw"));
    dir.write(
        "users.toml",
        format!("[users.\"\u{e9}\"]\npassword = {h}\n\n[users.\"e\u{301}\"]\npassword = {h}\n"),
    );
    let err = authgate::config::load(&path).map(|_| ()).expect_err("a duplicate").to_string();
    assert!(err.contains("users.toml:4:8: user `e\u{301}`: same name as user `\u{e9}` (line 1)"), "{err}");
}

/// Every file authgate reads says a missing file the same way: the users
/// file, a certificate, a key, a CA bundle. (A TLS key said "No such file or
/// directory (os error 2)" where the users file said "file not found".)
#[test]
fn a_missing_file_is_worded_alike_whatever_the_file() {
    let dir = TempDir::new();
    let leaf = pki::Ca::new("test ca").leaf("proxy");
    dir.write("cert.pem", &leaf.cert_pem);
    dir.write("key.pem", &leaf.key_pem);
    dir.write("empty.pem", "");
    std::fs::write(dir.path().join("cert.der"), &leaf.der).unwrap();
    let key_der = {
        use rustls::pki_types::pem::PemObject;
        rustls::pki_types::PrivateKeyDer::from_pem_slice(leaf.key_pem.as_bytes()).unwrap()
    };
    std::fs::write(dir.path().join("key.der"), key_der.secret_der()).unwrap();
    std::fs::write(dir.path().join("junk.der"), [0x30, 0x82, 0x01, 0x00, 0x02, 0x01, 0x03, 0xff]).unwrap();
    std::fs::write(dir.path().join("chain.der"), [leaf.der.clone(), leaf.der.clone()].concat()).unwrap();
    // Cut short, without their END lines.
    dir.write("cut-cert.pem", &leaf.cert_pem[..leaf.cert_pem.len() / 2]);
    dir.write("cut-key.pem", &leaf.key_pem[..leaf.key_pem.len() / 2]);
    // Cut inside the BEGIN line of a second certificate: the PEM reader
    // took the tail for text, and the chain loaded short (probe 186).
    dir.write("cut-begin.pem", format!("{}-----", leaf.cert_pem));
    dir.write("cut-begin2.pem", format!("{}-----BEGIN CERTIF", leaf.cert_pem));
    dir.write("cut-dash.pem", format!("{}\n-", leaf.cert_pem));
    // Text after the last section that is no cut loads (probe 188).
    dir.write("trailer.pem", format!("{}----- end of bundle -----\n", leaf.cert_pem));
    // A certificate in OpenSSL's trust form (`openssl x509 -trustout`): the
    // PEM reader skipped it, and a chain served without its intermediate
    // loaded without a word (probe 273).
    let trusted = leaf.cert_pem.replace("CERTIFICATE-----", "TRUSTED CERTIFICATE-----");
    dir.write("trusted.pem", &trusted);
    dir.write("trusted-chain.pem", format!("{}{trusted}", leaf.cert_pem));
    // So was one under RFC 7468's legacy label; a line of text that names
    // such a label, outside any section, is no section (probe 280).
    let legacy = leaf.cert_pem.replace("CERTIFICATE-----", "X509 CERTIFICATE-----");
    dir.write("legacy-chain.pem", format!("{}{legacy}", leaf.cert_pem));
    dir.write("named.pem", format!("# was -----BEGIN TRUSTED CERTIFICATE-----\n{}", leaf.cert_pem));
    let (cert, key) = ("cert.pem", "key.pem");
    for (config, says) in [
        (
            "[auth]\nusers_file = \"gone-users.toml\"\n".to_owned(),
            "gone-users.toml: cannot read: file not found",
        ),
        // With the setting that names it, as a certificate is (probe 272).
        (
            "[auth]\nusers_file = \"gone-users.toml\"\n".to_owned(),
            "gone-users.toml: cannot read: file not found (auth.users_file, ",
        ),
        (
            "[auth]\nusers_file = \".\"\n".to_owned(),
            "cannot read: is a directory, not a file (auth.users_file, ",
        ),
        ("[auth]\nusers_file = \".\"\n".to_owned(), "authgate.toml:2:14)"),
        (
            format!("[[server.tls]]\nlisten = \"127.0.0.1:0\"\ncert = \"gone-cert.pem\"\nkey = \"{key}\"\n"),
            "gone-cert.pem: cannot read certificate: file not found",
        ),
        (
            format!("[[server.tls]]\nlisten = \"127.0.0.1:0\"\ncert = \"{cert}\"\nkey = \"gone-key.pem\"\n"),
            "gone-key.pem: cannot read private key: file not found",
        ),
        ("[upstream]\nca_file = \"gone-ca.pem\"\n".to_owned(), "gone-ca.pem: cannot read: file not found"),
        // A file that holds none, or the other of the pair, says so ("cannot
        // read private key: no items found"; probe 160).
        (
            format!("[[server.tls]]\nlisten = \"127.0.0.1:0\"\ncert = \"{cert}\"\nkey = \"{cert}\"\n"),
            "cert.pem: no private key found (it holds a certificate: is this the `cert` file?)",
        ),
        (
            format!("[[server.tls]]\nlisten = \"127.0.0.1:0\"\ncert = \"{key}\"\nkey = \"{key}\"\n"),
            "key.pem: no certificate found (it holds a private key: is this the `key` file?)",
        ),
        (
            format!("[[server.tls]]\nlisten = \"127.0.0.1:0\"\ncert = \"{cert}\"\nkey = \"empty.pem\"\n"),
            "empty.pem: no private key found (the file is empty)",
        ),
        // DER files: told so, with the command that makes PEM of them (they
        // were "no certificate found"; probe 161).
        (
            format!("[[server.tls]]\nlisten = \"127.0.0.1:0\"\ncert = \"cert.der\"\nkey = \"{key}\"\n"),
            "cert.der: no certificate found (it is a certificate in binary DER, not PEM: `openssl x509 -inform DER",
        ),
        (
            format!("[[server.tls]]\nlisten = \"127.0.0.1:0\"\ncert = \"{cert}\"\nkey = \"key.der\"\n"),
            "key.der: no private key found (it is a private key in binary DER, not PEM: `openssl pkey -inform DER",
        ),
        // A DER file of the other kind is not told a command that fails on
        // it, and other binary files no command at all (probe 164).
        (
            "[[server.tls]]\nlisten = \"127.0.0.1:0\"\ncert = \"key.der\"\nkey = \"cert.der\"\n".to_owned(),
            "key.der: no certificate found (it is a private key in binary DER: is this the `key` file?)",
        ),
        (
            "[[server.tls]]\nlisten = \"127.0.0.1:0\"\ncert = \"key.der\"\nkey = \"cert.der\"\n".to_owned(),
            "cert.der: no private key found (it is a certificate in binary DER: is this the `cert` file?)",
        ),
        (
            "[[server.tls]]\nlisten = \"127.0.0.1:0\"\ncert = \"junk.der\"\nkey = \"junk.der\"\n".to_owned(),
            "junk.der: no certificate found (it is binary, not PEM text)",
        ),
        // A file cut short is told so in words, not as the byte values of
        // the END line rustls looked for (probe 184).
        (
            format!("[[server.tls]]\nlisten = \"127.0.0.1:0\"\ncert = \"cut-cert.pem\"\nkey = \"{key}\"\n"),
            "cut-cert.pem: bad PEM certificate: a PEM section has no END line (is the file cut short?)",
        ),
        (
            format!("[[server.tls]]\nlisten = \"127.0.0.1:0\"\ncert = \"{cert}\"\nkey = \"cut-key.pem\"\n"),
            "cut-key.pem: cannot read private key: a PEM section has no END line (is the file cut short?)",
        ),
        (
            format!("[[server.tls]]\nlisten = \"127.0.0.1:0\"\ncert = \"cut-begin.pem\"\nkey = \"{key}\"\n"),
            "cut-begin.pem: bad PEM certificate: the file ends inside a PEM section's BEGIN line (is it cut short?)",
        ),
        (
            format!("[[server.tls]]\nlisten = \"127.0.0.1:0\"\ncert = \"cut-begin2.pem\"\nkey = \"{key}\"\n"),
            "cut-begin2.pem: bad PEM certificate: a PEM section's BEGIN line is not valid (is the file cut short?)",
        ),
        (
            "[upstream]\nca_file = \"cut-begin.pem\"\n".to_owned(),
            "cut-begin.pem: the file ends inside a PEM section's BEGIN line (is it cut short?)",
        ),
        (
            format!("[[server.tls]]\nlisten = \"127.0.0.1:0\"\ncert = \"cut-dash.pem\"\nkey = \"{key}\"\n"),
            "cut-dash.pem: bad PEM certificate: the file ends inside a PEM section's BEGIN line (is it cut short?)",
        ),
        (
            "[upstream]\nca_file = \"cut-dash.pem\"\n".to_owned(),
            "cut-dash.pem: the file ends inside a PEM section's BEGIN line",
        ),
        (
            format!(
                "[[server.tls]]\nlisten = \"127.0.0.1:0\"\ncert = \"trusted-chain.pem\"\nkey = \"{key}\"\n"
            ),
            "trusted-chain.pem: it holds a TRUSTED CERTIFICATE, OpenSSL's form with trust settings, which authgate \
             does not read (`openssl x509 -in IN -out OUT` writes one as a plain CERTIFICATE)",
        ),
        (
            format!("[[server.tls]]\nlisten = \"127.0.0.1:0\"\ncert = \"trusted.pem\"\nkey = \"{key}\"\n"),
            "trusted.pem: it holds a TRUSTED CERTIFICATE",
        ),
        (
            "[upstream]\nca_file = \"trusted-chain.pem\"\n".to_owned(),
            "trusted-chain.pem: it holds a TRUSTED CERTIFICATE",
        ),
        (
            format!(
                "[[server.tls]]\nlisten = \"127.0.0.1:0\"\ncert = \"legacy-chain.pem\"\nkey = \"{key}\"\n"
            ),
            "legacy-chain.pem: it holds an X509 CERTIFICATE, a legacy label authgate does not read",
        ),
        // A chain in DER: the first certificate is read (probe 166).
        (
            format!("[[server.tls]]\nlisten = \"127.0.0.1:0\"\ncert = \"chain.der\"\nkey = \"{key}\"\n"),
            "chain.der: no certificate found (it is a certificate in binary DER, not PEM",
        ),
    ] {
        let path = dir.write("authgate.toml", &config);
        dir.write("users.toml", good_users());
        let err = authgate::config::load(&path).map(|_| ()).expect_err(&config).to_string();
        assert!(err.contains(says), "{says} in {err}");
        assert!(!err.contains("os error"), "{err}");
    }
    for ca in ["", "[upstream]\nca_file = \"trailer.pem\"\n"] {
        let config = format!(
            "[[server.tls]]\nlisten = \"127.0.0.1:0\"\ncert = \"trailer.pem\"\nkey = \"{key}\"\n{ca}"
        );
        let path = dir.write("authgate.toml", &config);
        authgate::config::load(&path).unwrap_or_else(|e| panic!("a trailer is no cut: {e}"));
    }
    let config = format!(
        "[[server.tls]]\nlisten = \"127.0.0.1:0\"\ncert = \"named.pem\"\nkey = \"{key}\"\n\
         [upstream]\nca_file = \"named.pem\"\n"
    );
    let path = dir.write("authgate.toml", &config);
    authgate::config::load(&path).unwrap_or_else(|e| panic!("a label named in text is no section: {e}"));
    // And the files the users command reads.
    let path = dir.write("authgate.toml", "");
    let gone = dir.path().join("gone.htpasswd");
    let out =
        authgate_bin(&["users", "--config", &config_arg(&path), "import-htpasswd", &config_arg(&gone)], None);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(text(&out.stderr), format!("authgate: {}: cannot read: file not found\n", gone.display()));
}

/// `authgate check` writes one line per problem whatever the config holds:
/// control characters it quotes (a method, a host pattern, a path) are
/// escaped, so a value can neither split a problem, forge another line, nor
/// send a terminal escape sequence (a title change, a screen clear).
#[test]
fn check_escapes_control_characters_quoted_from_the_config() {
    let dir = TempDir::new();
    let config = "[auth]\nusers_file = \"x\\u001b[2J\\nforged.toml:1:1: all good\"\n\
                  [[rules]]\nname = \"r\"\naction = \"allow\"\nmethods = [\"GET\\r\\n\"]\nhosts = [\"\\u001b]0;pwned\\u0007\"]\n";
    let path = dir.write("authgate.toml", config);
    let out = authgate_bin(&["check", "--config", &config_arg(&path)], None);
    assert_eq!(out.status.code(), Some(1));
    let all = format!("{}{}", text(&out.stdout), text(&out.stderr));
    assert!(!all.chars().any(|c| c.is_control() && c != '\n'), "a raw control character: {all:?}");
    let lines: Vec<&str> = all.lines().collect();
    assert_eq!(lines.len(), 3, "one line per problem: {all}");
    assert!(lines.iter().all(|l| l.starts_with(&dir.path().display().to_string())), "{all}");
    assert!(all.contains("`GET\\r\\n` is not an HTTP method"), "{all}");
    assert!(all.contains("x\\u{1b}[2J\\nforged.toml:1:1: all good: cannot read: file not found"), "{all}");

    // Direction-changing characters too, and the lines that say all is well:
    // `check`'s summary and the users commands name the users file, whose
    // path came out raw (a forged second `ok:` line, an escape sequence).
    let config = "[auth]\nusers_file = \"u\\u001b[31m\\nok: forged\\u202etxt.toml\"\n\
                  [auth.argon2]\nm_cost = 8\nt_cost = 1\np_cost = 1\n[[rules]]\nname = \"r\"\naction = \"allow\"\nmethods = [\"G\\u202eET\"]\n";
    let path = dir.write("authgate.toml", config);
    let out = authgate_bin(&["check", "--config", &config_arg(&path)], None);
    let all = text(&out.stderr);
    assert!(all.contains("`G\\u{202e}ET` is not an HTTP method"), "{all}");
    let path = dir.write("authgate.toml", config.split("[[rules]]").next().unwrap());
    let users = dir.path().join("u\u{1b}[31m\nok: forged\u{202e}txt.toml");
    std::fs::write(&users, "").unwrap();
    let out = authgate_bin(&["check", "--config", &config_arg(&path)], None);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let add = authgate_bin(
        &["users", "--config", &config_arg(&path), "add", "bob", "--password-stdin"],
        Some("pw\n"),
    );
    assert_eq!(add.status.code(), Some(0), "{add:?}");
    for out in [&out, &add] {
        let all = format!("{}{}", text(&out.stdout), text(&out.stderr));
        assert!(!all.chars().any(|c| (c.is_control() && c != '\n') || c == '\u{202e}'), "{all:?}");
        // One line besides `check`'s warnings (of the empty users file, and
        // of the missing `[policy] default`), which name the path escaped too.
        let (warnings, said): (Vec<&str>, Vec<&str>) =
            all.lines().partition(|l| l.starts_with("authgate: warning: "));
        assert_eq!(said.len(), 1, "{all}");
        assert!(said[0].contains("u\\u{1b}[31m\\nok: forged\\u{202e}txt.toml"), "{all}");
        assert!(
            warnings.iter().all(|w| !w.contains("no users") || w.contains("u\\u{1b}[31m\\nok: forged")),
            "{all}"
        );
    }
}

/// At most 256 listener addresses: each is checked against the others,
/// and 300,000 entries took `check` 30 s (probe 100). The first one past
/// the bound is named; the ones before are checked as usual.
#[test]
fn more_than_256_listeners_are_refused() {
    let config = |n: u16| {
        let listen: Vec<String> = (0..n).map(|i| format!("127.0.0.1:{}", 20_000 + i)).collect();
        format!("[server]\nlisten = {listen:?}\n[auth]\nusers_file = \"users.toml\"\n")
    };
    let (_dir, snap) = load(&config(256), &good_users());
    assert_eq!(snap.unwrap_or_else(|e| panic!("{e}")).server.listen.len(), 256);
    let too_many = config(300);
    let err = load_err(&too_many, &good_users());
    let col = too_many.find("\"127.0.0.1:20256\"").unwrap() - too_many.find("listen").unwrap() + 1;
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains(&format!("authgate.toml:2:{col}: server.listen: more than 256 addresses")), "{err}");
}

/// A config or users file that weighs more than 2,500,000 (its keys,
/// tables and items weighed by what they cost the parser) is refused
/// before it is parsed, where it passes the bound: 60 MB of `[[],[],…]`
/// (under the 64 MiB a file may have) took 5.8 GB (probe 100), 2 MB of
/// keys with 75 dots each 1 GB (probe 101).
#[test]
fn a_file_too_heavy_to_parse_is_refused_unparsed() {
    let many = format!("[users]\na = [{}]\n", vec!["1"; 2_500_000].join(","));
    let err = load_err(GOOD_CONFIG, &many);
    // The header's `[` 6, `=` 2, the array's `[` 3, then commas 1 each:
    // the 2,499,990th passes 2,500,000.
    let col = many.match_indices(',').nth(2_499_989).unwrap().0 - "[users]\n".len() + 1;
    assert!(
        err.contains(&format!("users.toml:2:{col}: too many keys, tables and items")),
        "{}",
        &err[..err.len().min(300)]
    );
    assert!(err.contains("about 113,000 users"), "{}", &err[..err.len().min(300)]);
    let config = format!("{GOOD_CONFIG}\n[egress]\nallow_cidrs = [{}]\n", vec!["1"; 2_500_000].join(","));
    let err = load_err(&config, &good_users());
    assert!(err.contains("too many keys, tables and items"), "{}", &err[..err.len().min(300)]);
    // A config file's message does not count users, which it holds none of.
    assert!(!err.contains("users"), "{}", &err[..err.len().min(300)]);
    // Dotted keys weigh the tables they make.
    let dotted: String = (0..9_000).map(|i| format!("k{i}.{} = 1\n", vec!["a"; 75].join("."))).collect();
    let err = load_err(GOOD_CONFIG, &dotted);
    assert!(err.contains("too many keys, tables and items"), "{}", &err[..err.len().min(300)]);
}

/// A value with `@` (a pasted `user:password@host`) is not quoted in a
/// problem: a rule's `hosts`, `server.listen`, `dns.servers` and CIDRs
/// echoed it, to the terminal and, at a reload, to the log (probe 100).
#[test]
fn a_value_that_may_hold_a_password_is_not_echoed() {
    let config = "[server]\nlisten = [\"alice:S3cret@127.0.0.1:3128\"]\n[auth]\nusers_file = \"users.toml\"\n\
                  [dns]\nservers = [\"alice:S3cret@10.0.0.2\"]\n[egress]\nallow_cidrs = [\"alice:S3cret@10.0.0.0/8\"]\n\
                  [[rules]]\nname = \"r\"\naction = \"allow\"\nhosts = [\"alice:S3cret@example.com\"]\n";
    let err = load_err(config, &good_users());
    assert_eq!(err.matches("(a value with `@`, not shown: it may hold a password)").count(), 4, "{err}");
    assert!(!err.contains("S3cret"), "{err}");
    // Nor a rule's bad name in its other problems, nor a port range, a
    // method or a duration (probe 101).
    let config = "[auth]\nusers_file = \"users.toml\"\n[limits]\nidle_timeout = \"alice:S3cret@x\"\n\
                  [[rules]]\nname = \"alice:S3cret@10.0.0.1\"\naction = \"allow\"\n\
                  ports = [\"alice:S3cret@x\"]\nmethods = [\"S3cret@x\"]\nhosts = [\"exa mple\"]\n";
    let err = load_err(config, &good_users());
    assert!(!err.contains("S3cret"), "{err}");
    assert!(err.contains("rule `(bad name)`: hosts: `exa mple` is not a valid host"), "{err}");
    // Others are quoted, as a typo is.
    let err = load_err(&GOOD_CONFIG.replace("127.0.0.1:3128", "127.0.0.1:31x8"), &good_users());
    assert!(err.contains("server.listen: `127.0.0.1:31x8` is not an IP address and port"), "{err}");
    // A host name is said not to be taken (it was "not an address:port";
    // probe 160).
    let err = load_err(&GOOD_CONFIG.replace("127.0.0.1:3128", "localhost:3128"), &good_users());
    assert!(
        err.contains("`localhost:3128` is not an IP address and port")
            && err.contains("host names are not taken"),
        "{err}"
    );
    // Each listener setting says what is wrong with its value (the TLS and
    // admin ones said "not an address:port", a bad port was told host names
    // are not taken; probe 161).
    for (value, why) in [
        ("localhost:3128", "host names are not taken"),
        ("127.0.0.1:99999", "its port is no number from 0 to 65535"),
        ("127.0.0.1", "it has no port"),
        ("[::1]", "it has no port"),
        ("::1:3128", "an IPv6 address and port are written in brackets"),
        ("fe80::1:x", "its port is no number"),
        ("proxy", "it has no port; host names are not taken"),
        // (Each was given another reason; probe 164.)
        ("127.0.0.1:+3128", "its port is no number from 0 to 65535"),
        ("[127.0.0.1]:3128", "only an IPv6 address is written in brackets"),
        ("[::1]:80]", "its port is no number"),
        ("3128", "it has no address"),
        (":3128", "it has no address"),
        ("0:3128", "an IPv4 address is four numbers"),
        ("[fe80::1%eth0]:3128", "a zone id (`%…`) is not taken"),
        // (And these; probe 166.)
        ("256.0.0.1:3128", "each of an IPv4 address's four numbers is 0 to 255"),
        ("0127.0.0.1:3128", "each of an IPv4 address's four numbers is 0 to 255"),
        ("127.0.0.1:3128:3128", "its address part is no IP address"),
        ("::1]:80", "its address part is no IP address"),
        ("-1:80", "its address part is no IP address"),
        ("http://127.0.0.1:3128", "it is a URL"),
        ("127.0.0.1 :3128", "it holds a space"),
    ] {
        for (setting, config) in [
            ("server.listen", GOOD_CONFIG.replace("\"127.0.0.1:3128\"", &format!("\"{value}\""))),
            (
                "server.tls.listen",
                format!(
                    "{GOOD_CONFIG}\n[[server.tls]]\nlisten = \"{value}\"\ncert = \"c.pem\"\nkey = \"k.pem\"\n"
                ),
            ),
            ("admin.listen", format!("{GOOD_CONFIG}\n[admin]\nlisten = \"{value}\"\n")),
        ] {
            let err = load_err(&config, &good_users());
            assert!(
                err.contains(&format!("{setting}: `{value}` is not an IP address and port ({why}")),
                "{err}"
            );
        }
    }
    // A date-time in quotes is told to drop them.
    let err = load_err(GOOD_CONFIG, &good_users().replace("disabled = false", "expires = \"2027-01-01\""));
    assert!(err.contains("expected a date-time (written without quotes: 2027-03-31)"), "{err}");
    // A value of the wrong type names its user and key, and only a string
    // is told to drop quotes (probe 161).
    for (wrong, says) in [
        (
            "expires = 5",
            "user `alice`: expires: invalid type: an integer, expected a date-time (such as 2027-03-31)",
        ),
        (
            "expires = { }",
            "user `alice`: expires: invalid type: a table, expected a date-time (such as 2027-03-31)",
        ),
        ("expires = {a = 1}", "user `alice`: expires: invalid type: a table, expected a date-time"),
        ("disabled = \"no\"", "user `alice`: disabled: invalid type: a string, expected a boolean"),
    ] {
        let err = load_err(GOOD_CONFIG, &good_users().replace("disabled = false", wrong));
        assert!(err.contains(says), "{wrong}: {err}");
    }
    // As TOML reads the file: not a `KEY =` in a comment or a string, nor
    // a user named in a multi-line string (probe 164).
    for (users, says) in [
        (
            good_users()
                .replace("groups = [\"staff\"]", "groups = [\n  \"a\", # expires = 2027-01-01\n  1,\n]"),
            "user `alice`: groups: invalid type: an integer, expected a string",
        ),
        (
            good_users().replace("groups = [\"staff\"]", "groups = [\"password=x\", 2]"),
            "user `alice`: groups: invalid type: an integer, expected a string",
        ),
        (
            "[users.bob]\npassword = \"\"\"\n[users.alice]\n\"\"\"\nexpires = 5\n".to_owned(),
            "user `bob`: expires: invalid type: an integer",
        ),
    ] {
        let err = load_err(GOOD_CONFIG, &users);
        assert!(err.contains(says), "{users}: {err}");
    }
    // Nor a hash typed as a name, a bcrypt one short enough to be a name
    // (probe 166).
    let bcrypt = "$2y$10$abcdefghijklmnopqrstuuABCDEFGHIJKLMNOPQRSTUVWXYZ01234";
    let err = load_err(
        GOOD_CONFIG,
        &good_users().replace("alice", bcrypt).replace("disabled = false", "disabled = 2"),
    );
    assert!(err.contains("disabled: invalid type: an integer") && !err.contains("$2y$"), "{err}");
    // A table where a value belongs, placed at its key or header: named by
    // TOML's reading, the key's place (it was not; probe 272).
    let err = load_err(GOOD_CONFIG, &good_users().replace("groups = [\"staff\"]", "groups.x = 1"));
    assert!(
        err.contains("users.toml:3:1: user `alice`: groups: invalid type: a table, expected an array"),
        "{err}"
    );
    let err = load_err(
        GOOD_CONFIG,
        &good_users().replace("groups = [\"staff\"]", "[users.alice.groups]\nS3cret = 1"),
    );
    assert!(
        err.contains("users.toml:3:1: user `alice`: groups: invalid type: a table, expected an array"),
        "{err}"
    );
    assert!(!err.contains("S3cret"), "{err}");
    // (A value on a line below its key.)
    let users = good_users().replace("groups = [\"staff\"]", "groups = [\n  \"a\",\n  1,\n]");
    let err = load_err(GOOD_CONFIG, &users);
    assert!(err.contains("user `alice`: groups: invalid type: an integer, expected a string"), "{err}");
}

/// `users_file = ""` is one problem, at its place: the default users file,
/// which is not the one meant, is not read too (its "cannot read" was a
/// second, misleading line; probe 100).
#[test]
fn an_empty_users_file_setting_is_one_problem() {
    let dir = TempDir::new();
    let path =
        dir.write("authgate.toml", GOOD_CONFIG.replace("users_file = \"users.toml\"", "users_file = \"\""));
    let err = authgate::config::load(&path).map(|_| ()).expect_err("refused").to_string();
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("authgate.toml:6:14: auth.users_file: must not be empty"), "{err}");
}

/// A reload of a config without `[policy] default` (in place of one that
/// denies by default) whose users file has a problem too is told both: the
/// missing default was told only after the other was fixed (probe 160).
/// And `check` warns of what such a reload refuses: it said `ok`, and a
/// `systemctl reload` that runs it first went on to a reload that failed.
#[test]
fn a_missing_default_is_told_with_the_other_problems_and_check_warns_of_it() {
    let deny = format!("{GOOD_CONFIG}[policy]\ndefault = \"deny\"\n");
    let (dir, running) = load(&deny, &good_users());
    let running = running.unwrap_or_else(|e| panic!("{e}"));
    let path = dir.write("authgate.toml", GOOD_CONFIG);
    dir.write("users.toml", good_users().replace("disabled = false", "disabled = \"yes\""));
    let err =
        authgate::config::load_for_reload(&path, &running).map(|_| ()).expect_err("refused").to_string();
    assert!(err.contains("users.toml:") && err.contains("expected a boolean"), "{err}");
    assert!(err.contains("authgate.toml: [policy] default is missing"), "{err}");

    dir.write("users.toml", good_users());
    let out = authgate_bin(&["check", "--config", &config_arg(&path)], None);
    assert_eq!(out.status.code(), Some(0), "stderr: {}", text(&out.stderr));
    let warned = text(&out.stderr);
    assert!(
        warned.contains("authgate: warning: ") && warned.contains("[policy] default is missing"),
        "{warned}"
    );
    // `check --reload`, a service manager's reload step, refuses it: with
    // the warning alone, `systemctl reload` went on to a reload that
    // failed and reported success (probe 162).
    let out = authgate_bin(&["check", "--reload", "--config", &config_arg(&path)], None);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stdout));
    assert!(
        text(&out.stderr).starts_with("authgate: ") && !text(&out.stderr).contains("warning"),
        "{}",
        text(&out.stderr)
    );
    assert_eq!(text(&out.stdout), "", "no `ok`");
    // Beside the file's other problems, as the reload tells it (it was told
    // once they were fixed; probe 166).
    dir.write("users.toml", good_users().replace("disabled = false", "disabled = \"yes\""));
    let out = authgate_bin(&["check", "--reload", "--config", &config_arg(&path)], None);
    let err = text(&out.stderr);
    assert!(
        err.contains("expected a boolean") && err.contains("[policy] default is missing, so it is"),
        "{err}"
    );
    assert_eq!(out.status.code(), Some(1), "{err}");
    dir.write("users.toml", "# none yet\n");
    let out = authgate_bin(&["check", "--config", &config_arg(&dir.write("authgate.toml", &deny))], None);
    let warned = text(&out.stderr);
    assert!(warned.contains("no users and no [users] table") && !warned.contains("default"), "{warned}");
    // Said in so many words: no warning.
    dir.write("users.toml", "[users]\n");
    let out = authgate_bin(&["check", "--config", &config_arg(&path.with_file_name("authgate.toml"))], None);
    assert_eq!(text(&out.stderr), "", "{}", text(&out.stdout));
}

/// A rule named `default` or `-`, and a user named `-`, read in the
/// access and audit lines as the policy default and as none: `check` says
/// so (they passed without a word; probe 375).
#[test]
fn check_warns_of_names_the_logs_use_for_the_default_and_for_none() {
    let dir = TempDir::new();
    dir.write("users.toml", good_users() + &user_entry("-", "pw", ""));
    let config = format!(
        "{GOOD_CONFIG}[policy]\ndefault = \"deny\"\n[[rules]]\nname = \"default\"\naction = \"deny\"\nports = [8080]\n\
         [[rules]]\nname = \"-\"\naction = \"allow\"\nports = [80]\n[[rules]]\nname = \"defaults\"\naction = \"allow\"\nports = [443]\n"
    );
    let path = dir.write("authgate.toml", config);
    let out = authgate_bin(&["check", "--config", &config_arg(&path)], None);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let warned = text(&out.stderr);
    assert!(
        warned.contains("authgate: warning: rule `default`: the access line's `rule` field writes"),
        "{warned}"
    );
    assert!(warned.contains("authgate: warning: rule `-`: the access line's"), "{warned}");
    assert!(!warned.contains("rule `defaults`"), "{warned}");
    assert!(warned.contains("users.toml: the access and audit lines write `-` for no user"), "{warned}");
    assert_eq!(warned.lines().count(), 3, "{warned}");
}

/// `check` warns of a rule that names a group no user is in, or a user the
/// users file has not: such a rule matches nobody (`groups = ["staf"]` was
/// `ok`; probe 160).
#[test]
fn check_warns_of_rules_naming_nobody() {
    let dir = TempDir::new();
    dir.write("users.toml", good_users());
    let rules = |groups: &str, users: &str| {
        format!(
            "{GOOD_CONFIG}[policy]\ndefault = \"deny\"\n[[rules]]\nname = \"web\"\naction = \"allow\"\ngroups = [{groups}]\n[[rules]]\nname = \"one\"\naction = \"allow\"\nusers = [{users}]\n"
        )
    };
    let path = dir.write("authgate.toml", rules("\"staf\"", "\"bob\""));
    let out = authgate_bin(&["check", "--config", &config_arg(&path)], None);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let warned = text(&out.stderr);
    assert!(
        warned.contains("authgate: warning: rule `web`: no user in ")
            && warned.contains("users.toml is in group `staf`"),
        "{warned}"
    );
    assert!(warned.contains("authgate: warning: rule `one`: no user `bob` in "), "{warned}");
    assert!(warned.contains("in group `staf`, so it matches nobody yet"), "{warned}");
    // Several missing groups are one line; a rule that reaches someone
    // through another of its groups does not match "nobody" (it said so,
    // once for each missing group; probe 218).
    let path = dir.write("authgate.toml", rules("\"staf\", \"staff\", \"devs\"", "\"bob\", \"alice\""));
    let out = authgate_bin(&["check", "--config", &config_arg(&path)], None);
    let warned = text(&out.stderr);
    assert_eq!(warned.lines().count(), 2, "{warned}");
    assert!(
        warned.contains(
            "users.toml is in group `staf` or `devs`, it matches only through its other groups and users"
        ),
        "{warned}"
    );
    assert!(warned.contains("rule `one`: no user `bob` in ") && !warned.contains("nobody"), "{warned}");
    let path = dir.write("authgate.toml", rules("\"staff\"", "\"alice\""));
    let out = authgate_bin(&["check", "--config", &config_arg(&path)], None);
    assert_eq!(text(&out.stderr), "", "{}", text(&out.stdout));
    // A name that may hold a password is not shown there either (it was;
    // probe 332).
    let path = dir.write("authgate.toml", rules("\"$a$b$S3cret\"", "\"$2y$10$S3cretHashLike\", \"bob\""));
    let out = authgate_bin(&["check", "--config", &config_arg(&path)], None);
    let warned = text(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{warned}");
    assert!(!warned.contains("S3cret"), "{warned}");
    assert!(
        warned.contains("is in group one whose name is not shown (it may hold a password), so"),
        "{warned}"
    );
    assert!(
        warned.contains("no user one whose name is not shown (it may hold a password) or `bob` in"),
        "{warned}"
    );
}

/// A rule's user name is checked in NFC, as the users file checks one: a
/// name of 40 characters as typed and 80 in NFC loaded in a rule, which
/// could never match, and was then shown (probe 332).
#[test]
fn a_rule_user_name_too_long_in_nfc_is_refused() {
    let name = "\u{0958}".repeat(40);
    let config = format!("{GOOD_CONFIG}[[rules]]\nname = \"r\"\naction = \"deny\"\nusers = [\"{name}\"]\n");
    let err = load_err(&config, &good_users());
    assert!(err.contains("user name longer than 64 characters"), "{err}");
    assert!(!err.contains('\u{0958}') && !err.contains("\u{915}"), "{err}");
}

/// `check` warns of PROXY protocol settings that do nothing or trust
/// anyone: `proxy_protocol_from` with no listener expecting the header, and
/// a PROXY listener without `proxy_protocol_from` (both were `ok` without a
/// word, probe 207).
#[test]
fn check_warns_of_proxy_protocol_settings_that_do_nothing_or_trust_anyone() {
    let dir = TempDir::new();
    dir.write("users.toml", good_users());
    let check = |server: &str| {
        let config = GOOD_CONFIG.replacen("realm = \"corp\"\n", &format!("realm = \"corp\"\n{server}"), 1)
            + "[policy]\ndefault = \"deny\"\n";
        assert!(config.contains(&format!("\n{server}\n[auth]")), "{config}");
        let path = dir.write("authgate.toml", &config);
        let out = authgate_bin(&["check", "--config", &config_arg(&path)], None);
        assert_eq!(out.status.code(), Some(0), "{server}: {}", text(&out.stderr));
        text(&out.stderr)
    };
    let warned = check("proxy_protocol_from = [\"10.0.0.0/8\"]\n");
    assert!(
        warned.contains("authgate: warning: server.proxy_protocol_from: no listener expects a PROXY header"),
        "{warned}"
    );
    let warned = check("proxy_protocol = true\n");
    assert!(
        warned.contains(
            "authgate: warning: server.proxy_protocol_from is empty: whoever reaches a PROXY protocol listener \
             can name any client address"
        ),
        "{warned}"
    );
    assert_eq!(check("proxy_protocol = true\nproxy_protocol_from = [\"10.0.0.0/8\"]\n"), "");
    assert_eq!(check(""), "");
}

/// A reload weighs the file before it parses any of it: it parsed the
/// whole file first (to see whether it held any setting), so a file of any
/// weight cost its parse, 2.1 GB for 6 MB (probe 103). A file of table
/// headers alone says so: weighed first, it is "too many", not "no
/// settings at all".
#[test]
fn a_reload_weighs_the_file_before_parsing_it() {
    let (dir, running) = load(GOOD_CONFIG, &good_users());
    let running = running.unwrap_or_else(|e| panic!("{e}"));
    let headers: String = (0..420_000).map(|i| format!("[t{i}]\n")).collect();
    let path = dir.write("authgate.toml", headers);
    let err =
        authgate::config::load_for_reload(&path, &running).map(|_| ()).expect_err("refused").to_string();
    assert!(err.contains("too many keys, tables and items"), "{}", &err[..err.len().min(300)]);
    assert!(!err.contains("users"), "{}", &err[..err.len().min(300)]);
}

/// `check` refuses a file past the weight unparsed, with `--reload` too: it
/// parsed the whole file once more, to see whether `[policy] default` was
/// there, and a refused 4.5 MB file of empty arrays needed more than 400 MB
/// (probe 218: 3 GB for 30 MB). Under a 400 MB address-space limit it ran
/// out of memory there.
#[test]
fn check_refuses_a_file_past_the_weight_without_parsing_it() {
    let dir = TempDir::new();
    dir.write("users.toml", good_users());
    let heavy = format!("[auth]\nusers_file = \"users.toml\"\na = [{}]\n", vec!["[]"; 1_500_000].join(","));
    let path = dir.write("authgate.toml", heavy);
    for reload in [&["--reload"][..], &[]] {
        let out = Command::new("sh")
            .args(["-c", "ulimit -v 400000 && exec \"$0\" check --config \"$@\""])
            .arg(env!("CARGO_BIN_EXE_authgate"))
            .arg(config_arg(&path))
            .args(reload)
            .output()
            .expect("sh runs");
        let err = text(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{reload:?}: {}", &err[..err.len().min(400)]);
        assert!(
            err.contains("too many keys, tables and items"),
            "{reload:?}: {}",
            &err[..err.len().min(400)]
        );
        assert!(!err.contains("memory allocation"), "{reload:?}: {}", &err[..err.len().min(400)]);
    }
}

/// A user's table without `password` names the user (it said "missing
/// field `password`" at the table's line alone; probe 100), unless the
/// name may hold a password.
#[test]
fn a_user_without_a_password_is_named() {
    let err = load_err(GOOD_CONFIG, "[users.bob]\ngroups = []\n");
    assert!(err.contains("users.toml:1:1: user `bob`: missing field `password`"), "{err}");
    let err = load_err(GOOD_CONFIG, "[users]\ncarol = { groups = [] }\n");
    assert!(err.contains("users.toml:2:9: user `carol`: missing field `password`"), "{err}");
    let err = load_err(GOOD_CONFIG, "[users.\"dave:S3cret\"]\ngroups = []\n");
    assert!(err.contains("users.toml:1:1: missing field `password`") && !err.contains("S3cret"), "{err}");
    // A name written with TOML escapes is read as TOML reads it: the `:`
    // of `\u003a` or a tab hides it, and `caf\u00e9` is `café` (they were
    // shown as typed, backslashes doubled; probe 155).
    for name in [r"dave\u003aS3cret", r"S3cret\tpw"] {
        let err = load_err(GOOD_CONFIG, &format!("[users.\"{name}\"]\ngroups = []\n"));
        assert!(err.contains("users.toml:1:1: missing field `password`") && !err.contains("S3cret"), "{err}");
    }
    let err = load_err(GOOD_CONFIG, "[users.\"caf\\u00e9\"]\ngroups = []\n");
    assert!(err.contains("users.toml:1:1: user `café`: missing field `password`"), "{err}");
    // `users = { … }` at the top is the table of users, not a user `users`
    // (probe 158); a comment after `[users]` changes nothing.
    let err = load_err(GOOD_CONFIG, "users = { \"dave\\u003aS3cret\" = { groups = [] } }\n");
    assert!(!err.contains("user `users`") && !err.contains("S3cret"), "{err}");
    let err = load_err(GOOD_CONFIG, "[users] # all of them\ncarol = { groups = [] }\n");
    assert!(err.contains("users.toml:2:9: user `carol`: missing field `password`"), "{err}");
    // Headers as TOML reads them, spaces and quotes and all (only
    // `[users.NAME]` and `[users]` as written so were seen; probe 161).
    let err = load_err(GOOD_CONFIG, "[ users . bob ]\ngroups = []\n");
    assert!(err.contains("users.toml:1:1: user `bob`: missing field `password`"), "{err}");
    let err = load_err(GOOD_CONFIG, "[\"users\"]\ncarol = { groups = [] }\n");
    assert!(err.contains("users.toml:2:9: user `carol`: missing field `password`"), "{err}");
    let err = load_err(GOOD_CONFIG, "[ users ]\ncarol = { groups = [], disabled = 1 }\n");
    assert!(err.contains("user `carol`: disabled: invalid type: an integer, expected a boolean"), "{err}");
}

/// A valid user name that may hold a password, such as a hash pasted as
/// the name, is never shown in the problems about that user's values; they
/// are located (it was shown in each of them; probe 329).
#[test]
fn a_hash_pasted_as_a_user_name_is_never_shown() {
    let name = "$2y$05$S3cretS3cretS3cretS3cuQ0aB1cD2eF3gH4iJ5kL6mN7oP8qR9s";
    let hash = "$argon2id$v=19$m=256,t=1,p=1$c2FsdHNhbHQ$1A6w6R1dTPDTfeGl+ZTNF2Emnq/SgziHTggczddKBes";
    for (user, at) in [
        ("password = \"oops\"\n".to_owned(), "users.toml:2:12: password: not a valid PHC string"),
        (
            format!("password = \"{hash}\"\ngroups = [\"a b\"]\n"),
            "users.toml:3:11: a group: group names must not contain spaces",
        ),
        (
            format!("password = \"{hash}\"\nexpires = 0001-01-01\n"),
            "users.toml:3:11: expires: use an RFC 3339",
        ),
    ] {
        let err = load_err(GOOD_CONFIG, &format!("[users.\"{name}\"]\n{user}"));
        assert!(err.contains(at) && !err.contains("S3cret"), "{err}");
    }
    // Written twice: the second the same as the first after NFC.
    let users = format!(
        "[users.\"{name}\\u00e9\"]\npassword = \"{hash}\"\n[users.\"{name}e\\u0301\"]\npassword = \"{hash}\"\n"
    );
    let err = load_err(GOOD_CONFIG, &users);
    assert!(err.contains("users.toml:3:8: same name as the user on line 1 after Unicode"), "{err}");
    assert!(!err.contains("S3cret"), "{err}");
}

/// An allow rule without any condition allows every request: refused at
/// its `action`, naming `[policy] default` for that (it is the shape of a
/// rule cut short while its file is written, which a reload took, opening
/// the proxy to every user; probe 112). A deny rule without one is a
/// catch-all and loads.
#[test]
fn an_allow_rule_without_a_condition_is_refused() {
    let rule = "[[rules]]\nname = \"bob-only\"\naction = \"allow\"\n";
    let err = load_err(&format!("{GOOD_CONFIG}{rule}"), &good_users());
    assert!(err.contains("authgate.toml:15:10: rule `bob-only` allows every request"), "{err}");
    assert!(err.contains("[policy] default = \"allow\""), "{err}");
    let (_dir, ok) = load(&format!("{GOOD_CONFIG}{rule}users = [\"bob\"]\n"), &good_users());
    ok.unwrap_or_else(|e| panic!("{e}"));
    let (_dir, ok) = load(&format!("{GOOD_CONFIG}{}", rule.replace("allow", "deny")), &good_users());
    ok.unwrap_or_else(|e| panic!("{e}"));
}

/// The certificate, key and CA paths in problems write a byte that is not
/// UTF-8 as `\xff`, as every other path is written (they showed U+FFFD;
/// probe 329), and a backslash typed in a name doubled.
#[test]
fn tls_and_ca_paths_are_written_byte_for_byte() {
    use std::os::unix::ffi::OsStrExt;
    let dir = TempDir::new();
    let odd = dir.path().join(std::ffi::OsStr::from_bytes(b"d\xff"));
    std::fs::create_dir(&odd).unwrap();
    let config = format!(
        "{GOOD_CONFIG}[[server.tls]]\nlisten = \"127.0.0.1:3129\"\ncert = \"c\\\\xff.pem\"\nkey = \"key.pem\"\n\
         [upstream]\nca_file = \"ca.pem\"\n"
    );
    std::fs::write(odd.join("authgate.toml"), config).unwrap();
    std::fs::write(odd.join("users.toml"), good_users()).unwrap();
    let err = authgate::config::load(&odd.join("authgate.toml")).expect_err("refused").to_string();
    assert!(!err.contains('\u{fffd}'), "{err}");
    for file in [
        r"d\xff/c\\xff.pem: cannot read certificate",
        r"d\xff/key.pem: cannot read private key",
        r"d\xff/ca.pem: cannot read",
    ] {
        assert!(err.contains(file), "{file}: {err}");
    }
}

/// Empty TLS and CA paths are said to be empty (they named the folder, or
/// nothing: `upstream.ca_file: : cannot read`), and a missing key is said
/// beside a missing certificate (only the first was; probes 146, 147).
#[test]
fn empty_or_missing_tls_files_are_each_named() {
    let tls = |cert: &str, key: &str| {
        format!(
            "{GOOD_CONFIG}\n[[server.tls]]\nlisten = \"127.0.0.1:3129\"\ncert = \"{cert}\"\nkey = \"{key}\"\n"
        )
    };
    let err = load_err(&tls("missing-cert.pem", "missing-key.pem"), &good_users());
    assert!(
        err.contains(":16:8: server.tls: ") && err.contains("missing-cert.pem: cannot read certificate"),
        "{err}"
    );
    assert!(
        err.contains(":17:7: server.tls: ") && err.contains("missing-key.pem: cannot read private key"),
        "{err}"
    );
    let err = load_err(&tls("", " "), &good_users());
    assert!(err.contains(":16:8: server.tls.cert: must not be empty"), "{err}");
    assert!(err.contains(":17:7: server.tls.key: must not be empty"), "{err}");
    assert_eq!(err.lines().count(), 2, "{err}");
    // One empty, the other missing: both said (probe 149).
    for (cert, key, said) in
        [("", "missing-key.pem", ":17:7: server.tls: "), ("missing-cert.pem", "", ":16:8: server.tls: ")]
    {
        let err = load_err(&tls(cert, key), &good_users());
        assert!(err.contains(said) && err.contains("cannot read"), "{err}");
        assert!(err.contains("must not be empty"), "{err}");
    }
    let err = load_err(&format!("{GOOD_CONFIG}[upstream]\nca_file = \"\"\n"), &good_users());
    assert!(err.contains(":14:11: upstream.ca_file: must not be empty (leave it out"), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
}

/// A string left open is placed at its opening quotes (it was placed past
/// the file's last line), and a bad escape at its backslash (it was placed
/// after the letter); probe 147.
#[test]
fn an_open_string_and_a_bad_escape_are_placed_where_they_begin() {
    for (realm, at, said) in [
        (
            "\"\"\"authgate\nvia = true\n",
            ":2:9:",
            "invalid multiline basic string: not closed (it opens here)",
        ),
        (
            "'''authgate\nvia = true\n",
            ":2:9:",
            "invalid multiline literal string: not closed (it opens here)",
        ),
        ("\"ab\\qcd\"\n", ":2:12:", "invalid escape sequence"),
        // An escaped `\"""` or a run of four quotes, a bad `\u` (probe 149).
        ("\"\"\"abc\nmore \\\"\"\" here\nlines\n", ":2:9:", "invalid multiline basic string: not closed"),
        ("\"\"\"\"abc\nmore\n", ":2:9:", "invalid multiline basic string: not closed"),
        ("\"ab\\u12\"\n", ":2:12:", "invalid unicode 4-digit hex code"),
    ] {
        let err = load_err(&format!("[server]\nrealm = {realm}"), &good_users());
        assert!(err.contains(&format!("{at} {said}")), "{realm:?}: {err}");
    }
}
