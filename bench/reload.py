#!/usr/bin/env python3
"""Big reloads, end to end: how long `POST /reload` of a 10,000-route file takes, and how long the
first requests to its routes take right after it (their path regexes may not be built yet).

    bench/reload.py [STRANGLER_BINARY] [--routes N] [--rounds R] [--rich]

Needs python3 and a built strangler (default target/release/strangler); starts its own origin
(a tiny HTTP server on loopback) and strangler, both stopped by PID at the end. Each round
writes a file of N routes (alternating segment prefixes and anchored regexes; with --rich, every
50th route a host-and-header match and the one before it a prefix rewrite, the file of
benches/routing.rs and examples/reload_profile.rs), times `POST /reload` from the request to
the answer, then at once sends one request to the LAST regex route, one to a middle regex route
and one to the last prefix route, timing each, and then the same three again (warm). Then it
edits one route of the big file and times that reload too (10,000 routes replacing 10,000: what
carries over from the serving table, guards and metric series, is matched by route name; path
regexes by pattern) and the first requests after it. Between rounds the file goes back to 10
routes, so every round compiles the big file anew.
"""

import argparse
import http.client
import http.server
import os
import socket
import socketserver
import statistics
import subprocess
import sys
import tempfile
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Origin(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # Header and body go out in two writes: without this, Nagle and delayed ACKs add 40 ms.
    disable_nagle_algorithm = True

    def do_GET(self):
        body = b'{"ok":true}'
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


def kind(i, rich):
    """What route `i` matches on: "prefix", "regex", or, in a rich file (`--rich`), every 50th a
    "host" and header match and the one before it a "rewrite" (prefix, method, strip_prefix),
    as in examples/reload_profile.rs and benches/routing.rs."""
    if rich and i % 50 == 49:
        return "host"
    if rich and i % 50 == 48:
        return "rewrite"
    return "prefix" if i % 2 == 0 else "regex"


def config(routes, port, admin, origin, rich=False):
    lines = [
        f"server: {{ listen: 127.0.0.1:{port}, admin: 127.0.0.1:{admin}, threads: 1 }}",
        "upstreams:",
        f"  origin: {{ backends: [127.0.0.1:{origin}] }}",
        f"  new: {{ backends: [127.0.0.1:{origin}] }}",
        "default_upstream: origin",
        "routes:",
    ]
    for i in range(routes):
        route = {
            "prefix": f"{{ name: r{i}, match: {{ path_prefix: /svc{i}/items }}, upstream: origin }}",
            "regex": f"{{ name: r{i}, match: {{ path_regex: '^/svc{i}/orders/[0-9]+$' }}, upstream: origin }}",
            "host": f"{{ name: r{i}, match: {{ host: 'svc{i}.example.com', headers: {{ x-tenant: t{i} }} }}, upstream: new }}",
            "rewrite": f"{{ name: r{i}, match: {{ path_prefix: /svc{i}/items, methods: [GET] }}, upstream: {{ name: new, rewrite: {{ strip_prefix: /svc{i} }} }} }}",
        }[kind(i, rich)]
        lines.append(f"  - {route}")
    return "\n".join(lines) + "\n"


def timed_get(port, path, conn=None):
    """One GET, timed from sending to the whole answer; on `conn` (kept alive) when given."""
    own = conn is None
    if own:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    start = time.perf_counter()
    conn.request("GET", path)
    response = conn.getresponse()
    response.read()
    elapsed = time.perf_counter() - start
    if own:
        conn.close()
    return response.status, elapsed


def reload(admin):
    conn = http.client.HTTPConnection("127.0.0.1", admin, timeout=60)
    start = time.perf_counter()
    conn.request("POST", "/reload", headers={"x-strangler-admin": "1"})
    response = conn.getresponse()
    body = response.read()
    elapsed = time.perf_counter() - start
    conn.close()
    if response.status != 200:
        raise SystemExit(f"reload answered {response.status}: {body[:300]!r}")
    # The file watch (100 ms debounce) must not have applied the file first: then this POST
    # only found it unchanged, and its time says nothing.
    if b"applied" not in body:
        raise SystemExit(f"POST /reload did not apply the file (the watch was first?): {body[:300]!r}")
    return elapsed


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("binary", nargs="?", default=os.path.join(ROOT, "target/release/strangler"))
    parser.add_argument("--routes", type=int, default=10_000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument(
        "--rich",
        action="store_true",
        help="host-and-header routes and prefix rewrites among them (the routing bench's file)",
    )
    args = parser.parse_args()
    args.binary = os.path.abspath(args.binary)

    origin_port, port, admin = free_port(), free_port(), free_port()
    server = socketserver.ThreadingTCPServer(("127.0.0.1", origin_port), Origin)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()

    work = tempfile.mkdtemp(prefix="strangler-reload.")
    path = os.path.join(work, "routes.yaml")
    small = config(10, port, admin, origin_port)
    big = config(args.routes, port, admin, origin_port, args.rich)
    # One route edited: its prefix changes, every other route stays as it was.
    edited = big.replace("path_prefix: /svc0/items }", "path_prefix: /svc0/things }", 1)
    assert edited != big
    with open(path, "w") as f:
        f.write(small)
    env = dict(os.environ, RUST_LOG="warn")
    proxy = subprocess.Popen([args.binary, "run", "-c", path], env=env, cwd=work)
    try:
        deadline = time.time() + 30
        while True:
            try:
                timed_get(port, "/svc0/items/1")
                break
            except OSError:
                if time.time() > deadline or proxy.poll() is not None:
                    raise SystemExit("strangler did not start")
                time.sleep(0.05)

        regexes = [i for i in range(args.routes) if kind(i, args.rich) == "regex"]
        last_regex, middle_regex = regexes[-1], regexes[len(regexes) // 2]
        last_prefix = max(i for i in range(args.routes) if kind(i, args.rich) == "prefix")
        probes = [
            ("last regex route", f"/svc{last_regex}/orders/42"),
            ("middle regex route", f"/svc{middle_regex}/orders/42"),
            ("last prefix route", f"/svc{last_prefix}/items/42"),
        ]
        rows = {"reload": [], "reload, one route edited": []}
        for name, _ in probes:
            rows[f"first: {name}"] = []
            rows[f"warm: {name}"] = []
        for name, _ in probes:
            rows[f"after edit, first: {name}"] = []
        for _ in range(args.rounds):
            # Probes go over one kept-alive connection, opened before the reload, so they time
            # the request, not a connect.
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
            conn.connect()
            conn.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            timed_get(port, "/svc0/items/1", conn)
            with open(path, "w") as f:
                f.write(big)
            rows["reload"].append(reload(admin))
            for name, probe in probes:
                status, elapsed = timed_get(port, probe, conn)
                assert status == 200, (probe, status)
                rows[f"first: {name}"].append(elapsed)
            for name, probe in probes:
                rows[f"warm: {name}"].append(timed_get(port, probe, conn)[1])
            with open(path, "w") as f:
                f.write(edited)
            rows["reload, one route edited"].append(reload(admin))
            # The edit left these routes' patterns as they were: the new table takes their
            # regexes from the serving one, built, so the first request finds them warm.
            for name, probe in probes:
                status, elapsed = timed_get(port, probe, conn)
                assert status == 200, (probe, status)
                rows[f"after edit, first: {name}"].append(elapsed)
            conn.close()
            with open(path, "w") as f:
                f.write(small)
            reload(admin)
            # Let the file watch see both edits as already applied before the next round.
            time.sleep(0.5)
        shape = "rich file" if args.rich else "prefixes and regexes"
        print(f"{args.routes} routes ({shape}), {args.rounds} rounds ({args.binary})")
        print(f"{'what':40} {'median ms':>10} {'min ms':>8} {'max ms':>8}")
        for name, values in rows.items():
            ms = [v * 1000 for v in values]
            print(f"{name:40} {statistics.median(ms):10.2f} {min(ms):8.2f} {max(ms):8.2f}")
    finally:
        proxy.terminate()
        try:
            proxy.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proxy.kill()
        server.shutdown()


if __name__ == "__main__":
    sys.exit(main())
