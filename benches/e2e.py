#!/usr/bin/env python3
"""End-to-end benchmark of a release authgate on loopback, with public tools only.

Needs: a release authgate (cargo build --release; target/release/authgate, or
the path in $AUTHGATE_BIN, e.g. under a CARGO_TARGET_DIR), wrk, nginx (Debian
`nginx-light` is enough) and python3 >= 3.8. Run as root or as a user that may
raise RLIMIT_NOFILE to ~12000 (for the idle-tunnel part). Every socket is on
127.0.0.0/8; every process it starts is stopped by PID at the end.

    python3 benches/e2e.py                 # everything (~2 min)
    python3 benches/e2e.py --only scaling  # scaling | tunnels | keepalive | bruteforce

What it measures (medians are not taken: one run, quote ratios from it):
  scaling     keep-alive absolute-form GET of a 1 KiB body through authgate with
              wrk at c = 1, 10, 100, 1000: req/s, p99, errors (must be 0)
  tunnels     RSS of the authgate process at start, after one authenticated
              tunnel, with 1000 and 5000 idle authenticated CONNECT tunnels, and
              3 s and 15 s after they are closed, twice (a leak would grow)
  keepalive   RSS with 5000 idle keep-alive client connections (one absolute-form
              GET each, then nothing): KiB per connection over the baseline,
              a second GET on each, and RSS 3 s after they are closed
  bruteforce  a legitimate client's req/s alone (before and after), then while another address
              (127.0.0.2) floods wrong passwords (a different one each time),
              once with the default throttle and once without it (the worst
              case: an attacker with many addresses); rejections/s absorbed,
              RSS before/after
"""

import argparse
import asyncio
import base64
import json
import os
import re
import resource
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.environ.get("AUTHGATE_BIN", os.path.join(ROOT, "target/release/authgate"))
USER, PASSWORD = "bench", "bench-Pa55word"

WRK_LUA = r"""
wrk.method = "GET"
wrk.path = os.getenv("E2E_URL")
wrk.headers["Host"] = os.getenv("E2E_HOST")
wrk.headers["Proxy-Authorization"] = os.getenv("E2E_AUTH")
"""


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def wait_port(port, timeout=15):
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.05)
    raise SystemExit(f"nothing listens on 127.0.0.1:{port}")


class Env:
    def __init__(self):
        for tool in ("wrk", "nginx"):
            if not shutil.which(tool) and not os.path.exists(f"/usr/sbin/{tool}"):
                raise SystemExit(f"{tool} is not installed (Debian: apt-get install wrk nginx-light)")
        if not os.path.exists(BIN):
            raise SystemExit(f"{BIN} missing: run `cargo build --release` first, or set AUTHGATE_BIN to the binary")
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        want = min(hard, 20000)
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
        self.dir = tempfile.mkdtemp(prefix="authgate-e2e-")
        os.chmod(self.dir, 0o755)
        self.procs = []
        self.origin_port = free_port()
        self.proxy_port = free_port()

    def start_origin(self):
        d = self.dir
        os.makedirs(f"{d}/www", exist_ok=True)
        with open(f"{d}/www/small", "wb") as f:
            f.write(b"x" * 1024)
        os.chmod(f"{d}/www", 0o755)
        os.chmod(f"{d}/www/small", 0o644)
        conf = f"""
worker_processes 2;
worker_rlimit_nofile 20000;
pid {d}/nginx.pid;
error_log {d}/nginx-error.log warn;
daemon off;
events {{ worker_connections 16384; }}
http {{
    access_log off;
    sendfile on;
    tcp_nodelay on;
    keepalive_requests 10000000;
    keepalive_timeout 300s;
    client_header_timeout 600s;
    client_body_temp_path {d}/tmp;
    proxy_temp_path {d}/tmp;
    fastcgi_temp_path {d}/tmp;
    uwsgi_temp_path {d}/tmp;
    scgi_temp_path {d}/tmp;
    server {{
        listen 127.0.0.1:{self.origin_port};
        root {d}/www;
    }}
}}
"""
        with open(f"{d}/nginx.conf", "w") as f:
            f.write(conf)
        nginx = shutil.which("nginx") or "/usr/sbin/nginx"
        self.procs.append(subprocess.Popen([nginx, "-c", f"{d}/nginx.conf"], stdout=subprocess.DEVNULL,
                                           stderr=subprocess.DEVNULL))
        wait_port(self.origin_port)

    def start_proxy(self, extra=""):
        d = self.dir
        phc = subprocess.run([BIN, "hash-password"], input=(PASSWORD + "\n").encode(), capture_output=True,
                             check=True).stdout.decode().strip()
        with open(f"{d}/users.toml", "w") as f:
            f.write(f'[users.{USER}]\npassword = "{phc}"\ngroups = ["staff"]\n')
        with open(f"{d}/authgate.toml", "w") as f:
            f.write(f'[server]\nlisten = ["127.0.0.1:{self.proxy_port}"]\n\n[auth]\nusers_file = "users.toml"\n'
                    f'\n[egress]\nallow_cidrs = ["127.0.0.0/8"]\n\n[limits]\nmax_connections_per_ip = 20000\n'
                    f'max_connections = 20000\n{extra}\n')
        self.log = open(f"{d}/authgate.log", "w")
        p = subprocess.Popen([BIN, "run", "--config", f"{d}/authgate.toml"], stdout=self.log,
                             stderr=subprocess.STDOUT)
        self.procs.append(p)
        self.proxy = p
        wait_port(self.proxy_port)
        return p

    def stop_proxy(self):
        self.proxy.send_signal(signal.SIGTERM)
        self.proxy.wait(timeout=60)
        self.procs.remove(self.proxy)

    def close(self):
        for p in self.procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
                try:
                    p.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    p.kill()
        shutil.rmtree(self.dir, ignore_errors=True)


