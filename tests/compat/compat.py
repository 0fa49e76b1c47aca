#!/usr/bin/env python3
"""Client compatibility matrix: real clients through a running authgate.

Drives curl, Python `requests` and `urllib`, pip, git, npm, Java 17's
`java.net.http.HttpClient` and wget through `target/debug/authgate` (or
`$AUTHGATE_BIN`) to origins on loopback, with credentials given the way each
client's users give them, and asserts the result end to end. Writes the
matrix to tests/compat/MATRIX.md (or `--matrix PATH`) and prints it; exits 1
if any check failed, 2 if a client or a tool is missing.

Nothing is built here and nothing leaves loopback. Layout:

  client --> tap (127.0.0.1, records the bytes) --> authgate plain listener --> origins
  client ------------------------------------------> authgate TLS listener  --> origins

The tap is a byte-for-byte TCP relay: it lets the matrix say, per check,
whether the client sent Proxy-Authorization preemptively or only after a 407,
and how it encoded a non-ASCII password. Connections to the TLS listener are
encrypted, so those rows say "not observed".

Usually started by tests/compat/run.sh, which owns the temp dir ($COMPAT_TMP)
and kills every PID listed in $COMPAT_TMP/pids on exit.
"""

import argparse
import base64
import hashlib
import io
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
import traceback
import unicodedata
import zipfile
from datetime import datetime, timezone
from pathlib import Path
from urllib.parse import quote

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
PY = sys.executable  # an absolute path: $HOME is replaced for the clients, which breaks pyenv shims

SIMPLE = ("alice", "s3cret")
SPECIAL = ("bob", "p@ss:w%rd \u00fc")  # '@', ':', '%', a space and a precomposed u-umlaut
WHEEL = "compatpkg-0.1.0-py3-none-any.whl"
NPM_PKG, NPM_VERSION = "compat-pkg", "1.0.0"
README = "hello from the compat repo\n"

CLIENT_TIMEOUT = 90


class Failure(Exception):
    """A check's assertion failed; the message says what was seen."""


def ensure(cond, msg):
    if not cond:
        raise Failure(msg)


# --------------------------------------------------------------------------
# processes


class Procs:
    """Processes started by the run, recorded in PIDS_FILE for run.sh's trap."""

    def __init__(self, pids_file):
        self.pids_file = pids_file
        self.procs = []

    def start(self, name, cmd, log_path, env=None, cwd=None):
        log = open(log_path, "wb")
        p = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                             env=env, cwd=cwd)
        log.close()
        self.procs.append((name, p))
        with open(self.pids_file, "a") as f:
            f.write("%d\n" % p.pid)
        return p

    def stop_all(self):
        for name, p in reversed(self.procs):
            if p.poll() is None:
                p.terminate()
        for name, p in reversed(self.procs):
            try:
                p.wait(timeout=5)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port, proc, what, timeout=15):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            raise SystemExit("%s exited with %s before listening on %d" % (what, proc.returncode, port))
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.05)
    raise SystemExit("%s did not listen on 127.0.0.1:%d within %ss" % (what, port, timeout))


def run(cmd, env, timeout=CLIENT_TIMEOUT, cwd=None, input=None):
    try:
        return subprocess.run(cmd, env=env, cwd=cwd, capture_output=True, timeout=timeout,
                              input=input)
    except subprocess.TimeoutExpired as e:
        raise Failure("timed out after %ss: %s\nstdout: %s\nstderr: %s"
                      % (timeout, " ".join(map(str, cmd)), text(e.stdout), text(e.stderr)))


def short(s, n=70):
    """The end of a long message, which is where clients put the status."""
    s = " ".join(str(s).split()).rstrip(")'\"")
    return s if len(s) <= n else "…" + s[-n:].split(" ", 1)[-1]


def text(b):
    if b is None:
        return ""
    return b.decode("utf-8", "replace") if isinstance(b, bytes) else b


# --------------------------------------------------------------------------
# the tap: a recording TCP relay in front of the plain proxy listener

REQ_RE = re.compile(rb"(?:^|(?<=\n))(GET|HEAD|POST|PUT|DELETE|OPTIONS|PATCH|CONNECT) (\S+) HTTP/1\.[01]\r\n"
                    rb"((?:[^\r\n]*\r\n)*?)\r\n")
AUTH_RE = re.compile(rb"(?:^|\r\n)proxy-authorization:[ \t]*basic[ \t]+([A-Za-z0-9+/=]+)", re.I)
STATUS_RE = re.compile(rb"(?:^|(?<=\n))HTTP/1\.[01] (\d{3})")


class Conn:
    def __init__(self):
        self.up = bytearray()
        self.down = bytearray()
        self.done = threading.Event()


class Tap:
    def __init__(self, upstream_port):
        self.upstream = upstream_port
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(128)
        self.port = self.sock.getsockname()[1]
        self.conns = []
        self.lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while True:
            try:
                c, _ = self.sock.accept()
            except OSError:
                return
            rec = Conn()
            with self.lock:
                self.conns.append(rec)
            threading.Thread(target=self._relay, args=(c, rec), daemon=True).start()

    def _relay(self, c, rec):
        try:
            u = socket.create_connection(("127.0.0.1", self.upstream))
        except OSError:
            c.close()
            rec.done.set()
            return
        t = threading.Thread(target=self._pump, args=(u, c, rec.down), daemon=True)
        t.start()
        self._pump(c, u, rec.up)
        t.join()
        c.close()
        u.close()
        rec.done.set()

    @staticmethod
    def _pump(src, dst, buf):
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                buf += data
                dst.sendall(data)
            dst.shutdown(socket.SHUT_WR)
        except OSError:
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def mark(self):
        with self.lock:
            return len(self.conns)

    def since(self, mark, wait=1.5):
        deadline = time.time() + wait
        with self.lock:
            conns = self.conns[mark:]
        for c in conns:
            c.done.wait(max(0.0, deadline - time.time()))
        return conns


def wire_summary(conns, expect_creds=None):
    """What the proxy received: who sent Proxy-Authorization when, in which encoding."""
    if not conns:
        return "proxy not used"
    reqs, statuses = [], []
    for c in conns:
        up, down = bytes(c.up), bytes(c.down)
        for m in REQ_RE.finditer(up):
            a = AUTH_RE.search(b"\r\n" + m.group(3))
            reqs.append((m.group(1).decode(), a.group(1) if a else None))
        statuses += [int(s) for s in STATUS_RE.findall(down)]
    if not reqs:
        return "%d conn, no request parsed" % len(conns)
    creds = [r[1] for r in reqs if r[1]]
    if reqs[0][1]:
        when = "preemptive"
    elif creds:
        when = "after 407" if 407 in statuses else "after a challenge"
        n407 = statuses.count(407)
        if n407 > 1:
            when += " (%d × 407)" % n407
    else:
        when = "no credentials sent"
    parts = [when]
    if creds:
        raw = base64.b64decode(creds[-1] + b"==="[: (-len(creds[-1])) % 4])
        if any(b >= 0x80 for b in raw):
            try:
                decoded, enc = raw.decode("utf-8"), "UTF-8"
            except UnicodeDecodeError:
                decoded, enc = raw.decode("latin-1"), "ISO-8859-1"
            u = "\u00fc".encode("utf-8" if enc == "UTF-8" else "latin-1")
            if enc == "UTF-8" and "u\u0308".encode() in raw:
                u = "u\u0308".encode()  # decomposed: NFD
            parts.append("%s (\u00fc = %s)" % (enc, u.hex(" ")))
            if expect_creds and unicodedata.normalize("NFC", decoded) != "%s:%s" % expect_creds:
                parts.append("credentials differ from the configured ones")
    methods = sorted({r[0] for r in reqs})
    if "CONNECT" in methods:
        parts.append("CONNECT")
    if len(conns) > 1:
        parts.append("%d conns" % len(conns))
    return "; ".join(parts)


