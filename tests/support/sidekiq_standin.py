"""A Sidekiq stand-in: writes heartbeats into Redis the way Sidekiq does, with switches to fail.

    python3 tests/support/sidekiq_standin.py --redis-url URL [--layout 7|6.5|6.0] [--namespace NS]
        [--hostname NAME] [--tag TAG] [--concurrency N] [--queues default,push]
        [--beat-every SECONDS] [--busy N | --all-busy-since EPOCH] [--quiet]
        [--once [--beat-age SECONDS]]

It beats every --beat-every seconds (Sidekiq: a few seconds) and prints its identity
(`hostname:pid:nonce`) on stdout once the first beat is in Redis. Signals, for tests that run
it as a systemd unit:
- SIGUSR1: stop beating; the process stays up (a heartbeat thread that hangs, or a process
  frozen in a way that spares its PID);
- SIGUSR2: from now on every thread is busy with a job started now (threads that hang);
- SIGTERM, SIGINT: remove its records as Sidekiq does on a clean stop, and exit.

--busy N: N threads busy with jobs started at launch; --all-busy-since EPOCH: every thread busy
with jobs started at that time. --once: one beat, then exit leaving the records, as a process
that died right after would; with --beat-age, that beat is written as if it happened that
long ago (its record's TTL shortened to match; at Sidekiq's TTL or more, only the identity
remains in `processes`, as after a process died and its record expired).

The layouts are Sidekiq's own (lib/sidekiq/launcher.rb, lib/sidekiq/processor.rb):
- 7 (7.3 and later, also 8; 7.0 to 7.2 write the work hash as 6.5 does):
  MULTI{UNLINK work; HSET work tid json ...; EXPIRE work TTL}, then
  MULTI{SADD processes id; EXISTS id; HSET id info busy beat rtt_us quiet rss; EXPIRE id TTL;
  RPOP id-signals}. `info` has version, embedded and weights. No namespaces.
- 6.5 (6.4.2 to 6.5.x): the work hash written in a plain pipeline, HMSET for the process.
- 6.0 (6.0 to 6.4.1): the work hash is `<identity>:workers`, its payload a JSON object rather
  than a string; no rtt_us or rss.
Redis commands go through examples/sidekiq-alive's own RESP client.
"""

from __future__ import annotations

import argparse
import importlib.machinery
import importlib.util
import json
import os
import secrets
import signal
import socket
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType, ModuleType
from typing import Any

REPO = Path(__file__).resolve().parents[2]
SIDEKIQ_ALIVE = REPO / "examples" / "sidekiq-alive"
LAYOUTS = ("7", "6.5", "6.0")
TTL = 60  # Sidekiq's EXPIRE on the process and work hashes


def load_sidekiq_alive() -> ModuleType:
    """examples/sidekiq-alive as a module (it has no .py suffix: it is installed as a command)."""
    name = "sidekiq_alive"
    if name in sys.modules:
        return sys.modules[name]
    loader = importlib.machinery.SourceFileLoader(name, str(SIDEKIQ_ALIVE))
    spec = importlib.util.spec_from_loader(name, loader)
    assert spec is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up here
    loader.exec_module(module)
    return module


def _tid() -> str:
    """A thread id as Sidekiq prints them: base 36."""
    number = secrets.randbelow(36**4)
    digits = ""
    while True:
        number, digit = divmod(number, 36)
        digits = "0123456789abcdefghijklmnopqrstuvwxyz"[digit] + digits
        if not number:
            return digits


