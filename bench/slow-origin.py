#!/usr/bin/env python3
"""A deliberately slow HTTP origin for the slow-shadow scenario: answers every request after a
fixed delay, one request at a time. usage: slow-origin.py HOST:PORT DELAY_SECONDS"""
import sys
import time
from http.server import BaseHTTPRequestHandler, HTTPServer

host, port = sys.argv[1].rsplit(":", 1)
delay = float(sys.argv[2])


class Slow(BaseHTTPRequestHandler):
    def _answer(self):
        length = int(self.headers.get("content-length") or 0)
        if length:
            self.rfile.read(length)
        time.sleep(delay)
        body = b'{"slow":true}'
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_POST = do_HEAD = _answer

    def log_message(self, *args):
        pass


class Quiet(HTTPServer):
    def handle_error(self, request, client_address):
        # strangler gives up on a copy at its shadow timeout and closes the connection, which
        # is the scenario: a write to it failing is expected, not worth a traceback per copy.
        if not isinstance(sys.exc_info()[1], (BrokenPipeError, ConnectionResetError)):
            super().handle_error(request, client_address)


Quiet((host, int(port)), Slow).serve_forever()