# --------------------------------------------------------------------------
# fixtures: certificates, a wheel, an npm tarball, git repositories


def openssl(*args, cwd):
    out = subprocess.run(["openssl", *args], cwd=cwd, capture_output=True)
    if out.returncode != 0:
        raise SystemExit("openssl %s failed:\n%s" % (" ".join(args), text(out.stderr)))


def make_certs(d):
    """A test CA and two leaf certs (proxy, origin) for 127.0.0.1 and localhost."""
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    openssl("req", "-x509", *ec, "-keyout", "ca-key.pem", "-out", "ca.pem", "-days", "2",
            "-subj", "/CN=authgate compat test CA",
            "-addext", "basicConstraints=critical,CA:TRUE",
            "-addext", "keyUsage=critical,keyCertSign,cRLSign", cwd=d)
    (d / "leaf.ext").write_text(
        "subjectAltName=IP:127.0.0.1,DNS:localhost\n"
        "basicConstraints=critical,CA:FALSE\n"
        "keyUsage=critical,digitalSignature\n"
        "extendedKeyUsage=serverAuth\n")
    for name in ("proxy", "origin"):
        openssl("req", *ec, "-keyout", "%s-key.pem" % name, "-out", "%s.csr" % name,
                "-subj", "/CN=127.0.0.1", cwd=d)
        openssl("x509", "-req", "-in", "%s.csr" % name, "-CA", "ca.pem", "-CAkey", "ca-key.pem",
                "-CAcreateserial", "-days", "2", "-extfile", "leaf.ext",
                "-out", "%s-leaf.pem" % name, cwd=d)
        chain = (d / ("%s-leaf.pem" % name)).read_text() + (d / "ca.pem").read_text()
        (d / ("%s-cert.pem" % name)).write_text(chain)


def make_wheel(d):
    files = {
        "compatpkg/__init__.py": b'VERSION = "0.1.0"\n',
        "compatpkg-0.1.0.dist-info/METADATA":
            b"Metadata-Version: 2.1\nName: compatpkg\nVersion: 0.1.0\nSummary: authgate compat test\n",
        "compatpkg-0.1.0.dist-info/WHEEL":
            b"Wheel-Version: 1.0\nGenerator: authgate-compat\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
    }
    record = ""
    for name, data in files.items():
        digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
        record += "%s,sha256=%s,%d\n" % (name, digest, len(data))
    record += "compatpkg-0.1.0.dist-info/RECORD,,\n"
    files["compatpkg-0.1.0.dist-info/RECORD"] = record.encode()
    (d / "wheels").mkdir(parents=True)
    with zipfile.ZipFile(d / "wheels" / WHEEL, "w", zipfile.ZIP_DEFLATED) as z:
        for name, data in files.items():
            z.writestr(name, data)


def make_npm(d):
    (d / "npm").mkdir(parents=True)
    files = {
        "package/package.json": json.dumps({"name": NPM_PKG, "version": NPM_VERSION,
                                            "main": "index.js", "license": "MIT"}).encode(),
        "package/index.js": b"module.exports = 'compat';\n",
    }
    with tarfile.open(d / "npm" / ("%s-%s.tgz" % (NPM_PKG, NPM_VERSION)), "w:gz") as t:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size, info.mode, info.mtime = len(data), 0o644, 0
            t.addfile(info, io.BytesIO(data))


def make_git(d, env):
    work = d / "git-work"
    work.mkdir()
    (work / "README.md").write_text(README)

    def git(*args, cwd=work):
        out = subprocess.run(["git", *args], cwd=cwd, env=env, capture_output=True)
        if out.returncode != 0:
            raise SystemExit("git %s failed:\n%s" % (" ".join(args), text(out.stderr)))

    git("init", "-q", "-b", "main")
    git("add", "README.md")
    git("-c", "user.name=compat", "-c", "user.email=compat@localhost", "commit", "-q", "-m", "init")
    for kind in ("git", "dumb"):
        (d / kind).mkdir()
        git("clone", "-q", "--bare", str(work), str(d / kind / "repo.git"), cwd=d)
    git("update-server-info", cwd=d / "dumb" / "repo.git")


# --------------------------------------------------------------------------
# the environment every check runs in


class Env:
    def __init__(self, tmp, procs, bin_path):
        self.tmp = tmp
        self.procs = procs
        self.bin = bin_path
        self.ca = str(tmp / "certs" / "ca.pem")
        self.home = tmp / "home"
        self.home.mkdir()
        (tmp / "tmp").mkdir()
        self.n = 0

    def base_env(self, **extra):
        """A clean environment: no inherited proxies, no user config files."""
        env = {
            "PATH": os.environ.get("PATH", "/usr/local/bin:/usr/bin:/bin"),
            "HOME": str(self.home),
            "LANG": "C.UTF-8",
            "LC_ALL": "C.UTF-8",
            "TMPDIR": str(self.tmp / "tmp"),
            "GIT_CONFIG_NOSYSTEM": "1",
            "GIT_TERMINAL_PROMPT": "0",
            "GIT_ASKPASS": "",
            "SSH_ASKPASS": "",
            "PIP_CONFIG_FILE": os.devnull,
            "PIP_NO_INPUT": "1",
            "PYTHONDONTWRITEBYTECODE": "1",
            "npm_config_update_notifier": "false",
            "NO_COLOR": "1",
        }
        for k in ("JAVA_HOME", "SYSTEMROOT"):
            if k in os.environ:
                env[k] = os.environ[k]
        env.update(extra)
        return env

    def fresh_dir(self, name):
        self.n += 1
        p = self.tmp / "work" / ("%03d-%s" % (self.n, name))
        p.mkdir(parents=True)
        return p

    def url(self, path, tls=False):
        if tls:
            return "https://127.0.0.1:%d%s" % (self.https_port, path)
        return "http://127.0.0.1:%d%s" % (self.http_port, path)

    def proxy(self, creds=None, tls=False, host="127.0.0.1"):
        """The proxy URL, credentials percent-encoded as a URL needs them."""
        scheme, port = ("https", self.tls_proxy_port) if tls else ("http", self.tap.port)
        auth = ""
        if creds:
            auth = "%s:%s@" % (quote(creds[0], safe=""), quote(creds[1], safe=""))
        return "%s://%s%s:%d" % (scheme, auth, host, port)

    def hostport(self):
        return "127.0.0.1:%d" % self.tap.port

    def log_mark(self):
        return self.log_path.stat().st_size

    def log_events(self, mark=0):
        """authgate's JSON log lines since byte offset `mark`, as (event target, fields, raw line)."""
        with open(self.log_path, "rb") as f:
            f.seek(mark)
            lines = f.read().decode("utf-8", "replace").splitlines()
        for line in lines:
            try:
                pairs = json.loads(line, object_pairs_hook=lambda kv: kv)
            except ValueError:
                yield None, {}, line
                continue
            # The tracing target (`authgate::access`, ...) is the key "target";
            # the request's own target is "request_target".
            fields, event_target = {}, None
            for k, v in pairs:
                if k == "target" and isinstance(v, str) and v.split("::")[0] == "authgate":
                    event_target = v
                else:
                    fields.setdefault(k, v)
            yield event_target, fields, line

    def log_since(self, mark):
        out = []
        for target, fl, line in self.log_events(mark):
            if target in ("authgate::access", "authgate::audit"):
                keys = ("method", "request_target", "status", "outcome", "user", "username", "reason")
                out.append("%s %s" % (target.split("::")[1],
                                      " ".join("%s=%s" % (k, fl[k]) for k in keys if k in fl)))
            elif fl.get("level") in ("WARN", "ERROR") or target is None:
                out.append(line)
        return out