@dataclass
class Standin:
    """One fake Sidekiq process and the jobs its threads are running."""

    address: Any
    password: str | None
    layout: str
    namespace: str
    hostname: str
    tag: str
    concurrency: int
    queues: list[str]
    quiet: bool
    identity: str = ""
    started_at: float = field(default_factory=time.time)
    work: dict[str, dict[str, object]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.identity = f"{self.hostname}:{os.getpid()}:{secrets.token_hex(6)}"

    def key(self, name: str) -> str:
        return f"{self.namespace}:{name}" if self.namespace else name

    def set_busy(self, count: int, since: float) -> None:
        """`count` threads run a job that started at `since` (Processor#stats: run_at)."""
        self.work = {}
        for number in range(min(count, self.concurrency)):
            payload = {
                "retry": True, "queue": self.queues[0], "class": "Standin::SlowJob",
                "args": [f"standin-private-argument-{number}"], "jid": secrets.token_hex(12),
                "created_at": since, "enqueued_at": since,
            }
            job: object = payload if self.layout == "6.0" else json.dumps(payload)
            self.work[_tid()] = {"queue": self.queues[0], "payload": job, "run_at": int(since)}

    def info(self) -> str:
        data: dict[str, object] = {
            "hostname": self.hostname, "started_at": self.started_at, "pid": os.getpid(),
            "tag": self.tag, "concurrency": self.concurrency, "queues": self.queues,
        }
        if self.layout == "7":
            data["weights"] = [{queue: 0 for queue in self.queues}]
        data["labels"] = []
        data["identity"] = self.identity
        if self.layout == "7":
            data["version"] = "7.3.9"
            data["embedded"] = False
        return json.dumps(data)

    def beat(self, age: float = 0.0) -> None:
        """One heartbeat, as Launcher#❤ writes it; `age`: as if it happened that long ago."""
        sidekiq_alive = load_sidekiq_alive()
        deadline = time.monotonic() + 5
        with sidekiq_alive.open_redis(self.address, self.password, deadline) as redis:
            if age >= TTL:
                redis.call("SADD", self.key("processes"), self.identity)
                return
            work_key = self.key(f"{self.identity}:work" if self.layout != "6.0"
                                else f"{self.identity}:workers")
            work = [["HSET", work_key, tid, json.dumps(entry)] for tid, entry in self.work.items()]
            if self.layout == "6.5":
                _check(redis.pipeline([["UNLINK", work_key], *work, ["EXPIRE", work_key, TTL]]))
            else:
                unlink = "UNLINK" if self.layout == "7" else "DEL"
                tail = [["EXPIRE", work_key, TTL]] if work or self.layout == "6.0" else []
                _transaction(redis, [[unlink, work_key], *work, *tail])
            fields: list[object] = ["info", self.info(), "busy", len(self.work),
                                    "beat", repr(time.time() - age)]
            if self.layout != "6.0":
                fields += ["rtt_us", 180]
            fields += ["quiet", "true" if self.quiet else "false"]
            if self.layout != "6.0":
                fields += ["rss", 123456]
            write = "HSET" if self.layout == "7" else "HMSET"
            key = self.key(self.identity)
            _transaction(redis, [
                ["SADD", self.key("processes"), self.identity],
                ["EXISTS", key],
                [write, key, *fields],
                ["EXPIRE", key, max(1, round(TTL - age))],
                ["RPOP", f"{key}-signals"],
            ])

    def clear(self) -> None:
        """Launcher#clear_heartbeat: what a clean stop removes."""
        sidekiq_alive = load_sidekiq_alive()
        deadline = time.monotonic() + 5
        work_key = self.key(f"{self.identity}:work" if self.layout != "6.0"
                            else f"{self.identity}:workers")
        with sidekiq_alive.open_redis(self.address, self.password, deadline) as redis:
            _check(redis.pipeline([["SREM", self.key("processes"), self.identity],
                                   ["UNLINK" if self.layout != "6.0" else "DEL", work_key]]))


def _check(replies: list[Any]) -> list[Any]:
    sidekiq_alive = load_sidekiq_alive()
    for reply in replies:
        if isinstance(reply, sidekiq_alive.ReplyError):
            raise reply
    return replies


def _transaction(redis: Any, commands: list[list[Any]]) -> None:
    _check(redis.pipeline([["MULTI"], *commands, ["EXEC"]]))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Sidekiq stand-in for prober's tests")
    parser.add_argument("--redis-url", required=True)
    parser.add_argument("--layout", choices=LAYOUTS, default="7")
    parser.add_argument("--namespace", default="")
    parser.add_argument("--hostname", default=socket.gethostname())
    parser.add_argument("--tag", default="live")
    parser.add_argument("--concurrency", type=int, default=5)
    parser.add_argument("--queues", default="default,push,pull,mailers,scheduler,ingress")
    parser.add_argument("--beat-every", type=float, default=0.2, metavar="SECONDS")
    busy = parser.add_mutually_exclusive_group()
    busy.add_argument("--busy", type=int, default=0, metavar="N")
    busy.add_argument("--all-busy-since", type=float, metavar="EPOCH")
    parser.add_argument("--quiet", action="store_true", help="as after TSTP")
    parser.add_argument("--once", action="store_true")
    parser.add_argument("--beat-age", type=float, default=0.0, metavar="SECONDS")
    args = parser.parse_args(argv)
    if args.namespace and args.layout == "7":
        parser.error("Sidekiq 7 has no namespaces")

    sidekiq_alive = load_sidekiq_alive()
    address = sidekiq_alive.parse_redis_url(args.redis_url)
    password = address.password or os.environ.get("REDISCLI_AUTH") or None
    standin = Standin(address=address, password=password, layout=args.layout,
                      namespace=args.namespace, hostname=args.hostname, tag=args.tag,
                      concurrency=args.concurrency, queues=args.queues.split(","),
                      quiet=args.quiet)
    if args.all_busy_since is not None:
        standin.set_busy(args.concurrency, args.all_busy_since)
    else:
        standin.set_busy(args.busy, time.time())

    if args.once:
        standin.beat(args.beat_age)
        print(standin.identity, flush=True)
        return 0

    stop = threading.Event()
    beating = threading.Event()
    beating.set()
    stuck_from: list[float] = []

    def on_signal(signum: int, frame: FrameType | None) -> None:
        if signum == signal.SIGUSR1:
            beating.clear()
        elif signum == signal.SIGUSR2:
            stuck_from.append(time.time())
        else:
            stop.set()

    for signum in (signal.SIGUSR1, signal.SIGUSR2, signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, on_signal)

    standin.beat()
    print(standin.identity, flush=True)
    while not stop.wait(args.beat_every):
        if stuck_from:
            standin.set_busy(standin.concurrency, stuck_from.pop())
        if beating.is_set():
            standin.beat()
    standin.clear()
    return 0


if __name__ == "__main__":
    sys.exit(main())
