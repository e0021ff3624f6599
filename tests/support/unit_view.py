"""What a process can see and do from inside prober's sandboxed units, as JSON on stdout.

Run by the hardening tests as the ExecStart= of a verbatim copy of a shipped unit, and once more
outside it as the same user, so that each hardening line is judged by what it changes:

    python unit_view.py '{"read": [paths], "exec": [[argv]], "connect": [[host, port]], ...}'

It uses only the standard library, and runs subprocesses the way prober's exec probes and notify
commands do (asyncio, stdin from /dev/null, output captured, a deadline).
"""

from __future__ import annotations

import asyncio
import errno
import json
import os
import socket
import sys
from pathlib import Path
from typing import Any

EXEC_DEADLINE = 20.0


def _errno_name(exc: OSError) -> str:
    return errno.errorcode.get(exc.errno or 0, str(exc.errno))


def read(path: str) -> str:
    """"ok" if `path` can be read, else the errno name (ENOENT, EACCES, ...)."""
    try:
        Path(path).read_bytes()
    except OSError as exc:
        return _errno_name(exc)
    return "ok"


async def run(argv: list[str]) -> dict[str, Any]:
    """Run `argv` as an exec probe would; its exit code and output, or the error."""
    try:
        proc = await asyncio.create_subprocess_exec(
            *argv, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE, start_new_session=True,
            env={"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8"})
    except OSError as exc:
        return {"error": _errno_name(exc)}
    try:
        out, err = await asyncio.wait_for(proc.communicate(), EXEC_DEADLINE)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        return {"error": "timeout"}
    return {"rc": proc.returncode, "stdout": out.decode(errors="replace"),
            "stderr": err.decode(errors="replace")}


def connect(host: str, port: int) -> str:
    """"ok" if a TCP connection to host:port is accepted within 2 s, else the errno name or
    "timeout" (a SYN dropped by IPAddressDeny= is not answered, so it times out)."""
    try:
        with socket.create_connection((host, port), timeout=2):
            return "ok"
    except TimeoutError:
        return "timeout"
    except OSError as exc:
        return _errno_name(exc)


def send_udp(host: str, port: int) -> str:
    """"ok" if a UDP datagram to host:port could be sent (as a DNS query is), else the errno."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        try:
            sock.sendto(b"unit-view", (host, port))
        except OSError as exc:
            return _errno_name(exc)
    return "ok"


def created_mode(directory: str) -> str:
    """The permission bits of a file created in `directory` with mode 0666 (what UMask= leaves)."""
    path = Path(directory) / f".unit-view-{os.getpid()}"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        return oct(os.fstat(fd).st_mode & 0o777)
    finally:
        os.close(fd)
        path.unlink()


def filtered_call() -> str:
    """What sched_setaffinity() (in @resources) does to the caller: "ok" or the errno name."""
    try:
        os.sched_setaffinity(0, os.sched_getaffinity(0))
    except OSError as exc:
        return _errno_name(exc)
    return "ok"


async def main(request: dict[str, Any]) -> dict[str, Any]:
    view: dict[str, Any] = {
        "uid": os.getuid(),
        "read": {path: read(path) for path in request.get("read", [])},
        "connect": {f"{host}:{port}": connect(host, port)
                    for host, port in request.get("connect", [])},
        "send_udp": {f"{host}:{port}": send_udp(host, port)
                     for host, port in request.get("send_udp", [])},
        "filtered_call": filtered_call(),
    }
    if "write_dir" in request:
        view["created_mode"] = created_mode(request["write_dir"])
    view["exec"] = [await run(argv) for argv in request.get("exec", [])]
    return view


if __name__ == "__main__":
    sys.stdout.write(json.dumps(asyncio.run(main(json.loads(sys.argv[1])))) + "\n")