def setup(env):
    tmp = env.tmp
    certs = tmp / "certs"
    certs.mkdir()
    make_certs(certs)
    www = tmp / "www"
    www.mkdir()
    make_wheel(www)
    make_npm(www)
    make_git(www, env.base_env())

    # origins
    ports_file = tmp / "origin-ports.json"
    origin = env.procs.start("origin", [PY, str(HERE / "origin.py"), str(www), str(certs / "origin-cert.pem"),
                                        str(certs / "origin-key.pem"), str(ports_file)],
                             tmp / "origin.log", env=env.base_env())
    deadline = time.time() + 15
    while not ports_file.exists():
        if origin.poll() is not None or time.time() > deadline:
            raise SystemExit("origin did not start:\n" + (tmp / "origin.log").read_text())
        time.sleep(0.05)
    ports = json.loads(ports_file.read_text())
    env.http_port, env.https_port = ports["http"], ports["https"]

    # authgate
    gate = tmp / "gate"
    gate.mkdir()
    shutil.copy(certs / "proxy-cert.pem", gate / "proxy-cert.pem")
    shutil.copy(certs / "proxy-key.pem", gate / "proxy-key.pem")
    plain, tls = free_port(), free_port()
    env.plain_port, env.tls_proxy_port = plain, tls
    cfg = gate / "authgate.toml"
    cfg.write_text(
        '[server]\nlisten = ["127.0.0.1:%d"]\nrealm = "authgate"\nvia = true\n'
        '[[server.tls]]\nlisten = "127.0.0.1:%d"\ncert = "proxy-cert.pem"\nkey = "proxy-key.pem"\n'
        '[auth]\nusers_file = "users.toml"\n'
        '[auth.argon2]\nm_cost = 64\nt_cost = 1\np_cost = 1\n'
        '[auth.throttle]\nenabled = false\n'
        '[egress]\nallow_cidrs = ["127.0.0.0/8", "::1/128"]\n'
        '[log]\nlevel = "info"\nformat = "json"\n' % (plain, tls))
    (gate / "users.toml").write_text("")
    users = ""
    for user, pw in (SIMPLE, SPECIAL):
        out = subprocess.run([env.bin, "hash-password", "--config", str(cfg)],
                             input=(pw + "\n").encode(), capture_output=True)
        if out.returncode != 0:
            raise SystemExit("authgate hash-password failed:\n" + text(out.stderr))
        users += '[users.%s]\npassword = "%s"\ngroups = ["staff"]\n\n' % (user, text(out.stdout).strip())
    (gate / "users.toml").write_text(users)
    env.log_path = tmp / "authgate.log"
    proc = env.procs.start("authgate", [env.bin, "--config", str(cfg)], env.log_path,
                           env=env.base_env(RUST_BACKTRACE="1"))
    wait_port(plain, proc, "authgate")
    wait_port(tls, proc, "authgate (TLS listener)")
    env.authgate = proc
    env.tap = Tap(plain)


# --------------------------------------------------------------------------
# the matrix


class Matrix:
    def __init__(self, env):
        self.env = env
        self.rows = []

    def check(self, client, creds, test, expect, fn, tap=True, expect_creds=None):
        """Runs one check; fn returns a short description of what was observed."""
        t0 = time.time()
        tmark = self.env.tap.mark()
        lmark = self.env.log_mark()
        try:
            observed, ok, detail = fn(), True, ""
        except Failure as e:
            observed, ok, detail = "FAILED", False, str(e)
        except Exception:
            observed, ok, detail = "ERROR", False, traceback.format_exc()
        if tap is None:
            wire = "-"
        elif tap:
            wire = wire_summary(self.env.tap.since(tmark), expect_creds)
        else:
            wire = "TLS to the proxy (not observed)"
        if not ok:
            log = self.env.log_since(lmark)
            detail += "\nwire: %s\nauthgate log:\n  %s" % (wire, "\n  ".join(log[-12:]) or "(nothing)")
        row = dict(client=client, creds=creds, test=test, expect=expect, observed=observed,
                   wire=wire, ok=ok, detail=detail, secs=time.time() - t0)
        self.rows.append(row)
        print("%s  %-7s | %s | %s -> %s  (%.1fs)" % ("ok  " if ok else "FAIL", client, creds, test,
                                                     observed, row["secs"]), flush=True)
        if not ok:
            print("      " + detail.replace("\n", "\n      "), flush=True)
        return ok

    def failed(self):
        return [r for r in self.rows if not r["ok"]]

    def markdown(self, versions, elapsed):
        def cell(s):
            return str(s).replace("|", "\\|").replace("\n", " ")

        out = [
            "# authgate client compatibility matrix",
            "",
            "Generated by `tests/compat/run.sh` (do not edit by hand): each row is a real client",
            "binary driven through a running authgate to origins on loopback, asserted end to end.",
            "",
            "- authgate: `%s`" % versions.pop("authgate"),
            "- run: %s, %d checks, %d failed, %.0f s" % (
                datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"), len(self.rows),
                len(self.failed()), elapsed),
            "- clients: " + "; ".join("%s `%s`" % (k, v) for k, v in versions.items()),
            "- users: `alice` / `s3cret`, and `bob` / `p@ss:w%rd \u00fc` (\"special\": `@`, `:`, `%`, a space,"
            " a non-ASCII letter; percent-encoded as `p%40ss%3Aw%25rd%20%C3%BC` where it sits in a URL)",
            "- \"via CONNECT\": an `https://` origin reached through a CONNECT tunnel;"
            " \"TLS proxy\": the client speaks TLS to authgate's `[[server.tls]]` listener",
            "- wire: what the proxy received (recorded by a TCP tap in front of the plain listener):"
            " credentials `preemptive` or only `after 407`, and the encoding of a non-ASCII password",
            "- retries: pip runs with `--retries 0` and npm with `--fetch-retries 0`, so that a failure"
            " shows at once; by default pip sends a refused request 6 times (README, Client setup)",
            "",
            "| client | credentials given as | test | expected | observed | wire | result |",
            "|---|---|---|---|---|---|---|",
        ]
        for r in self.rows:
            out.append("| %s |" % " | ".join(cell(x) for x in (
                r["client"], r["creds"], r["test"], r["expect"], r["observed"], r["wire"],
                "pass" if r["ok"] else "**FAIL**")))
        if self.failed():
            out += ["", "## Failures", ""]
            for r in self.failed():
                out += ["### %s: %s: %s" % (r["client"], r["creds"], r["test"]), "", "```",
                        r["detail"].strip(), "```", ""]
        return "\n".join(out) + "\n"


# --------------------------------------------------------------------------
# helpers shared by the checks


def echo_of(body):
    """The origin's /echo JSON inside a client's output."""
    m = re.search(r'\{"method".*\}', body)
    ensure(m, "no echo from the origin in the output:\n%s" % body[-2000:])
    return json.loads(m.group(0))


def header(seen, name):
    return [v for k, v in seen["headers"] if k.lower() == name.lower()]


def assert_forwarded(seen, path, tls):
    ensure(seen["path"].startswith(path), "origin saw path %r, wanted %r" % (seen["path"], path))
    ensure(not header(seen, "proxy-authorization"), "Proxy-Authorization reached the origin: %r" % seen)
    ensure(seen["tls"] == tls, "origin TLS=%s, wanted %s" % (seen["tls"], tls))
    if tls:
        ensure(not header(seen, "via"), "a tunnelled request carries Via: %r" % seen)
    else:
        ensure(any("authgate" in v for v in header(seen, "via")), "no Via: authgate, so not proxied: %r" % seen)


def assert_direct(seen, conns):
    ensure(not header(seen, "via"), "went through the proxy (Via present): %r" % seen)
    ensure(conns == 0, "the proxy saw %d connection(s)" % conns)


# --------------------------------------------------------------------------
# curl

CURL_MARK = "\n@@compat@@"


