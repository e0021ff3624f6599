"""A Mastodon stand-in: the health endpoints a prober watches, and a switch to make them fail.

    python tests/support/standin.py --port N [--host 127.0.0.1] [--fail-file PATH]
        [--slow-file PATH]

GET/HEAD /health and /api/v1/streaming/health answer 200 "OK", / a small HTML page, anything else
404. While the --fail-file exists, every request answers 500 "failing". While the --slow-file
exists, every request first sleeps as many seconds as the file says (1 if it says nothing): a
backend that only answers slowly, as Puma does while the host is starving. Requests are logged
to stderr; with --port 0 the chosen port is printed on stdout. SIGTERM and SIGINT stop it cleanly.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import FrameType

_HTML = b"""<!DOCTYPE html>
<html><head><title>Mastodon stand-in</title></head>
<body><p>A stand-in for a Mastodon instance, for prober's tests.</p></body></html>
"""
_PAGES = {
    "/health": (b"OK", "text/plain; charset=utf-8"),
    "/api/v1/streaming/health": (b"OK", "text/plain; charset=utf-8"),
    "/": (_HTML, "text/html; charset=utf-8"),
}


class _Handler(BaseHTTPRequestHandler):
    server_version = "standin/1"
    protocol_version = "HTTP/1.1"
    fail_file: Path | None = None
    slow_file: Path | None = None

    def _respond(self, *, body: bool) -> None:
        path = self.path.split("?", 1)[0]
        delay = slow_seconds(self.slow_file)
        if delay:
            time.sleep(delay)
        if self.fail_file is not None and self.fail_file.exists():
            status, payload, ctype = 500, b"failing", "text/plain; charset=utf-8"
        elif path in _PAGES:
            payload, ctype = _PAGES[path]
            status = 200
        else:
            status, payload, ctype = 404, b"not found", "text/plain; charset=utf-8"
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(payload)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        if body:
            self.wfile.write(payload)

    def do_GET(self) -> None:
        self._respond(body=True)

    def do_HEAD(self) -> None:
        self._respond(body=False)


def slow_seconds(slow_file: Path | None) -> float:
    """How long to sleep before answering: what the slow file says, 1 s if it is empty or not a
    number, 0 while it does not exist."""
    if slow_file is None:
        return 0.0
    try:
        text = slow_file.read_text().strip()
    except OSError:
        return 0.0
    try:
        return max(0.0, float(text))
    except ValueError:
        return 1.0


class _Server(ThreadingHTTPServer):
    daemon_threads = True  # a client that never finishes must not keep us from exiting


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Mastodon stand-in for prober's tests")
    parser.add_argument("--port", type=int, required=True, help="TCP port (0: pick one, print it)")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--fail-file", type=Path, help="answer 500 while this file exists")
    parser.add_argument("--slow-file", type=Path,
                        help="while this file exists, sleep the seconds it says (default 1) "
                             "before each answer")
    parser.add_argument("--dump-file", type=Path,
                        help="on SIGQUIT, append a 'thread dump' line here (as puma/JVMs do)")
    args = parser.parse_args(argv)

    handler = type("Handler", (_Handler,), {"fail_file": args.fail_file,
                                             "slow_file": args.slow_file})
    server = _Server((args.host, args.port), handler)
    if args.port == 0:
        print(server.server_address[1], flush=True)

    def stop(signum: int, frame: FrameType | None) -> None:
        # shutdown() waits for serve_forever() to return: not from its own thread.
        threading.Thread(target=server.shutdown, daemon=True).start()

    def dump(signum: int, frame: FrameType | None) -> None:
        with args.dump_file.open("a") as out:
            out.write(f"thread dump of pid {os.getpid()}: {threading.active_count()} threads\n")

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    if args.dump_file is not None:
        signal.signal(signal.SIGQUIT, dump)
    try:
        server.serve_forever(poll_interval=0.2)
    finally:
        server.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