def wrk(env, conns, seconds, threads=2):
    lua = os.path.join(env.dir, "e2e.lua")
    with open(lua, "w") as f:
        f.write(WRK_LUA)
    e = dict(os.environ, E2E_URL=f"http://127.0.0.1:{env.origin_port}/small",
             E2E_HOST=f"127.0.0.1:{env.origin_port}",
             E2E_AUTH="Basic " + base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode())
    threads = min(threads, conns)
    out = subprocess.run(["wrk", f"-t{threads}", f"-c{conns}", f"-d{seconds}s", "--timeout", "10s",
                          "--latency", "-s", lua, f"http://127.0.0.1:{env.proxy_port}"],
                         env=e, capture_output=True, text=True).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    p99 = re.search(r"99%\s+([\d.]+)(us|ms|s)", out)
    p99_ms = float(p99.group(1)) * {"us": 0.001, "ms": 1, "s": 1000}[p99.group(2)] if p99 else float("nan")
    errors = sum(int(x) for x in re.findall(r"(?:connect|read|write|timeout) (\d+)", out))
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    return {"conns": conns, "rps": rps, "p99_ms": p99_ms, "socket_errors": errors,
            "non_2xx": int(non2xx.group(1)) if non2xx else 0}


def scaling(env):
    env.start_proxy()
    rows = []
    for c in (1, 10, 100, 1000):
        wrk(env, c, 2)  # warm-up
        rows.append(wrk(env, c, 5))
    env.stop_proxy()
    print("\n## scaling: keep-alive GET 1 KiB through authgate")
    print("| connections | req/s | p99 ms | socket errors | non-2xx |\n|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['conns']} | {r['rps']:,.0f} | {r['p99_ms']:.2f} | {r['socket_errors']} | {r['non_2xx']} |")
    return rows


async def open_tunnels(port, origin_port, n, auth):
    conns = []
    sem = asyncio.Semaphore(200)

    async def one():
        async with sem:
            r, w = await asyncio.open_connection("127.0.0.1", port)
            w.write(f"CONNECT 127.0.0.1:{origin_port} HTTP/1.1\r\nHost: 127.0.0.1:{origin_port}\r\n"
                    f"Proxy-Authorization: {auth}\r\n\r\n".encode())
            head = await r.readuntil(b"\r\n\r\n")
            if not head.startswith(b"HTTP/1.1 200"):
                raise SystemExit(f"CONNECT failed: {head[:60]!r}")
            conns.append((r, w))

    await asyncio.gather(*(one() for _ in range(n)))
    return conns