def curl(env, args, extra_env=None):
    d = env.fresh_dir("curl")
    hdr = d / "headers"
    cmd = ["curl", "-q", "-sS", "--max-time", "30", "--cacert", env.ca, "-D", str(hdr),
           "-w", CURL_MARK + " %{http_code} %{http_connect} %{num_connects}", *args]
    out = run(cmd, env.base_env(**(extra_env or {})))
    stdout = text(out.stdout)
    body, _, tail = stdout.rpartition(CURL_MARK)
    code, connect, nconn = (tail.split() + ["?", "?", "?"])[:3]
    headers = hdr.read_text(errors="replace") if hdr.exists() else ""
    return dict(rc=out.returncode, body=body, code=code, connect=connect, nconn=nconn,
                headers=headers, stderr=text(out.stderr), cmd=cmd)


def curl_ok(env, args, path, tls, extra_env=None):
    r = curl(env, args + [env.url(path, tls)], extra_env)
    ensure(r["rc"] == 0 and r["code"] == "200",
           "curl exit %s, status %s\n%s\n%s" % (r["rc"], r["code"], r["stderr"], r["body"][-1500:]))
    assert_forwarded(echo_of(r["body"]), path, tls)
    return "200" + (" (CONNECT %s)" % r["connect"] if tls else "")


def curl_407(env, args, tls):
    r = curl(env, args + [env.url("/echo/nope", tls)])
    h = r["headers"].lower()
    ensure('proxy-authenticate: basic realm="authgate", charset="utf-8"' in h,
           "no Basic challenge with charset in:\n%s" % r["headers"])
    if tls:
        ensure(r["rc"] != 0 and r["connect"] == "407",
               "curl exit %s, CONNECT %s\n%s" % (r["rc"], r["connect"], r["stderr"]))
        return "exit %d, CONNECT 407 + challenge" % r["rc"]
    ensure(r["code"] == "407", "status %s\n%s" % (r["code"], r["stderr"]))
    return "407 + challenge"


def curl_401(env, args, tls):
    r = curl(env, args + [env.url("/private", tls)])
    ensure(r["code"] == "401", "status %s, exit %s\n%s" % (r["code"], r["rc"], r["stderr"]))
    ensure('www-authenticate: basic realm="origin"' in r["headers"].lower(),
           "origin's WWW-Authenticate missing:\n%s" % r["headers"])
    return "401 + WWW-Authenticate"


def test_curl(m, env):
    url_creds = ["-x", env.proxy(SIMPLE)]
    how = "`-x http://u:p@host:port`"
    m.check("curl", how, "GET http://", "200", lambda: curl_ok(env, url_creds, "/echo/curl-url", False))
    m.check("curl", how, "GET https:// via CONNECT", "200",
            lambda: curl_ok(env, url_creds, "/echo/curl-url-tls", True))
    m.check("curl", how, "origin 401 (http://)", "401 shown", lambda: curl_401(env, url_creds, False))
    m.check("curl", how, "origin 401 (via CONNECT)", "401 shown", lambda: curl_401(env, url_creds, True))
    m.check("curl", "`-x http://host:port` (no credentials)", "GET http://", "407 + challenge",
            lambda: curl_407(env, ["-x", env.proxy()], False))
    m.check("curl", "`-x http://host:port` (no credentials)", "GET https:// via CONNECT",
            "CONNECT 407, curl fails", lambda: curl_407(env, ["-x", env.proxy()], True))
    m.check("curl", "`-x http://u:WRONG@host:port`", "GET http://", "407",
            lambda: curl_407(env, ["-x", env.proxy((SIMPLE[0], "wrong"))], False))

    pu = ["-x", env.proxy(), "--proxy-user", "%s:%s" % SIMPLE]
    how = "`--proxy-user u:p`"
    m.check("curl", how, "GET http://", "200", lambda: curl_ok(env, pu, "/echo/curl-pu", False))
    m.check("curl", how, "GET https:// via CONNECT", "200", lambda: curl_ok(env, pu, "/echo/curl-pu-tls", True))

    m.check("curl", "env `http_proxy=http://u:p@…`", "GET http://", "200",
            lambda: curl_ok(env, [], "/echo/curl-env", False, {"http_proxy": env.proxy(SIMPLE)}))
    m.check("curl", "env `HTTPS_PROXY=http://u:p@…`", "GET https:// via CONNECT", "200",
            lambda: curl_ok(env, [], "/echo/curl-env-tls", True, {"HTTPS_PROXY": env.proxy(SIMPLE)}))

    def upper_http_proxy_ignored():
        mark = env.tap.mark()
        r = curl(env, [env.url("/echo/curl-upper")], {"HTTP_PROXY": env.proxy(SIMPLE)})
        ensure(r["code"] == "200", "status %s: %s" % (r["code"], r["stderr"]))
        assert_direct(echo_of(r["body"]), len(env.tap.since(mark)))
        return "200 direct: curl ignores upper-case HTTP_PROXY"
    m.check("curl", "env `HTTP_PROXY` (upper case only)", "GET http://", "not proxied (curl reads only http_proxy)",
            upper_http_proxy_ignored)

    def no_proxy():
        mark = env.tap.mark()
        r = curl(env, [env.url("/echo/curl-noproxy")],
                 {"http_proxy": env.proxy(SIMPLE), "NO_PROXY": "127.0.0.1"})
        ensure(r["code"] == "200", "status %s: %s" % (r["code"], r["stderr"]))
        assert_direct(echo_of(r["body"]), len(env.tap.since(mark)))
        return "200 direct"
    m.check("curl", "env `http_proxy` + `NO_PROXY=127.0.0.1`", "GET http://", "bypasses the proxy", no_proxy)

    tlsp = ["--proxy", env.proxy(SIMPLE, tls=True, host="localhost"), "--proxy-cacert", env.ca]
    how = "`--proxy https://u:p@localhost:port --proxy-cacert ca.pem`"
    m.check("curl", how, "TLS proxy, GET http://", "200",
            lambda: curl_ok(env, tlsp, "/echo/curl-tlsproxy", False), tap=False)
    m.check("curl", how, "TLS proxy, GET https:// via CONNECT", "200",
            lambda: curl_ok(env, tlsp, "/echo/curl-tlsproxy-tls", True), tap=False)
    m.check("curl", "`--proxy https://host:port` (no credentials)", "TLS proxy, GET http://", "407 + challenge",
            lambda: curl_407(env, ["--proxy", env.proxy(tls=True, host="localhost"), "--proxy-cacert", env.ca],
                             False), tap=False)

    anyauth = ["--proxy-anyauth", "-U", "%s:%s" % SIMPLE, "-x", env.proxy()]
    how = "`--proxy-anyauth -U u:p`"
    m.check("curl", how, "GET http://", "200", lambda: curl_ok(env, anyauth, "/echo/curl-any", False))
    m.check("curl", how, "GET https:// via CONNECT", "200", lambda: curl_ok(env, anyauth, "/echo/curl-any-tls", True))

    how = "special, `-x http://bob:p%40ss%3Aw%25rd%20%C3%BC@…`"
    sp = ["-x", env.proxy(SPECIAL)]
    m.check("curl", how, "GET http://", "200", lambda: curl_ok(env, sp, "/echo/curl-sp", False), expect_creds=SPECIAL)
    m.check("curl", how, "GET https:// via CONNECT", "200",
            lambda: curl_ok(env, sp, "/echo/curl-sp-tls", True), expect_creds=SPECIAL)
    sp_pu = ["-x", env.proxy(), "--proxy-user", "%s:%s" % SPECIAL]
    m.check("curl", "special, `--proxy-user 'bob:p@ss:w%rd \u00fc'`", "GET http://", "200",
            lambda: curl_ok(env, sp_pu, "/echo/curl-sp-pu", False), expect_creds=SPECIAL)
    nfd = (SPECIAL[0], unicodedata.normalize("NFD", SPECIAL[1]))
    m.check("curl", "special, `--proxy-user` with a decomposed ü (u + U+0308, NFD, as macOS input gives)", "GET http://",
            "200 (authgate normalises to NFC)",
            lambda: curl_ok(env, ["-x", env.proxy(), "--proxy-user", "%s:%s" % nfd], "/echo/curl-nfd", False),
            expect_creds=SPECIAL)
    m.check("curl", "special, env `http_proxy` (percent-encoded)", "GET http://", "200",
            lambda: curl_ok(env, [], "/echo/curl-sp-env", False, {"http_proxy": env.proxy(SPECIAL)}),
            expect_creds=SPECIAL)
    m.check("curl", "special, `--proxy https://bob:…@localhost:port` (percent-encoded)",
            "TLS proxy, GET https:// via CONNECT", "200",
            lambda: curl_ok(env, ["--proxy", env.proxy(SPECIAL, tls=True, host="localhost"),
                                  "--proxy-cacert", env.ca], "/echo/curl-sp-tlsproxy", True), tap=False)


