#!/usr/bin/env python3
"""Time from a new service's first bad answer to the guard taking it out of traffic.

Starts two loopback backends (legacy, and a new service that starts answering 500 at a moment
this script picks), a strangler with a guarded route in front of them, and sends a steady
request rate (default 100 req/s) for a warm-up, then flips the new service. Reports, per
window length, how long the route kept serving 500s and how many reached clients.

A benchmark, not a test: nothing here asserts. Needs only Python 3 and a built strangler
(target/release/strangler if present, else target/debug/strangler, or $STRANGLER).

    bench/guard-trip.py [--rate 100] [--warmup 12] [--windows 10s,30s] [--max-error-rate 0.05]
"""

import argparse
import http.client
import http.server
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Backend(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, name):
        self.name = name
        self.failing = False
        super().__init__(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.serve_forever, daemon=True).start()


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self):
        status = 500 if self.server.failing else 200
        body = b"{}"
        self.send_response(status)
        self.send_header("x-backend", self.server.name)
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


def binary():
    if os.environ.get("STRANGLER"):
        return os.environ["STRANGLER"]
    for profile in ("release", "debug"):
        path = ROOT / "target" / profile / "strangler"
        if path.exists():
            return str(path)
    sys.exit("build strangler first (cargo build --release)")


def wait_ready(admin_port, deadline=20.0):
    started = time.monotonic()
    while time.monotonic() - started < deadline:
        try:
            c = http.client.HTTPConnection("127.0.0.1", admin_port, timeout=1)
            c.request("GET", "/readyz")
            if c.getresponse().status == 200:
                return
        except OSError:
            pass
        time.sleep(0.05)
    sys.exit("strangler did not become ready")


def run(window, args):
    legacy, new = Backend("legacy"), Backend("orders-v2")
    port, admin = free_port(), free_port()
    config = f"""server:
  listen: 127.0.0.1:{port}
  admin: 127.0.0.1:{admin}
upstreams:
  legacy: {{ backends: [127.0.0.1:{legacy.server_address[1]}] }}
  orders-v2: {{ backends: [127.0.0.1:{new.server_address[1]}] }}
default_upstream: legacy
routes:
  - name: orders
    match: {{ path_prefix: /api/orders }}
    stage: new
    upstream: orders-v2
    fallback: legacy
    fallback_on: []
    guard: {{ max_error_rate: {args.max_error_rate}, min_requests: 20, window: {window} }}
"""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "routes.yaml"
        path.write_text(config)
        proxy = subprocess.Popen(
            [binary(), "run", "-c", str(path)],
            cwd=tmp,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            env={**os.environ, "RUST_LOG": "warn"},
        )
        try:
            wait_ready(admin)
            return drive(port, new, args)
        finally:
            proxy.terminate()
            proxy.wait()


def drive(port, new, args):
    """Sends `rate` req/s from a few keep-alive connections; returns the measurements."""
    interval = 1.0 / args.rate
    answers = []  # (sent_at, backend, status)
    lock = threading.Lock()
    stop = threading.Event()
    flip_at = [None]
    start = time.monotonic()

    def client(offset, step):
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
        n = offset
        while not stop.is_set():
            due = start + n * interval
            now = time.monotonic()
            if due > now:
                time.sleep(due - now)
            sent = time.monotonic()
            try:
                conn.request("GET", f"/api/orders/{n}")
                response = conn.getresponse()
                response.read()
                backend = response.getheader("x-backend", "?")
                with lock:
                    answers.append((sent, backend, response.status))
            except OSError:
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
            n += step

    clients = 4
    threads = [threading.Thread(target=client, args=(i, clients), daemon=True) for i in range(clients)]
    for t in threads:
        t.start()
    time.sleep(args.warmup)
    new.failing = True
    flip_at[0] = time.monotonic()
    time.sleep(args.after)
    stop.set()
    for t in threads:
        t.join()

    flip = flip_at[0]
    after = sorted(a for a in answers if a[0] >= flip)
    bad = [a for a in after if a[1] == "orders-v2" and a[2] >= 500]
    legacy = [a for a in after if a[1] == "legacy"]
    first_bad = bad[0][0] if bad else None
    first_legacy = legacy[0][0] if legacy else None
    return {
        "requests": len(answers),
        "bad_answers": len(bad),
        "trip_after_s": (first_legacy - first_bad) if first_bad and first_legacy else None,
        "rate": len([a for a in answers if a[0] < flip]) / args.warmup,
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rate", type=float, default=100.0)
    parser.add_argument("--warmup", type=float, default=12.0, help="seconds of good traffic first")
    parser.add_argument("--after", type=float, default=4.0, help="seconds of traffic after the flip")
    parser.add_argument("--windows", default="10s,30s")
    parser.add_argument("--max-error-rate", type=float, default=0.05)
    args = parser.parse_args()
    print(f"strangler: {binary()}")
    print(f"{'window':>8}  {'req/s':>6}  {'500s to clients':>15}  {'first 500 -> trip':>17}  {'expected ~':>10}")
    for window in args.windows.split(","):
        seconds = float(window.rstrip("s"))
        result = run(window, args)
        filled = min(seconds, args.warmup)
        expected = args.max_error_rate * filled / (1 - args.max_error_rate) if filled < seconds else args.max_error_rate * seconds
        trip = result["trip_after_s"]
        trip_text = f"{trip * 1000:.0f} ms" if trip is not None else "never"
        print(
            f"{window:>8}  {result['rate']:>6.0f}  {result['bad_answers']:>15}  {trip_text:>17}  {expected * 1000:>7.0f} ms"
        )


if __name__ == "__main__":
    main()
