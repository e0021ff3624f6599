"""A Mastodon stand-in: the health endpoints a prober watches, and a switch to make them fail.

    python tests/standin.py --port N [--host 127.0.0.1] [--fail-file PATH]

GET/HEAD /health and /api/v1/streaming/health answer 200 "OK", / a small HTML page, anything else
404. While the --fail-file exists, every request answers 500 "failing". Requests are logged to
stderr; with --port 0 the chosen port is printed on stdout. SIGTERM and SIGINT stop it cleanly.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
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

    def _respond(self, *, body: bool) -> None:
        path = self.path.split("?", 1)[0]
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


class _Server(ThreadingHTTPServer):
    daemon_threads = True  # a client that never finishes must not keep us from exiting


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Mastodon stand-in for prober's tests")
    parser.add_argument("--port", type=int, required=True, help="TCP port (0: pick one, print it)")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--fail-file", type=Path, help="answer 500 while this file exists")
    parser.add_argument("--dump-file", type=Path,
                        help="on SIGQUIT, append a 'thread dump' line here (as puma/JVMs do)")
    args = parser.parse_args(argv)

    handler = type("Handler", (_Handler,), {"fail_file": args.fail_file})
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