# --------------------------------------------------------------------------
# Python requests and urllib


def pyclient(env, spec, extra_env=None):
    spec = dict(spec, cafile=env.ca)
    out = run([PY, str(HERE / "pyclient.py"), json.dumps(spec)], env.base_env(**(extra_env or {})))
    try:
        return json.loads(text(out.stdout).strip().splitlines()[-1])
    except (ValueError, IndexError):
        raise Failure("pyclient exit %s\n%s\n%s" % (out.returncode, text(out.stdout), text(out.stderr)))


def py_ok(env, lib, path, tls, proxies=None, extra_env=None, **kw):
    r = pyclient(env, dict(lib=lib, url=env.url(path, tls), proxies=proxies, **kw), extra_env)
    ensure(r["status"] == 200, "got %r" % r)
    assert_forwarded(echo_of(r["body"]), path, tls)
    return "200"


def py_status(env, lib, path, tls, status, proxies=None, extra_env=None):
    r = pyclient(env, dict(lib=lib, url=env.url(path, tls), proxies=proxies), extra_env)
    ensure(r["status"] == status, "wanted status %d, got %r" % (status, r))
    if status == 407:
        pa = {k.lower(): v for k, v in r["headers"].items()}.get("proxy-authenticate", "")
        ensure('charset="UTF-8"' in pa, "challenge %r" % pa)
    if status == 401:
        wa = {k.lower(): v for k, v in r["headers"].items()}.get("www-authenticate", "")
        ensure(wa == 'Basic realm="origin"', "WWW-Authenticate %r" % wa)
    return "status %d" % status


def py_raises(env, lib, path, tls, exc, proxies=None, extra_env=None):
    r = pyclient(env, dict(lib=lib, url=env.url(path, tls), proxies=proxies), extra_env)
    ensure(r["error_type"] == exc and "407" in (r["error"] or ""), "wanted %s mentioning 407, got %r" % (exc, r))
    return "%s: %s" % (exc.rsplit(".", 1)[-1], short(r["error"], 60))


def py_direct(env, lib, path, extra_env):
    mark = env.tap.mark()
    r = pyclient(env, dict(lib=lib, url=env.url(path), proxies=None), extra_env)
    ensure(r["status"] == 200, "got %r" % r)
    assert_direct(echo_of(r["body"]), len(env.tap.since(mark)))
    return "200 direct"


def test_python(m, env, lib):
    both = lambda creds: {"http": env.proxy(creds), "https": env.proxy(creds)}  # noqa: E731
    how = "`proxies={'http': 'http://u:p@…', 'https': …}`"
    m.check(lib, how, "GET http://", "200", lambda: py_ok(env, lib, "/echo/%s" % lib, False, both(SIMPLE)))
    m.check(lib, how, "GET https:// via CONNECT", "200",
            lambda: py_ok(env, lib, "/echo/%s-tls" % lib, True, both(SIMPLE)))
    m.check(lib, how, "origin 401 (http://)", "401",
            lambda: py_status(env, lib, "/private", False, 401, both(SIMPLE)))
    m.check(lib, how, "origin 401 (via CONNECT)", "401",
            lambda: py_status(env, lib, "/private", True, 401, both(SIMPLE)))
    how = "`proxies=` without credentials"
    m.check(lib, how, "GET http://", "407 response",
            lambda: py_status(env, lib, "/echo/x", False, 407, both(None)))
    exc = "requests.exceptions.ProxyError" if lib == "requests" else "urllib.error.URLError"
    m.check(lib, how, "GET https:// via CONNECT", "proxy error (%s)" % exc.rsplit(".", 1)[-1],
            lambda: py_raises(env, lib, "/echo/x", True, exc, both(None)))

    up = "HTTP_PROXY/HTTPS_PROXY" if lib == "requests" else "http_proxy/https_proxy"
    envs = lambda creds: ({up.split("/")[0]: env.proxy(creds), up.split("/")[1]: env.proxy(creds)})  # noqa: E731
    how = "env `%s=http://u:p@…`" % up
    m.check(lib, how, "GET http://", "200",
            lambda: py_ok(env, lib, "/echo/%s-env" % lib, False, extra_env=envs(SIMPLE)))
    m.check(lib, how, "GET https:// via CONNECT", "200",
            lambda: py_ok(env, lib, "/echo/%s-env-tls" % lib, True, extra_env=envs(SIMPLE)))
    m.check(lib, "env `http_proxy` + `NO_PROXY=127.0.0.1`", "GET http://", "bypasses the proxy",
            lambda: py_direct(env, lib, "/echo/%s-noproxy" % lib,
                              {"http_proxy": env.proxy(SIMPLE), "NO_PROXY": "127.0.0.1"}))

    how = "special, `proxies=` (percent-encoded)"
    m.check(lib, how, "GET http://", "200",
            lambda: py_ok(env, lib, "/echo/%s-sp" % lib, False, both(SPECIAL)), expect_creds=SPECIAL)
    m.check(lib, how, "GET https:// via CONNECT", "200",
            lambda: py_ok(env, lib, "/echo/%s-sp-tls" % lib, True, both(SPECIAL)), expect_creds=SPECIAL)
    m.check(lib, "special, env `%s` (percent-encoded)" % up, "GET https:// via CONNECT", "200",
            lambda: py_ok(env, lib, "/echo/%s-sp-env" % lib, True, extra_env=envs(SPECIAL)),
            expect_creds=SPECIAL)
    if lib == "urllib":
        m.check(lib, "special, `ProxyBasicAuthHandler` (password manager)", "GET http://", "200",
                lambda: py_ok(env, lib, "/echo/urllib-handler", False, {"http": env.proxy()},
                              proxy_auth_handler=list(SPECIAL), proxy_uri=env.proxy()),
                expect_creds=SPECIAL)
    if lib == "requests":
        m.check(lib, "`proxies={'https': 'https://u:p@localhost:port'}`, `verify=ca.pem`",
                "TLS proxy, GET https:// via CONNECT", "200",
                lambda: py_ok(env, lib, "/echo/requests-tlsproxy", True,
                              {"https": env.proxy(SIMPLE, tls=True, host="localhost")}), tap=False)


# --------------------------------------------------------------------------
# pip


def pip(env, proxy_args, tls, extra_env=None):
    d = env.fresh_dir("pip")
    index = env.url("/simple/", tls)
    cmd = [PY, "-m", "pip", "download", "--no-deps", "--no-cache-dir", "--disable-pip-version-check",
           "--retries", "0", "--timeout", "30", "--index-url", index, "--dest", str(d),
           *proxy_args, "compatpkg"]
    if tls:
        cmd[5:5] = ["--cert", env.ca]
    out = run(cmd, env.base_env(**(extra_env or {})))
    return out, d


def pip_ok(env, proxy_args, tls, extra_env=None):
    out, d = pip(env, proxy_args, tls, extra_env)
    got = d / WHEEL
    ensure(out.returncode == 0 and got.exists(),
           "pip exit %s\n%s\n%s" % (out.returncode, text(out.stdout)[-1500:], text(out.stderr)[-1500:]))
    want = (env.tmp / "www" / "wheels" / WHEEL).read_bytes()
    ensure(got.read_bytes() == want, "downloaded wheel differs")
    return "wheel saved"


