#!/usr/bin/env python3
"""Loopback origin servers for the client compatibility matrix.

One process serves the same routes on a plain-HTTP port and on an HTTPS port
(the HTTPS one is what CONNECT tunnels reach):

  /echo...             200, JSON of what arrived (method, path, headers, tls)
  /private             401 with WWW-Authenticate: Basic realm="origin"
  /simple/...          a PEP 503 "simple" index of the wheels in ROOT/wheels
  /files/NAME          a wheel from ROOT/wheels
  /npm/NAME            npm registry metadata (tarball URLs follow the Host
                       and the scheme of the request), /npm/NAME/-/FILE.tgz
  /git/REPO.git/...    smart HTTP through `git http-backend` (ROOT/git)
  /dumb/REPO.git/...   dumb HTTP: the files of ROOT/dumb, served statically

Usage: origin.py ROOT CERT KEY PORTS_FILE. Binds 127.0.0.1:0 twice and writes
{"http": PORT, "https": PORT} to PORTS_FILE once both accept connections.
"""

import base64
import hashlib
import html
import json
import os
import ssl
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlsplit

ROOT = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(".")


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "compat-origin"

    def log_message(self, fmt, *args):  # one line per request, to stderr
        sys.stderr.write("origin %s %s\n" % (self.server.scheme, fmt % args))

    # -- plumbing ---------------------------------------------------------

    def body(self):
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            out = b""
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip(), 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    return out
                out += self.rfile.read(size)
                self.rfile.readline()
        n = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(n) if n else b""

    def send(self, status, body, ctype="text/plain; charset=utf-8", extra=()):
        if isinstance(body, str):
            body = body.encode()
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        for k, v in extra:
            self.send_header(k, v)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def base_url(self):
        host = self.headers.get("Host") or "127.0.0.1:%d" % self.server.server_port
        return "%s://%s" % (self.server.scheme, host)

    # -- routes -----------------------------------------------------------

    def do_GET(self):
        self.route(b"")

    def do_HEAD(self):
        self.route(b"")

    def do_POST(self):
        self.route(self.body())

    def route(self, body):
        path = urlsplit(self.path).path
        try:
            if path.startswith("/echo"):
                return self.echo(body)
            if path == "/private":
                return self.send(401, "origin says: log in\n",
                                 extra=[("WWW-Authenticate", 'Basic realm="origin"')])
            if path.startswith("/simple"):
                return self.simple(path)
            if path.startswith("/files/"):
                return self.file(ROOT / "wheels", path[len("/files/"):], "application/octet-stream")
            if path.startswith("/npm/"):
                return self.npm(path[len("/npm/"):])
            if path.startswith("/git/"):
                return self.git_smart(path[len("/git"):], body)
            if path.startswith("/dumb/"):
                return self.file(ROOT / "dumb", path[len("/dumb/"):], "application/octet-stream")
            return self.send(404, "no route for %s\n" % path)
        except BrokenPipeError:
            pass

    def echo(self, body):
        seen = {
            "method": self.command,
            "path": self.path,
            "version": self.request_version,
            "tls": self.server.scheme == "https",
            "headers": [[k, v] for k, v in self.headers.items()],
            "body_len": len(body),
        }
        self.send(200, json.dumps(seen) + "\n", "application/json")

    def file(self, base, rel, ctype):
        p = (base / unquote(rel)).resolve()
        if not str(p).startswith(str(base.resolve()) + os.sep) or not p.is_file():
            return self.send(404, "not found\n")
        return self.send(200, p.read_bytes(), ctype)

    def simple(self, path):
        wheels = sorted((ROOT / "wheels").glob("*.whl"))
        projects = sorted({w.name.split("-")[0] for w in wheels})
        parts = [p for p in path.split("/") if p][1:]
        if not parts:
            links = "".join('<a href="/simple/%s/">%s</a>\n' % (p, p) for p in projects)
            return self.send(200, "<!DOCTYPE html><html><body>\n%s</body></html>\n" % links,
                             "text/html; charset=utf-8")
        name = parts[0].lower().replace("-", "_").replace(".", "_")
        mine = [w for w in wheels if w.name.split("-")[0].lower() == name]
        if not mine:
            return self.send(404, "no such project\n")
        links = "".join(
            '<a href="/files/%s#sha256=%s">%s</a>\n'
            % (w.name, hashlib.sha256(w.read_bytes()).hexdigest(), html.escape(w.name))
            for w in mine)
        return self.send(200, "<!DOCTYPE html><html><body>\n%s</body></html>\n" % links,
                         "text/html; charset=utf-8")

    def npm(self, rest):
        # /npm/NAME (metadata) or /npm/NAME/-/FILE.tgz (tarball)
        if "/-/" in rest:
            name, file = rest.split("/-/", 1)
            return self.file(ROOT / "npm", file, "application/octet-stream")
        name = unquote(rest).strip("/")
        tarballs = sorted((ROOT / "npm").glob("%s-*.tgz" % name))
        if not tarballs:
            return self.send(404, json.dumps({"error": "not found"}), "application/json")
        versions = {}
        for t in tarballs:
            data = t.read_bytes()
            version = t.name[len(name) + 1:-len(".tgz")]
            versions[version] = {
                "name": name,
                "version": version,
                "dist": {
                    "tarball": "%s/npm/%s/-/%s" % (self.base_url(), name, t.name),
                    "shasum": hashlib.sha1(data).hexdigest(),
                    "integrity": "sha512-" + base64.b64encode(hashlib.sha512(data).digest()).decode(),
                },
            }
        latest = sorted(versions)[-1]
        meta = {"name": name, "dist-tags": {"latest": latest}, "versions": versions}
        return self.send(200, json.dumps(meta), "application/json")

    def git_smart(self, path_info, body):
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "GIT_PROJECT_ROOT": str(ROOT / "git"),
            "GIT_HTTP_EXPORT_ALL": "1",
            "GIT_CONFIG_NOSYSTEM": "1",
            "HOME": str(ROOT),
            "REQUEST_METHOD": self.command,
            "PATH_INFO": unquote(path_info),
            "QUERY_STRING": urlsplit(self.path).query,
            "CONTENT_TYPE": self.headers.get("Content-Type", ""),
            "CONTENT_LENGTH": str(len(body)),
            "REMOTE_ADDR": self.client_address[0],
            "REMOTE_USER": "",
            "SERVER_PROTOCOL": "HTTP/1.1",
            "GATEWAY_INTERFACE": "CGI/1.1",
        }
        if self.headers.get("Content-Encoding"):
            env["HTTP_CONTENT_ENCODING"] = self.headers["Content-Encoding"]
        if self.headers.get("Git-Protocol"):
            env["GIT_PROTOCOL"] = self.headers["Git-Protocol"]
        out = subprocess.run(["git", "http-backend"], input=body, env=env,
                             capture_output=True, timeout=60)
        head, _, payload = out.stdout.partition(b"\r\n\r\n")
        if not _:
            head, _, payload = out.stdout.partition(b"\n\n")
        status, extra, ctype = 200, [], "application/octet-stream"
        for line in head.decode("latin-1").splitlines():
            if ":" not in line:
                continue
            k, v = (s.strip() for s in line.split(":", 1))
            if k.lower() == "status":
                status = int(v.split()[0])
            elif k.lower() == "content-type":
                ctype = v
            elif k.lower() != "content-length":
                extra.append((k, v))
        if out.returncode != 0 and not head:
            return self.send(500, out.stderr)
        return self.send(status, payload, ctype, extra)


class Server(ThreadingHTTPServer):
    daemon_threads = True
    ctx = None

    def finish_request(self, request, client_address):
        # The TLS handshake runs here, in the connection's own thread, so a
        # client that never finishes it cannot stall the accept loop.
        if self.ctx is not None:
            request.settimeout(30)
            try:
                request = self.ctx.wrap_socket(request, server_side=True)
            except (ssl.SSLError, OSError) as e:
                sys.stderr.write("origin https handshake failed: %s\n" % e)
                return
            try:
                super().finish_request(request, client_address)
            finally:
                request.close()
            return
        super().finish_request(request, client_address)


def serve(scheme, ctx=None):
    srv = Server(("127.0.0.1", 0), Handler)
    srv.scheme = scheme
    srv.ctx = ctx
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    return srv


def main():
    root, cert, key, ports_file = sys.argv[1:5]
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert, key)
    plain = serve("http")
    tls = serve("https", ctx)
    tmp = ports_file + ".tmp"
    with open(tmp, "w") as f:
        json.dump({"http": plain.server_port, "https": tls.server_port}, f)
    os.replace(tmp, ports_file)
    threading.Event().wait()


if __name__ == "__main__":
    main()