async def check_alive(conns, origin_port):
    async def get(r, w):
        w.write(f"GET /small HTTP/1.1\r\nHost: 127.0.0.1:{origin_port}\r\n\r\n".encode())
        head = await r.readuntil(b"\r\n\r\n")
        await r.readexactly(1024)
        return head.startswith(b"HTTP/1.1 200")

    oks = await asyncio.gather(*(get(r, w) for r, w in conns))
    return sum(oks)


def tunnels(env):
    p = env.start_proxy()
    auth = "Basic " + base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
    time.sleep(0.5)
    base = rss_kib(p.pid)
    rows = []
    marks = {}

    async def run():
        # One tunnel first: the password verification's working memory
        # (argon2 m_cost, kept for reuse) is then part of the baseline.
        first = await open_tunnels(env.proxy_port, env.origin_port, 1, auth)
        for _, w in first:
            w.close()
        await asyncio.sleep(1)
        marks["authed"] = rss_kib(p.pid)
        for cycle in (1, 2):
            held = []
            for n in (1000, 5000):
                held += await open_tunnels(env.proxy_port, env.origin_port, n - len(held), auth)
                await asyncio.sleep(1)
                alive = await check_alive(held, env.origin_port)
                rss = rss_kib(p.pid)
                if cycle == 1:
                    rows.append((n, rss, (rss - marks["authed"]) / n, alive))
            for _, w in held:
                w.close()
            await asyncio.sleep(3)
            marks[f"closed{cycle}_3s"] = rss_kib(p.pid)
            await asyncio.sleep(12)
            marks[f"closed{cycle}_15s"] = rss_kib(p.pid)

    asyncio.run(run())
    env.stop_proxy()
    mib = {k: v / 1024 for k, v in marks.items()}
    print("\n## idle authenticated CONNECT tunnels")
    print(f"RSS at start: {base / 1024:.1f} MiB; after one authenticated tunnel: {mib['authed']:.1f} MiB")
    print("| tunnels | RSS MiB | KiB per tunnel (over the authenticated baseline) | alive (GET through each) |")
    print("|---|---|---|---|")
    for n, rss, per, alive in rows:
        print(f"| {n} | {rss / 1024:.1f} | {per:.1f} | {alive}/{n} |")
    for c in (1, 2):
        print(f"cycle {c} (open 5000, close all): RSS {mib[f'closed{c}_3s']:.1f} MiB 3 s after closing, "
              f"{mib[f'closed{c}_15s']:.1f} MiB 15 s after")
    return {"before_kib": base, "rows": rows, **marks}


async def keepalive_conns(port, origin_port, n, auth):
    """n client connections, each after one forwarded GET (kept open, idle)."""
    conns = []
    sem = asyncio.Semaphore(200)
    req = (f"GET http://127.0.0.1:{origin_port}/small HTTP/1.1\r\nHost: 127.0.0.1:{origin_port}\r\n"
           f"Proxy-Authorization: {auth}\r\n\r\n").encode()

    async def one():
        async with sem:
            r, w = await asyncio.open_connection("127.0.0.1", port)
            if not await get_via(r, w, req):
                raise SystemExit("GET through the proxy failed")
            conns.append((r, w))

    await asyncio.gather(*(one() for _ in range(n)))
    return conns, req


async def get_via(r, w, req):
    w.write(req)
    head = await r.readuntil(b"\r\n\r\n")
    await r.readexactly(1024)
    return head.startswith(b"HTTP/1.1 200")


def keepalive(env, n=5000):
    p = env.start_proxy()
    auth = "Basic " + base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
    marks = {}

    async def run():
        # One request first: argon2's working memory and the upstream pool's
        # first connection are then part of the baseline.
        first, _ = await keepalive_conns(env.proxy_port, env.origin_port, 1, auth)
        for _, w in first:
            w.close()
        await asyncio.sleep(3)
        marks["base"] = rss_kib(p.pid)
        held, req = await keepalive_conns(env.proxy_port, env.origin_port, n, auth)
        await asyncio.sleep(3)
        marks["held"] = rss_kib(p.pid)
        oks = await asyncio.gather(*(get_via(r, w, req) for r, w in held))
        marks["alive"] = sum(oks)
        for _, w in held:
            w.close()
        await asyncio.sleep(3)
        marks["closed"] = rss_kib(p.pid)

    asyncio.run(run())
    env.stop_proxy()
    per = (marks["held"] - marks["base"]) / n
    print("\n## idle keep-alive client connections (one GET each)")
    print(f"RSS {marks['base'] / 1024:.1f} MiB -> {marks['held'] / 1024:.1f} MiB with {n} connections: "
          f"{per:.1f} KiB per connection; a second GET on each: {marks['alive']}/{n} OK; "
          f"3 s after closing: {marks['closed'] / 1024:.1f} MiB")
    return {**marks, "per_conn_kib": per}