def pip_407(env, tls):
    # pip logs a failed index page fetch at debug level only: without -v the
    # user sees "No matching distribution found" and no 407.
    out, _ = pip(env, ["--proxy", env.proxy()], tls)
    quiet = text(out.stdout) + text(out.stderr)
    ensure(out.returncode != 0, "pip exit 0 without credentials\n%s" % quiet[-2000:])
    out_v, _ = pip(env, ["-vv", "--proxy", env.proxy()], tls)
    loud = text(out_v.stdout) + text(out_v.stderr)
    ensure(out_v.returncode != 0 and "407" in loud, "pip -v exit %s\n%s" % (out_v.returncode, loud[-2000:]))
    return "exit %d; 407 %s" % (out.returncode, "shown" if "407" in quiet else "shown only with -vv")


def test_pip(m, env):
    how = "`--proxy http://u:p@…`"
    m.check("pip", how, "download from http:// simple index", "wheel saved",
            lambda: pip_ok(env, ["--proxy", env.proxy(SIMPLE)], False))
    m.check("pip", how, "download from https:// index via CONNECT (`--cert`)", "wheel saved",
            lambda: pip_ok(env, ["--proxy", env.proxy(SIMPLE)], True))
    m.check("pip", "env `HTTP_PROXY=http://u:p@…`", "download from http:// simple index", "wheel saved",
            lambda: pip_ok(env, [], False, {"HTTP_PROXY": env.proxy(SIMPLE)}))
    m.check("pip", "env `https_proxy=http://u:p@…`", "download from https:// index via CONNECT", "wheel saved",
            lambda: pip_ok(env, [], True, {"https_proxy": env.proxy(SIMPLE)}))
    how = "special, `--proxy` (percent-encoded)"
    m.check("pip", how, "download from http:// simple index", "wheel saved",
            lambda: pip_ok(env, ["--proxy", env.proxy(SPECIAL)], False), expect_creds=SPECIAL)
    m.check("pip", how, "download from https:// index via CONNECT", "wheel saved",
            lambda: pip_ok(env, ["--proxy", env.proxy(SPECIAL)], True), expect_creds=SPECIAL)
    m.check("pip", "special, env `HTTP_PROXY` (percent-encoded)", "download from http:// simple index",
            "wheel saved", lambda: pip_ok(env, [], False, {"HTTP_PROXY": env.proxy(SPECIAL)}),
            expect_creds=SPECIAL)
    m.check("pip", "`--proxy http://host:port` (no credentials)", "download from http:// simple index",
            "fails; 407 only with -vv", lambda: pip_407(env, False))
    m.check("pip", "`--proxy http://host:port` (no credentials)", "download from https:// index via CONNECT",
            "fails; 407 only with -vv", lambda: pip_407(env, True))


# --------------------------------------------------------------------------
# git


def git_clone(env, cfg, url, extra_env=None):
    d = env.fresh_dir("git")
    cmd = ["git", "-c", "credential.helper=", "-c", "http.sslCAInfo=%s" % env.ca, *cfg,
           "clone", "-q", url, str(d / "repo")]
    out = run(cmd, env.base_env(**(extra_env or {})))
    return out, d / "repo"


def git_ok(env, cfg, url, extra_env=None):
    out, repo = git_clone(env, cfg, url, extra_env)
    ensure(out.returncode == 0, "git exit %s\n%s" % (out.returncode, text(out.stderr)[-2000:]))
    ensure((repo / "README.md").read_text() == README, "cloned README differs")
    return "cloned"


def git_fails(env, cfg, url):
    out, _ = git_clone(env, cfg, url)
    err = text(out.stderr)
    ensure(out.returncode != 0 and "407" in err, "git exit %s\n%s" % (out.returncode, err[-2000:]))
    line = next((line.strip() for line in err.splitlines() if "407" in line), "")
    return "exit %d: %s" % (out.returncode, short(line, 50))


def test_git(m, env):
    smart, dumb, tls = env.url("/git/repo.git"), env.url("/dumb/repo.git"), env.url("/git/repo.git", True)
    cfg = ["-c", "http.proxy=%s" % env.proxy(SIMPLE)]
    how = "`-c http.proxy=http://u:p@…`"
    m.check("git", how, "clone http:// (smart, git http-backend)", "cloned", lambda: git_ok(env, cfg, smart))
    m.check("git", how, "clone http:// (dumb)", "cloned", lambda: git_ok(env, cfg, dumb))
    m.check("git", how, "clone https:// via CONNECT (smart)", "cloned", lambda: git_ok(env, cfg, tls))
    m.check("git", how + " + `http.proxyAuthMethod=basic`", "clone http:// (smart)", "cloned",
            lambda: git_ok(env, cfg + ["-c", "http.proxyAuthMethod=basic"], smart))
    m.check("git", "env `http_proxy=http://u:p@…`", "clone http:// (smart)", "cloned",
            lambda: git_ok(env, [], smart, {"http_proxy": env.proxy(SIMPLE)}))
    m.check("git", "env `https_proxy=http://u:p@…`", "clone https:// via CONNECT", "cloned",
            lambda: git_ok(env, [], tls, {"https_proxy": env.proxy(SIMPLE)}))
    sp = ["-c", "http.proxy=%s" % env.proxy(SPECIAL)]
    how = "special, `http.proxy` (percent-encoded)"
    m.check("git", how, "clone http:// (smart)", "cloned", lambda: git_ok(env, sp, smart), expect_creds=SPECIAL)
    m.check("git", how, "clone https:// via CONNECT", "cloned", lambda: git_ok(env, sp, tls), expect_creds=SPECIAL)
    m.check("git", "special, env `http_proxy` (percent-encoded)", "clone http:// (smart)", "cloned",
            lambda: git_ok(env, [], smart, {"http_proxy": env.proxy(SPECIAL)}), expect_creds=SPECIAL)
    m.check("git", "`http.proxy=http://host:port` (no credentials)", "clone http:// (smart)", "fails, reports 407",
            lambda: git_fails(env, ["-c", "http.proxy=%s" % env.proxy()], smart))


# --------------------------------------------------------------------------
# npm


def npm(env, args, tls, extra_env=None):
    d = env.fresh_dir("npm")
    (d / "npmrc").write_text("")
    registry = env.url("/npm/", tls)
    cmd = ["npm", "install", NPM_PKG, "--registry", registry, "--no-audit", "--no-fund",
           "--cache", str(d / "cache"), "--prefix", str(d / "proj"), "--userconfig", str(d / "npmrc"),
           "--fetch-retries", "0", "--fetch-timeout", "30000", "--loglevel", "warn", *args]
    if tls:
        cmd += ["--cafile", env.ca]
    (d / "proj").mkdir()
    out = run(cmd, env.base_env(**(extra_env or {})), cwd=d / "proj")
    return out, d / "proj"


def npm_ok(env, args, tls, extra_env=None):
    out, proj = npm(env, args, tls, extra_env)
    pj = proj / "node_modules" / NPM_PKG / "package.json"
    ensure(out.returncode == 0 and pj.exists(),
           "npm exit %s\n%s\n%s" % (out.returncode, text(out.stdout)[-1500:], text(out.stderr)[-2500:]))
    ensure(json.loads(pj.read_text())["version"] == NPM_VERSION, "wrong version installed")
    return "installed %s@%s" % (NPM_PKG, NPM_VERSION)


def npm_407(env, args, tls):
    out, proj = npm(env, args, tls)
    err = text(out.stdout) + text(out.stderr)
    ensure(out.returncode != 0 and "407" in err, "npm exit %s\n%s" % (out.returncode, err[-2000:]))
    line = next((line.strip() for line in err.splitlines() if "407" in line), "")
    return "exit %d: %s" % (out.returncode, short(line, 50))


