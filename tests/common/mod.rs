//! Test support for the black-box tests: a real authgate on `127.0.0.1:0`,
//! real origin servers on loopback, a raw-socket HTTP client for assertions
//! on the wire, and a runner for the real `curl` binary.
//!
//! Every test binary compiles this module on its own and uses only part of
//! it, hence the `dead_code` allowance.

#![allow(dead_code)]

pub mod admin;
pub mod origin;
pub mod raw;
pub mod streams;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};

use base64::Engine;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

#[allow(unused_imports)]
pub use admin::*;
#[allow(unused_imports)]
pub use origin::*;
#[allow(unused_imports)]
pub use raw::*;
#[allow(unused_imports)]
pub use streams::*;

/// The realm every test proxy announces (not the default, so that tests see
/// the configured value reach the challenge).
pub const REALM: &str = "authgate-test";

/// A directory under the system temp dir, unique per process and per call,
/// removed on drop.
pub struct TempDir {
    path: PathBuf,
}

impl TempDir {
    /// Creates a fresh, empty directory.
    pub fn new() -> TempDir {
        static COUNTER: AtomicUsize = AtomicUsize::new(0);
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let path = std::env::temp_dir().join(format!("authgate-test-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path)
            .unwrap_or_else(|e| panic!("cannot create temp dir {}: {e}", path.display()));
        TempDir { path }
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Writes `name` (relative to the directory) and returns its full path.
    pub fn write(&self, name: &str, contents: impl AsRef<[u8]>) -> PathBuf {
        let p = self.path.join(name);
        if let Some(parent) = p.parent() {
            std::fs::create_dir_all(parent).unwrap();
        }
        std::fs::write(&p, contents).unwrap_or_else(|e| panic!("cannot write {}: {e}", p.display()));
        p
    }
}

impl Default for TempDir {
    fn default() -> Self {
        TempDir::new()
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

/// Tiny argon2 costs: the PHC string carries them, so the proxy verifies
/// with the same tiny costs and tests stay fast.
pub fn tiny_params() -> argon2::Params {
    argon2::Params::new(8, 1, 1, None).expect("valid argon2 params")
}

/// An argon2id PHC string for `password`, with tiny costs.
pub fn hash(password: &str) -> String {
    authgate::auth::password::hash_password(password, tiny_params())
        .expect("hashing with tiny params")
        .to_string()
}

/// An argon2 hash of `password` with parameters that make a verification
/// take a while, for tests that act while one runs: about 0.4 s in a debug
/// build, 0.2 s under `cargo test --release`. Optimised, argon2 runs about
/// 13 times faster: with the debug build's parameters a verification took
/// 30 ms there, and ended before a test's client gave up on it.
pub fn costly_hash(password: &str) -> String {
    let passes = if cfg!(debug_assertions) { 3 } else { 40 };
    let costly = argon2::Params::new(16 * 1024, passes, 1, None).expect("valid argon2 parameters");
    authgate::auth::password::hash_password(password, costly).expect("hashing").to_string()
}

/// A TOML basic string literal for `s` (quotes and escapes).
pub fn toml_str(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if c.is_control() => out.push_str(&format!("\\u{:04X}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// One `[users."NAME"]` table with a tiny-cost hash of `password`; `extra` is
/// appended inside the table (e.g. `disabled = true`).
pub fn user_entry(name: &str, password: &str, extra: &str) -> String {
    format!(
        "[users.{}]\npassword = {}\ngroups = [\"staff\"]\n{extra}\n\n",
        toml_str(name),
        toml_str(&hash(password))
    )
}

/// A users file with one enabled user per `(name, password)`.
pub fn users_toml(users: &[(&str, &str)]) -> String {
    users.iter().map(|(n, p)| user_entry(n, p, "disabled = false")).collect()
}

/// The config every test proxy starts from; `extra` is appended and must not
/// repeat these tables (use `[limits]`, `[log]` ...).
pub fn base_config(extra: &str) -> String {
    format!(
        r#"[server]
listen = ["127.0.0.1:0"]
realm = "{REALM}"
via = true

[auth]
users_file = "users.toml"
cache_ttl = "5m"

[egress]
allow_cidrs = ["127.0.0.0/8", "::1/128"]

{extra}
"#
    )
}

/// A running in-process proxy. Dropping it asks the proxy to shut down.
pub struct Proxy {
    /// Where the proxy listens.
    pub addr: SocketAddr,
    /// Holds the config and users file.
    pub dir: TempDir,
    shutdown: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<std::io::Result<()>>>,
}

impl Proxy {
    /// `http://127.0.0.1:PORT` (for curl's `-x`).
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// `http://USER:PASS@127.0.0.1:PORT`, userinfo percent-encoded.
    pub fn url_with(&self, user: &str, pass: &str) -> String {
        format!("http://{}:{}@{}", percent_encode(user), percent_encode(pass), self.addr)
    }

    /// Signals shutdown and waits for `run` to return.
    pub async fn stop(mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(task) = self.task.take() {
            task.await.expect("proxy task panicked").expect("proxy run failed");
        }
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }
}

/// Starts authgate in-process on `127.0.0.1:0` with users `(name, password)`.
/// Must be called inside a tokio runtime.
pub fn spawn_proxy(cfg_extra: &str, users: &[(&str, &str)]) -> Proxy {
    spawn_proxy_with_users_file(cfg_extra, &users_toml(users))
}

/// Like [`spawn_proxy`] with a hand-written users file (see [`user_entry`]).
pub fn spawn_proxy_with_users_file(cfg_extra: &str, users_file: &str) -> Proxy {
    let dir = TempDir::new();
    let config = dir.write("authgate.toml", base_config(cfg_extra));
    dir.write("users.toml", users_file);
    let snapshot =
        authgate::config::load(&config).unwrap_or_else(|e| panic!("test config does not load:\n{e}"));
    let std_listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    std_listener.set_nonblocking(true).unwrap();
    let addr = std_listener.local_addr().unwrap();
    let listener = tokio::net::TcpListener::from_std(std_listener).unwrap();
    let state = authgate::State::new(snapshot);
    let (tx, task) = serve(state, vec![listener]);
    Proxy { addr, dir, shutdown: Some(tx), task: Some(task) }
}

/// Runs authgate on `listeners` in a task: the switch that stops it (sent
/// or dropped), and the task.
pub fn serve<L: Into<authgate::server::Listener> + Send + 'static>(
    state: std::sync::Arc<authgate::State>,
    listeners: Vec<L>,
) -> (oneshot::Sender<()>, JoinHandle<std::io::Result<()>>) {
    let (tx, rx) = oneshot::channel::<()>();
    let task = tokio::spawn(authgate::run(state, listeners, async move {
        let _ = rx.await;
    }));
    (tx, task)
}

/// `Basic base64(user:pass)`.
pub fn basic(user: &str, pass: &str) -> String {
    basic_raw(format!("{user}:{pass}").as_bytes())
}

/// `Basic base64(bytes)`, for credentials that are not UTF-8.
pub fn basic_raw(bytes: &[u8]) -> String {
    format!("Basic {}", b64(bytes))
}

/// Standard base64 with padding.
pub fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// Percent-encodes everything but unreserved characters (RFC 3986).
pub fn percent_encode(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// A port on 127.0.0.1 where nothing listens: free when tried, and taken
/// from below the kernel's ephemeral range, so that no socket opened
/// meanwhile (an origin bound to port 0, a client's `connect`) is given it
/// before the test uses it. A port released by a bind to port 0 could be,
/// and an authgate told to listen there then failed to start. Ports are
/// tried in turn, from a start that differs from process to process.
pub fn closed_port() -> u16 {
    const FLOOR: usize = 10_000;
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    let ephemeral = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|range| range.split_whitespace().next()?.parse::<usize>().ok())
        .unwrap_or(32_768)
        .min(usize::from(u16::MAX));
    let span = ephemeral.saturating_sub(FLOOR);
    if span >= 1000 {
        let start = std::process::id() as usize * 7919 % span;
        for _ in 0..span {
            let port = (FLOOR + (start + NEXT.fetch_add(1, Ordering::Relaxed)) % span) as u16;
            if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
                return port;
            }
        }
    }
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

/// FNV-1a 64-bit, streaming: good enough to tell two 20 MiB bodies apart.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fnv(pub u64);

impl Default for Fnv {
    fn default() -> Self {
        Fnv(0xcbf2_9ce4_8422_2325)
    }
}

impl Fnv {
    pub fn update(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 ^= u64::from(b);
            self.0 = self.0.wrapping_mul(0x0100_0000_01b3);
        }
    }
}

/// The deterministic test pattern: byte `i` of a large body.
pub fn pattern_byte(i: u64) -> u8 {
    (i.wrapping_mul(31) ^ (i >> 12)) as u8
}

/// `len` bytes of the pattern starting at `offset`.
pub fn pattern(offset: u64, len: usize) -> Vec<u8> {
    (0..len as u64).map(|i| pattern_byte(offset + i)).collect()
}

/// What `curl` did.
#[derive(Debug)]
pub struct CurlOutput {
    pub status: ExitStatus,
    pub stdout: Vec<u8>,
    pub stderr: String,
}

impl CurlOutput {
    pub fn stdout_text(&self) -> String {
        String::from_utf8_lossy(&self.stdout).into_owned()
    }

    /// Panics with everything curl said unless it exited 0.
    pub fn assert_success(&self) -> &Self {
        assert!(
            self.status.success(),
            "curl failed ({}):\nstdout:\n{}\nstderr:\n{}",
            self.status,
            self.stdout_text(),
            self.stderr
        );
        self
    }
}

/// Proxy-related variables removed from every curl run, so the machine's
/// environment cannot change what a test means.
const PROXY_ENV: [&str; 8] = [
    "http_proxy",
    "HTTP_PROXY",
    "https_proxy",
    "HTTPS_PROXY",
    "all_proxy",
    "ALL_PROXY",
    "no_proxy",
    "NO_PROXY",
];

/// Runs the real `curl` with `args` (after `-q -sS --max-time 20`) and the
/// extra environment `env`, on the blocking pool so the proxy keeps running.
pub async fn curl(args: &[&str], env: &[(&str, &str)]) -> CurlOutput {
    let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
    let env: Vec<(String, String)> = env.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
    tokio::task::spawn_blocking(move || {
        let mut cmd = Command::new("curl");
        cmd.args(["-q", "-sS", "--max-time", "20"]).args(&args);
        for k in PROXY_ENV {
            cmd.env_remove(k);
        }
        cmd.envs(env).stdin(Stdio::null());
        let out = match cmd.output() {
            Ok(o) => o,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => panic!(
                "this test drives the real `curl` binary, which is not on PATH; \
                 install it (e.g. `apt-get install curl`)"
            ),
            Err(e) => panic!("cannot run curl: {e}"),
        };
        CurlOutput {
            status: out.status,
            stdout: out.stdout,
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    })
    .await
    .expect("curl runner panicked")
}

/// The real `authgate` binary, started as a child process.
pub struct Binary {
    pub child: std::process::Child,
    /// Where it listens (127.0.0.1, a port that was free).
    pub addr: SocketAddr,
    /// Its config file.
    pub config: PathBuf,
    /// Its users file.
    pub users: PathBuf,
}

/// Starts the binary in `dir` with a minimal config (one loopback listener,
/// loopback egress allowed) followed by `extra` sections, and `users` as its
/// users file. stderr is piped; stdout goes to `stdout`. Returns once it
/// listens.
pub fn start_binary(dir: &TempDir, extra: &str, users: &str, stdout: Stdio) -> Binary {
    start_binary_env(dir, extra, users, stdout, &[])
}

/// [`start_binary`] that returns at once, while the binary may still be
/// reading its files, for the tests of what happens during the start.
pub fn spawn_binary(dir: &TempDir, extra: &str, users: &str, stdout: Stdio) -> Binary {
    launch(dir, &[], extra, users, stdout, &[])
}

/// [`start_binary`] with `env` set for the process. `RUST_LOG` is removed
/// from the inherited environment (it overrides `[log] level`) unless `env`
/// sets it.
pub fn start_binary_env(
    dir: &TempDir,
    extra: &str,
    users: &str,
    stdout: Stdio,
    env: &[(&str, &str)],
) -> Binary {
    launch(dir, &[], extra, users, stdout, env).started()
}

/// [`start_binary`] run by `wrapper` (a program and its arguments, such as
/// `prlimit --nofile=256:256`) that ends by executing the binary: the child
/// is then the binary itself.
pub fn start_binary_under(
    dir: &TempDir,
    wrapper: &[&str],
    extra: &str,
    users: &str,
    stdout: Stdio,
) -> Binary {
    launch(dir, wrapper, extra, users, stdout, &[]).started()
}

/// [`start_binary`] with standard output and standard error both written
/// to one pipe (`2>&1`), whose reading end is returned.
pub fn start_binary_to_one_pipe(dir: &TempDir, extra: &str, users: &str) -> (Binary, std::io::PipeReader) {
    let (reader, writer) = std::io::pipe().unwrap();
    let stderr = Stdio::from(writer.try_clone().unwrap());
    let bin = launch_io(dir, &[], extra, users, (Stdio::from(writer), stderr), &[]).started();
    (bin, reader)
}

fn launch(
    dir: &TempDir,
    wrapper: &[&str],
    extra: &str,
    users: &str,
    stdout: Stdio,
    env: &[(&str, &str)],
) -> Binary {
    launch_io(dir, wrapper, extra, users, (stdout, Stdio::piped()), env)
}

fn launch_io(
    dir: &TempDir,
    wrapper: &[&str],
    extra: &str,
    users: &str,
    (stdout, stderr): (Stdio, Stdio),
    env: &[(&str, &str)],
) -> Binary {
    let port = closed_port();
    let cfg = format!(
        "[server]\nlisten = [\"127.0.0.1:{port}\"]\n[auth]\nusers_file = \"users.toml\"\n[egress]\nallow_cidrs = [\"127.0.0.0/8\"]\n{extra}"
    );
    let config = dir.write("authgate.toml", cfg);
    let users = dir.write("users.toml", users);
    let mut command = match wrapper.split_first() {
        Some((program, args)) => {
            let mut c = Command::new(program);
            c.args(args).arg(env!("CARGO_BIN_EXE_authgate"));
            c
        }
        None => Command::new(env!("CARGO_BIN_EXE_authgate")),
    };
    let child = command
        .arg("--config")
        .arg(&config)
        .env_remove("RUST_LOG")
        .envs(env.iter().copied())
        .stdout(stdout)
        .stderr(stderr)
        .spawn()
        .unwrap();
    Binary { child, addr: SocketAddr::from(([127, 0, 0, 1], port)), config, users }
}

impl Binary {
    /// Returns once the binary listens; a binary that exits first fails
    /// the test with what it said on stderr, not a later test step with a
    /// refused connection or a closed log pipe. It looks in /proc rather
    /// than connecting: a connection would count against the limits and in
    /// the log of the test.
    fn started(mut self) -> Binary {
        use std::io::Read;
        let deadline = std::time::Instant::now() + START_ALLOWANCE;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                let mut said = String::new();
                if let Some(mut stderr) = self.child.stderr.take() {
                    let _ = stderr.read_to_string(&mut said);
                }
                panic!("authgate exited at start ({status}):\n{said}");
            }
            if self.listens() {
                return self;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "authgate did not listen on {} within {START_ALLOWANCE:?}",
                self.addr
            );
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
    }

    /// Whether a socket of this process listens on `addr` (an IPv4
    /// address): a LISTEN line for it in /proc/net/tcp whose inode is one of
    /// the process's descriptors.
    fn listens(&self) -> bool {
        let SocketAddr::V4(v4) = self.addr else { return false };
        let local = format!("{:08X}:{:04X}", u32::from_le_bytes(v4.ip().octets()), v4.port());
        let table = std::fs::read_to_string("/proc/net/tcp").unwrap_or_default();
        // Thousands of lines after a run of tests (TIME_WAIT): only those
        // naming the address are split.
        let inodes: Vec<String> = table
            .lines()
            .filter(|line| line.contains(&local))
            .map(|line| line.split_whitespace().collect::<Vec<_>>())
            .filter(|f| f.len() > 9 && f[1] == local && f[3] == "0A")
            .map(|f| format!("socket:[{}]", f[9]))
            .collect();
        let Ok(fds) = std::fs::read_dir(format!("/proc/{}/fd", self.child.id())) else { return false };
        fds.flatten().any(|fd| {
            std::fs::read_link(fd.path())
                .is_ok_and(|target| inodes.iter().any(|i| target.as_os_str() == i.as_str()))
        })
    }

    /// Lowers the process's open-files limit to 64 (prlimit(1)) and opens
    /// 80 idle connections to it: it has no descriptor left, and those it
    /// cannot accept wait in the listen queue. Keep them to keep it so.
    pub async fn starve_of_descriptors(&self) -> Vec<tokio::net::TcpStream> {
        let limited = Command::new("prlimit")
            .args(["--nofile=64:64", "--pid", &self.child.id().to_string()])
            .status()
            .expect("prlimit (util-linux) runs");
        assert!(limited.success(), "prlimit failed: {limited:?}");
        let mut idle = Vec::new();
        for _ in 0..80 {
            idle.push(tokio::net::TcpStream::connect(self.addr).await.unwrap());
        }
        idle
    }

    /// Sends `signal` (`"TERM"`, `"HUP"`, ...) to the process with kill(1).
    pub fn signal(&self, signal: &str) {
        let _ = Command::new("kill").arg(format!("-{signal}")).arg(self.child.id().to_string()).status();
    }

    /// Stops the process with SIGTERM and returns its exit status and the
    /// output it wrote.
    pub fn stop(mut self) -> std::process::Output {
        use std::io::Read;
        fn read_all(pipe: Option<impl Read>) -> Vec<u8> {
            let mut buf = Vec::new();
            if let Some(mut p) = pipe {
                let _ = p.read_to_end(&mut buf);
            }
            buf
        }
        self.signal("TERM");
        // Both pipes at once, as `wait_with_output` does: a child blocked on
        // a full stderr pipe would never exit while stdout is read.
        let stderr = self.child.stderr.take();
        let stderr = std::thread::spawn(move || read_all(stderr));
        let stdout = read_all(self.child.stdout.take());
        let status = self.child.wait().unwrap();
        std::process::Output { status, stdout, stderr: stderr.join().unwrap() }
    }

    /// Stops the process (its stdout piped, the text log format); the one
    /// access line of the request for `path`.
    pub fn stop_for_access_line(self, path: &str) -> String {
        let out = self.stop();
        let stdout = String::from_utf8_lossy(&out.stdout);
        let lines: Vec<&str> =
            stdout.lines().filter(|l| l.contains("authgate::access") && l.contains(path)).collect();
        assert_eq!(lines.len(), 1, "one access line for {path}:\n{stdout}");
        lines[0].to_owned()
    }
}

/// A test that fails (panics) before `stop` must not leave the proxy
/// running: it would hold its port and keep writing to the terminal.
impl Drop for Binary {
    fn drop(&mut self) {
        // Both are no-ops once the child has been waited for.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Waits for `child` to exit and returns its output; kills it and fails
/// the test when it has not exited within 20 s (for the tests whose bug
/// was a hang).
pub fn output_within_20s(mut child: std::process::Child, what: &str) -> std::process::Output {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while child.try_wait().unwrap().is_none() {
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{what} did not exit within 20 s");
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    child.wait_with_output().unwrap()
}

/// Waits (at most 20 s) until something accepts connections on `addr`.
/// A TCP connection to `dst` from the loopback address `src` (127.0.0.x),
/// for what the proxy counts per client address.
pub async fn connect_from(src: &str, dst: SocketAddr) -> tokio::net::TcpStream {
    let sock = tokio::net::TcpSocket::new_v4().unwrap();
    sock.bind(format!("{src}:0").parse().unwrap()).unwrap();
    sock.connect(dst).await.unwrap()
}

/// How long a test waits for a proxy to start listening: a scheduling
/// allowance, not a bound on the start. Three binaries loading 20,000 or
/// 40,000 users at once (debug build, about 6 CPU-seconds each) beside the
/// other tests of a run on two cores took up to 24 s.
pub const START_ALLOWANCE: std::time::Duration = std::time::Duration::from_secs(90);

pub async fn wait_listening(addr: SocketAddr) {
    let deadline = std::time::Instant::now() + START_ALLOWANCE;
    while tokio::net::TcpStream::connect(addr).await.is_err() {
        assert!(
            std::time::Instant::now() < deadline,
            "the proxy did not start listening on {addr} within {START_ALLOWANCE:?}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

/// CPU seconds (user + system) this process has used
/// (`/proc/self/stat`, in clock ticks of 1/100 s on Linux).
pub fn cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap();
    let fields: Vec<&str> = stat.rsplit_once(')').unwrap().1.split_whitespace().collect();
    // After the command name: state is field 3; utime, stime are fields 14, 15.
    let ticks: f64 = fields[11].parse::<f64>().unwrap() + fields[12].parse::<f64>().unwrap();
    ticks / 100.0
}

/// The bytes a TCP socket bound to `local` (IPv4) has not had acknowledged,
/// from /proc/net/tcp (`tx_queue`).
pub fn send_queue(local: std::net::SocketAddr) -> Option<u64> {
    let table = std::fs::read_to_string("/proc/net/tcp").ok()?;
    let std::net::SocketAddr::V4(v4) = local else { return None };
    let me = format!("{:08X}:{:04X}", u32::from_le_bytes(v4.ip().octets()), v4.port());
    table.lines().skip(1).find_map(|line| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        (fields.get(1) == Some(&me.as_str()))
            .then(|| fields.get(4)?.split(':').next().and_then(|tx| u64::from_str_radix(tx, 16).ok()))
            .flatten()
    })
}