async def flood(port, origin_port, seconds, conns=50):
    """Wrong passwords, a different one per request, from 127.0.0.2."""
    counts = {}
    stop = time.time() + seconds

    async def worker(i):
        n = 0
        while time.time() < stop:
            try:
                r, w = await asyncio.open_connection("127.0.0.1", port, local_addr=("127.0.0.2", 0))
            except OSError:
                await asyncio.sleep(0.01)
                continue
            try:
                while time.time() < stop:
                    n += 1
                    cred = base64.b64encode(f"{USER}:wrong-{i}-{n}".encode()).decode()
                    w.write(f"GET http://127.0.0.1:{origin_port}/small HTTP/1.1\r\nHost: x\r\n"
                            f"Proxy-Authorization: Basic {cred}\r\n\r\n".encode())
                    head = await asyncio.wait_for(r.readuntil(b"\r\n\r\n"), 10)
                    status = int(head.split(b" ", 2)[1])
                    counts[status] = counts.get(status, 0) + 1
                    m = re.search(rb"(?i)content-length: (\d+)", head)
                    if m:
                        await r.readexactly(int(m.group(1)))
                    if b"connection: close" in head.lower():
                        break
            except (OSError, asyncio.TimeoutError, asyncio.IncompleteReadError):
                pass
            finally:
                w.close()

    await asyncio.gather(*(worker(i) for i in range(conns)))
    return counts


def bruteforce(env, throttle, seconds=8):
    p = env.start_proxy("" if throttle else "[auth.throttle]\nenabled = false\n")
    wrk(env, 10, 2)
    alone = wrk(env, 10, seconds)
    rss_before = rss_kib(p.pid)
    result = {}

    def attacker():
        result["counts"] = asyncio.run(flood(env.proxy_port, env.origin_port, seconds + 1))

    import threading
    t = threading.Thread(target=attacker)
    t.start()
    time.sleep(0.5)
    under = wrk(env, 10, seconds)
    t.join()
    rss_after = rss_kib(p.pid)
    # Alone again once the flood is over: the box is noisy, so "unflooded" is
    # the mean of the runs before and after.
    time.sleep(1)
    after = wrk(env, 10, seconds)
    env.stop_proxy()
    counts = result["counts"]
    rejected = sum(v for k, v in counts.items() if 400 <= k < 500)
    mode = "throttle on (default)" if throttle else "throttle off (worst case: attacker with many addresses)"
    print(f"\n## brute force, {mode}: legitimate client (c=10) vs a wrong-password flood from 127.0.0.2")
    unflooded = (alone["rps"] + after["rps"]) / 2
    print(f"legit req/s alone: {alone['rps']:,.0f} before, {after['rps']:,.0f} after; during the flood: "
          f"{under['rps']:,.0f} ({under['rps'] / unflooded:.0%} of the mean alone); "
          f"errors {under['socket_errors']}, non-2xx {under['non_2xx']}")
    print(f"flood answers: {json.dumps(counts)}; rejections/s absorbed: {rejected / (seconds + 1):,.0f}")
    print(f"proxy RSS before/after the flood: {rss_before / 1024:.1f} / {rss_after / 1024:.1f} MiB")
    return {"alone": alone, "after": after, "under": under, "counts": counts, "rss": (rss_before, rss_after)}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", choices=["scaling", "tunnels", "keepalive", "bruteforce"])
    args = ap.parse_args()
    env = Env()
    try:
        env.start_origin()
        print(f"# authgate e2e benchmark, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, "
              f"{os.cpu_count()} cores, {BIN}")
        if args.only in (None, "scaling"):
            scaling(env)
        if args.only in (None, "tunnels"):
            tunnels(env)
        if args.only in (None, "keepalive"):
            keepalive(env)
        if args.only in (None, "bruteforce"):
            bruteforce(env, throttle=True)
            bruteforce(env, throttle=False)
    finally:
        env.close()


if __name__ == "__main__":
    sys.exit(main())