def test_npm(m, env):
    px = lambda creds: ["--proxy", env.proxy(creds), "--https-proxy", env.proxy(creds)]  # noqa: E731
    how = "`--proxy http://u:p@… --https-proxy http://u:p@…`"
    m.check("npm", how, "install tarball from http:// registry", "installed", lambda: npm_ok(env, px(SIMPLE), False))
    m.check("npm", how, "install tarball from https:// registry via CONNECT (`--cafile`)", "installed",
            lambda: npm_ok(env, px(SIMPLE), True))
    how = "special, `--proxy`/`--https-proxy` (percent-encoded)"
    m.check("npm", how, "install tarball from http:// registry", "installed",
            lambda: npm_ok(env, px(SPECIAL), False), expect_creds=SPECIAL)
    m.check("npm", how, "install tarball from https:// registry via CONNECT", "installed",
            lambda: npm_ok(env, px(SPECIAL), True), expect_creds=SPECIAL)
    m.check("npm", "env `HTTP_PROXY`/`HTTPS_PROXY=http://u:p@…`", "install tarball from http:// registry",
            "installed", lambda: npm_ok(env, [], False, {"HTTP_PROXY": env.proxy(SIMPLE),
                                                         "HTTPS_PROXY": env.proxy(SIMPLE)}))
    m.check("npm", "`--proxy http://host:port` (no credentials)", "install tarball from http:// registry",
            "fails, reports 407", lambda: npm_407(env, px(None), False))


# --------------------------------------------------------------------------
# Java 17


def java(env, creds, url, props=()):
    user, pw = creds if creds else ("-", "-")
    pw_hex = pw.encode("utf-8").hex() if creds else "-"
    cmd = ["java", *props, str(HERE / "Compat.java"), "127.0.0.1", str(env.tap.port), user, pw_hex, url, env.ca]
    out = run(cmd, env.base_env())
    o = text(out.stdout)
    ensure(out.returncode == 0 and (o.startswith("STATUS") or o.startswith("EXCEPTION")),
           "java exit %s\n%s\n%s" % (out.returncode, o, text(out.stderr)[-2000:]))
    return o


TUNNEL = "-Djdk.http.auth.tunneling.disabledSchemes="


def java_ok(env, creds, path, tls, props=()):
    o = java(env, creds, env.url(path, tls), props)
    ensure(o.startswith("STATUS 200"), o[:2000])
    assert_forwarded(echo_of(o), path, tls)
    return "200"


def java_status(env, creds, path, tls, status, props=()):
    o = java(env, creds, env.url(path, tls), props)
    ensure(o.startswith("STATUS %d" % status), o[:2000])
    return "status %d" % status


def java_tunnel_default(env):
    # JDK 17's net.properties has jdk.http.auth.tunneling.disabledSchemes=Basic:
    # the Authenticator is never asked and the caller gets the CONNECT's 407.
    mark = env.tap.mark()
    o = java(env, SIMPLE, env.url("/echo/java-default", True))
    first = o.strip().splitlines()[0]
    ensure(first == "STATUS 407" or (first.startswith("EXCEPTION") and "407" in first),
           "wanted a 407 (status or IOException), got:\n%s" % o[:2000])
    reqs = [r for c in env.tap.since(mark) for r in REQ_RE.findall(bytes(c.up))]
    ensure(reqs and all(r[0] == b"CONNECT" and not AUTH_RE.search(b"\r\n" + r[2]) for r in reqs),
           "expected only CONNECTs without Proxy-Authorization, saw %r" % reqs)
    return "HttpResponse 407 (body null); Basic never sent" if first == "STATUS 407" else first


def java_origin_401(env, tls, props=()):
    # With an Authenticator installed, HttpClient answers every Basic challenge
    # itself: when it returns null for the origin (requestor SERVER), send()
    # throws instead of returning the 401. The proxy's part is to forward the
    # 401 untouched, which its access log shows.
    mark = env.log_mark()
    o = java(env, SIMPLE, env.url("/private", tls), props)
    first = o.strip().splitlines()[0]
    ensure(first in ("STATUS 401", "EXCEPTION java.io.IOException: No credentials provided"), o[:2000])
    if tls:
        return first.replace("EXCEPTION ", "") + " (401 inside the tunnel)"
    # authgate writes its log in batches, at most about 100 ms late.
    deadline = time.time() + 3
    while True:
        log = env.log_since(mark)
        forwarded = any("status=401" in line and "user=alice" in line for line in log)
        if forwarded or time.time() > deadline:
            break
        time.sleep(0.05)
    ensure(forwarded, "authgate did not forward a 401:\n%s" % "\n".join(log))
    return first.replace("EXCEPTION ", "") + " after the forwarded 401"


def test_java(m, env):
    how = "`ProxySelector.of(…)` + `Authenticator`"
    m.check("java", how, "GET http://", "200", lambda: java_ok(env, SIMPLE, "/echo/java", False))
    m.check("java", how + ", `%s`" % TUNNEL, "GET https:// via CONNECT", "200",
            lambda: java_ok(env, SIMPLE, "/echo/java-tls", True, [TUNNEL]))
    m.check("java", how + " (default: Basic disabled for tunnels)", "GET https:// via CONNECT",
            "fails with 407", lambda: java_tunnel_default(env))
    m.check("java", how, "origin 401 (http://)", "401 reaches the client",
            lambda: java_origin_401(env, False))
    m.check("java", how + ", `%s`" % TUNNEL, "origin 401 (via CONNECT)", "401 reaches the client",
            lambda: java_origin_401(env, True, [TUNNEL]))
    m.check("java", "`ProxySelector` without `Authenticator`", "GET http://", "407",
            lambda: java_status(env, None, "/echo/x", False, 407))
    m.check("java", "`ProxySelector` without `Authenticator`", "GET https:// via CONNECT", "fails with 407",
            lambda: java_status(env, None, "/echo/x", True, 407))
    how = "special, `Authenticator` (`PasswordAuthentication`)"
    m.check("java", how, "GET http://", "200", lambda: java_ok(env, SPECIAL, "/echo/java-sp", False),
            expect_creds=SPECIAL)
    m.check("java", how + ", `%s`" % TUNNEL, "GET https:// via CONNECT", "200",
            lambda: java_ok(env, SPECIAL, "/echo/java-sp-tls", True, [TUNNEL]), expect_creds=SPECIAL)


# --------------------------------------------------------------------------
# wget


def wget(env, args, url, extra_env=None):
    d = env.fresh_dir("wget")
    cmd = ["wget", "--no-config", "-S", "--tries=1", "--timeout=30", "--ca-certificate=%s" % env.ca,
           "-O", str(d / "body"), *args, url]
    out = run(cmd, env.base_env(**(extra_env or {})))
    body = (d / "body").read_text(errors="replace") if (d / "body").exists() else ""
    return out, body


def wget_ok(env, args, path, tls=False, extra_env=None):
    out, body = wget(env, args, env.url(path, tls), extra_env)
    ensure(out.returncode == 0, "wget exit %s\n%s" % (out.returncode, text(out.stderr)[-2000:]))
    assert_forwarded(echo_of(body), path, tls)
    return "200"


def wget_fails(env, args, path, rc, status):
    out, _ = wget(env, args, env.url(path))
    err = text(out.stderr)
    ensure(out.returncode == rc and (" %d " % status) in err,
           "wanted exit %d and %d, got exit %s\n%s" % (rc, status, out.returncode, err[-2000:]))
    return "exit %d, %d" % (rc, status)


def test_wget(m, env):
    use = ["-e", "use_proxy=yes"]
    how = "`-e use_proxy=yes -e http_proxy=http://u:p@…`"
    m.check("wget", how, "GET http://", "200",
            lambda: wget_ok(env, use + ["-e", "http_proxy=%s" % env.proxy(SIMPLE)], "/echo/wget"))
    m.check("wget", how, "origin 401 (http://)", "exit 6, 401",
            lambda: wget_fails(env, use + ["-e", "http_proxy=%s" % env.proxy(SIMPLE)], "/private", 6, 401))
    pu = use + ["-e", "http_proxy=%s" % env.hostport(), "--proxy-user=%s" % SIMPLE[0],
                "--proxy-password=%s" % SIMPLE[1]]
    m.check("wget", "`-e use_proxy=yes -e http_proxy=host:port --proxy-user --proxy-password`", "GET http://",
            "200", lambda: wget_ok(env, pu, "/echo/wget-pu"))
    m.check("wget", "env `http_proxy=http://u:p@…`", "GET http://", "200",
            lambda: wget_ok(env, [], "/echo/wget-env", extra_env={"http_proxy": env.proxy(SIMPLE)}))
    m.check("wget", "`-e use_proxy=yes -e https_proxy=http://u:p@…`", "GET https:// via CONNECT", "200",
            lambda: wget_ok(env, use + ["-e", "https_proxy=%s" % env.proxy(SIMPLE)], "/echo/wget-tls", True))
    m.check("wget", "special, `-e http_proxy=` (percent-encoded)", "GET http://", "200",
            lambda: wget_ok(env, use + ["-e", "http_proxy=%s" % env.proxy(SPECIAL)], "/echo/wget-sp"),
            expect_creds=SPECIAL)
    sp_pu = use + ["-e", "http_proxy=%s" % env.hostport(), "--proxy-user=%s" % SPECIAL[0],
                   "--proxy-password=%s" % SPECIAL[1]]
    m.check("wget", "special, `--proxy-user=bob --proxy-password='p@ss:w%rd \u00fc'`", "GET http://", "200",
            lambda: wget_ok(env, sp_pu, "/echo/wget-sp-pu"), expect_creds=SPECIAL)
    m.check("wget", "`-e use_proxy=yes -e http_proxy=host:port` (no credentials)", "GET http://", "exit 8, 407",
            lambda: wget_fails(env, use + ["-e", "http_proxy=%s" % env.hostport()], "/echo/x", 8, 407))


# --------------------------------------------------------------------------
# preflight, versions, final checks


def first_line(cmd, env):
    try:
        out = subprocess.run(cmd, env=env, capture_output=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as e:
        return None, str(e)
    t = (text(out.stdout) + text(out.stderr)).strip()
    return (t.splitlines()[0] if t else ""), out.returncode


def preflight(env):
    """Every client and tool must be there: a missing one fails the run."""
    e = env.base_env()
    missing, versions = [], {}
    probes = [
        ("curl", ["curl", "--version"]), ("wget", ["wget", "--version"]), ("git", ["git", "--version"]),
        ("openssl", ["openssl", "version"]), ("java", ["java", "-version"]), ("node", ["node", "--version"]),
        ("npm", ["npm", "--version"]),
        ("python", [PY, "--version"]),
        ("requests", [PY, "-c", "import requests; print('requests', requests.__version__)"]),
        ("pip", [PY, "-m", "pip", "--version"]),
        ("git http-backend", ["git", "http-backend", "--help"]),
    ]
    for name, cmd in probes:
        if shutil.which(cmd[0]) is None and not os.path.isabs(cmd[0]):
            missing.append("%s (`%s` not on PATH)" % (name, cmd[0]))
            continue
        line, rc = first_line(cmd, e)
        if line is None or (rc != 0 and name != "git http-backend"):
            missing.append("%s (`%s` failed: %s)" % (name, " ".join(cmd), line))
            continue
        if name == "git http-backend":
            continue
        versions[name] = " ".join(line.split(" from ")[0].split()[:{"java": 4, "openssl": 2}.get(name, 3)])
    if "java" in versions:
        m = re.search(r'version "(\d+)', versions["java"])
        if not m or int(m.group(1)) < 17:
            missing.append("Java 17 or newer (found: %s)" % versions["java"])
    if "npm" in versions:
        versions["npm"] = "npm " + versions["npm"]
    if "node" in versions:
        versions["node"] = "node " + versions["node"]
    if not os.access(env.bin, os.X_OK):
        missing.append("authgate binary %s (run `cargo build` or set AUTHGATE_BIN)" % env.bin)
    else:
        versions["authgate"] = "%s (%s; repo at %s)" % (
            first_line([env.bin, "--version"], e)[0], env.bin.replace(str(REPO) + "/", ""), git_head())
    if missing:
        print("compat: missing clients/tools, cannot build the matrix:", file=sys.stderr)
        for x in missing:
            print("  - " + x, file=sys.stderr)
        print("install them with tests/compat/install.sh (Debian 12, as root)", file=sys.stderr)
        raise SystemExit(2)
    return versions


def git_head():
    out = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True)
    return text(out.stdout).strip() or "unknown commit"


def check_loopback_only(m, env):
    def scan():
        bad, seen = [], 0
        time.sleep(0.5)  # the log is written in batches, at most about 100 ms late
        for event_target, fl, _ in env.log_events():
            if event_target not in ("authgate::access", "authgate::audit"):
                continue
            t = str(fl.get("request_target", ""))
            seen += 1
            host = re.sub(r"^[a-z]+://", "", t).split("/")[0]
            host = host.rsplit(":", 1)[0] if not host.startswith("[") else host.split("]")[0] + "]"
            if host not in ("127.0.0.1", "localhost", "[::1]"):
                bad.append(t)
        ensure(seen > 0, "no access events in authgate's log: cannot tell")
        ensure(not bad, "authgate was asked for non-loopback targets: %s" % sorted(set(bad))[:10])
        ensure(env.authgate.poll() is None, "authgate exited with %s" % env.authgate.returncode)
        return "%d access/audit events, all loopback; authgate still running" % seen
    m.check("(all)", "-", "every request the proxy saw went to loopback", "yes", scan, tap=None)


# --------------------------------------------------------------------------


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--matrix", default=str(HERE / "MATRIX.md"), help="where to write the Markdown matrix")
    ap.add_argument("--only", default="", help="comma-separated clients to run (default: all)")
    args = ap.parse_args()

    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    bin_path = os.environ.get("AUTHGATE_BIN") or str(REPO / "target" / "debug" / "authgate")
    own_tmp = not os.environ.get("COMPAT_TMP")
    tmp = Path(os.environ.get("COMPAT_TMP") or tempfile.mkdtemp(prefix="authgate-compat-"))
    procs = Procs(tmp / "pids")
    t0 = time.time()
    try:
        env = Env(tmp, procs, os.path.abspath(bin_path))
        versions = preflight(env)
        setup(env)
        print("compat: authgate on 127.0.0.1:%d (tap %d) and TLS 127.0.0.1:%d; origins http %d, https %d; tmp %s"
              % (env.plain_port, env.tap.port, env.tls_proxy_port, env.http_port, env.https_port, tmp), flush=True)
        m = Matrix(env)
        suites = {
            "curl": lambda: test_curl(m, env),
            "requests": lambda: test_python(m, env, "requests"),
            "urllib": lambda: test_python(m, env, "urllib"),
            "pip": lambda: test_pip(m, env),
            "git": lambda: test_git(m, env),
            "npm": lambda: test_npm(m, env),
            "java": lambda: test_java(m, env),
            "wget": lambda: test_wget(m, env),
        }
        only = [s for s in args.only.split(",") if s]
        for name in only:
            if name not in suites:
                raise SystemExit("unknown client %r (known: %s)" % (name, ", ".join(suites)))
        for name, suite in suites.items():
            if not only or name in only:
                suite()
        check_loopback_only(m, env)
        md = m.markdown(versions, time.time() - t0)
        Path(args.matrix).write_text(md)
        print()
        print(md)
        failed = m.failed()
        print("compat: %d checks, %d failed, %.0f s; matrix written to %s"
              % (len(m.rows), len(failed), time.time() - t0, args.matrix))
        return 1 if failed else 0
    finally:
        procs.stop_all()
        if own_tmp and not os.environ.get("COMPAT_KEEP_TMP"):
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
