"""The exec probe kind: run a command (`redis-cli ping`, `pg_isready`), judge its exit code and
output.

Never a shell: `command` is an argv whose first item is an absolute path. The command runs as
prober's own user, with stdin on /dev/null, in a minimal environment (PATH, LANG) plus `env` and
`env_file`, in a process group of its own. At the deadline the whole group gets SIGKILL: a
health check holds no state worth a graceful stop, and the run's deadline must not grow. A
grandchild that calls setsid() leaves the group and escapes that; docs/configuration.md says so.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from prober.core.keys import (
    Key,
    Option,
    Shape,
    argv,
    credential,
    env,
    env_name,
    format_duration,
    integer,
    regex,
    string,
)
from prober.core.kinds import Argument, NoContext, ProbeKind
from prober.core.results import Deadline, FailureClass, Finding, prober_fault
from prober.core.text import clip, os_reason, quote, reason, redact_url, size
from prober.probes.shared import DEFAULT_MAX_BODY, MAX_BODY, search

BASE_ENVIRONMENT = {
    "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    "LANG": "C.UTF-8",
}
# After the command exits, how long its output may take to drain before it is cut off (a child
# that left the process group can hold the pipe open for ever).
_DRAIN = 0.2
_STDERR_KEPT = 4096


@dataclass(frozen=True)
class ExecProbe:
    """A command to run, and what its exit code and output must be."""

    command: tuple[str, ...]
    expect_exit: int = 0
    expect_output: str | None = None
    expect_output_regex: str | None = None
    env: tuple[tuple[str, str], ...] = ()
    env_file: str | None = None
    max_body: int = DEFAULT_MAX_BODY

    @property
    def endpoint(self) -> str:
        import shlex

        return " ".join(shlex.quote(redact_url(arg)) for arg in self.command)


# Variables that make a program load code from where they say, refused in an env_file: the
# dynamic loader's (every LD_*, GLIBC_TUNABLES), glibc's iconv modules (GCONV_PATH), and the
# start-up code of the shells and interpreters health checks are written in. An env_file is
# for secrets; these would let whoever writes it run code as prober's user (root, for an
# admin's manual `prober check`). PATH is not among them: the command is an absolute path.
LOADER_VARIABLES = frozenset({
    "GLIBC_TUNABLES", "GCONV_PATH",
    "BASH_ENV", "ENV",
    "PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP",
    "PERL5LIB", "PERLLIB", "PERL5OPT",
    "RUBYLIB", "RUBYOPT",
    "NODE_OPTIONS", "NODE_PATH",
})


def loads_code(name: str) -> bool:
    """Whether the variable `name` chooses code a program loads (see LOADER_VARIABLES)."""
    return name.startswith("LD_") or name in LOADER_VARIABLES


def parse_env_file(text: str) -> dict[str, str]:
    """`NAME=VALUE` lines; blank lines and `#` comments skipped; one pair of quotes removed.
    ValueError for another line, or a variable that loads code."""
    out = {}
    for number, line in enumerate(text.splitlines(), start=1):
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        name, sep, value = stripped.partition("=")
        try:
            env_name(name.strip())
        except ValueError:
            sep = ""
        if not sep:
            raise ValueError(f"line {number} is not NAME=VALUE")
        if loads_code(name.strip()):
            raise ValueError(f"line {number}: {name.strip()} chooses code that programs load; "
                             "refused")
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "\"'":
            value = value[1:-1]
        out[name.strip()] = value
    return out


def _env_option(values: Sequence[str]) -> dict[str, str] | None:
    if not values:
        return None
    out = {}
    for text in values:
        name, sep, value = text.partition("=")
        if not sep:
            raise ValueError(f'"{text}": expected NAME=VALUE')
        out[name] = value
    return out


KEYS = (
    Key("command", Shape.ARGV, argv,
        'the command, as a list: `["/usr/bin/redis-cli", "ping"]`; its first item an absolute '
        "path; no shell"),
    Key("expect_exit", Shape.INTEGER, integer(0, 255), "the exit code that means healthy",
        default="0", minimum=0, option=Option("--expect-exit", "CODE")),
    Key("expect_output", Shape.STRING, string, "substring its standard output must contain",
        option=Option("--expect-output", "TEXT")),
    Key("expect_output_regex", Shape.REGEX, regex,
        "regular expression (Python's `re`) its standard output must match; matched in a "
        "child process, killed (failing as `timeout`) at the target's `timeout`",
        option=Option("--expect-output-regex", "REGEX")),
    Key("env", Shape.ENV, env,
        "table of variables added to its minimal environment (`PATH`, `LANG`); values never "
        "appear in output", default="{}",
        option=Option("--env", "NAME=VALUE", "a variable added to its minimal environment "
                      "(PATH, LANG), the flag again for more; values never appear in output",
                      multiple=True, convert=_env_option)),
    Key("env_file", Shape.CREDENTIAL, credential,
        "`NAME=VALUE` lines added to its environment, for secrets (`REDISCLI_AUTH`, "
        "`PGPASSWORD`) kept out of the config: an absolute path, or a name in "
        "`$CREDENTIALS_DIRECTORY`; variables that choose code a program loads (`LD_*`, ...) "
        "are refused", option=Option("--env-file", "PATH"), file_parse=parse_env_file),
    MAX_BODY,
)


def build(values: Mapping[str, Any]) -> ExecProbe:
    return ExecProbe(**values)


def argument(args: Sequence[str]) -> Mapping[str, Any] | None:
    if args and args[0].startswith("/"):
        return {"command": list(args)}
    return None


def environment(spec: ExecProbe, environ: Mapping[str, str], euid: int) -> dict[str, str]:
    """The command's environment: the base, then `env`, then `env_file` (as systemd's
    Environment= and EnvironmentFile=). FileFault if the env_file cannot be used."""
    out = {**BASE_ENVIRONMENT, **dict(spec.env)}
    if spec.env_file is not None:
        from prober.io.configfiles import NamedFile

        out.update(NamedFile("env_file", spec.env_file).parsed(environ, euid, parse_env_file))
    return out


async def probe(spec: ExecProbe, deadline: Deadline, context: NoContext) -> Finding:
    """Run the command once, within the deadline, and judge what it did."""
    from prober.io.configfiles import FileFault

    loop = asyncio.get_running_loop()
    try:
        environ = environment(spec, os.environ, os.geteuid())
    except FileFault as exc:
        return prober_fault(reason(str(exc)))
    try:
        transport, command = await loop.subprocess_exec(
            lambda: _Command(loop, spec.max_body), *spec.command,
            stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE, env=environ, start_new_session=True, cwd="/",
        )
    except OSError as exc:
        return Finding(reason(f"cannot run {spec.command[0]}: {os_reason(exc)}"),
                       FailureClass.EXEC)
    try:
        async with asyncio.timeout_at(deadline.at):
            await asyncio.shield(command.exited)
    except TimeoutError:
        return Finding(f"no exit within {format_duration(deadline.seconds)} (killed)",
                       FailureClass.TIMEOUT)
    finally:
        await _end(transport, command)
    code = transport.get_returncode() or 0
    matched = True
    if spec.expect_output_regex is not None and code == spec.expect_exit:
        text = command.stdout.decode("utf-8", errors="replace")
        found = await search(spec.expect_output_regex, text, deadline)
        if found is None:
            return Finding("expect_output_regex did not finish within "
                           f"{format_duration(deadline.seconds)}", FailureClass.TIMEOUT)
        matched = found
    return judge(spec, code, command, matched)


class _Command(asyncio.SubprocessProtocol):
    """What the command did: its exit, stdout up to max_body (and whether there was more), a
    little of stderr for the reason. Reading goes on past the limits, so the command never
    blocks on a full pipe. Its exit is known as soon as it happens, whoever keeps its pipes
    open (a background child it left behind)."""

    def __init__(self, loop: asyncio.AbstractEventLoop, limit: int) -> None:
        self.limit = limit
        self.stdout = bytearray()
        self.stderr = bytearray()
        self.over = False
        self.exited: asyncio.Future[None] = loop.create_future()
        self.drained: asyncio.Future[None] = loop.create_future()
        self._open = {1, 2}

    def pipe_data_received(self, fd: int, data: bytes) -> None:
        kept, limit = (self.stdout, self.limit) if fd == 1 else (self.stderr, _STDERR_KEPT)
        room = limit - len(kept)
        if room > 0:
            kept += data[:room]
        if fd == 1 and len(data) > room:
            self.over = True

    def pipe_connection_lost(self, fd: int, exc: Exception | None) -> None:
        self._open.discard(fd)
        if not self._open and not self.drained.done():
            self.drained.set_result(None)

    def process_exited(self) -> None:
        if not self.exited.done():
            self.exited.set_result(None)


async def _end(transport: asyncio.SubprocessTransport, command: _Command) -> None:
    """Kill what is left of the command's process group, let its output drain, reap it."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(transport.get_pid(), signal.SIGKILL)
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(asyncio.shield(command.exited), _DRAIN)
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(asyncio.shield(command.drained), _DRAIN)
    transport.close()


def judge(spec: ExecProbe, code: int, out: _Command, matched: bool = True) -> Finding:
    """The verdict on an exited command: its exit code first, then its output (`matched`:
    whether expect_output_regex matched it, found off the event loop)."""
    if code < 0:
        return Finding(f"killed by {_signal_name(-code)}{_said(out)}", FailureClass.EXIT)
    if code != spec.expect_exit:
        return Finding(f"exit {code}, expected {spec.expect_exit}{_said(out)}",
                       FailureClass.EXIT)
    text = out.stdout.decode("utf-8", errors="replace")
    missing = []
    if spec.expect_output is not None and spec.expect_output not in text:
        missing.append(f"does not contain {quote(spec.expect_output)}")
    if spec.expect_output_regex is not None and not matched:
        missing.append(f"does not match /{clip(spec.expect_output_regex)}/")
    if missing and out.over:
        limit = size(spec.max_body)
        return Finding(f"output over {limit} and its first {limit} {missing[0]}",
                       FailureClass.TOO_LARGE)
    if missing:
        return Finding(f"output {missing[0]}{_said(out)}", FailureClass.OUTPUT)
    return Finding(f"exit {code}")


def _said(out: _Command) -> str:
    """The first line the command wrote (stderr first), to quote in a failure."""
    for stream in (out.stderr, out.stdout):
        for line in stream.decode("utf-8", errors="replace").splitlines():
            if line.strip():
                return ": " + clip(reason(line), 80)
    return ""


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"


KIND: ProbeKind[ExecProbe, NoContext] = ProbeKind(
    name="exec",
    spec=ExecProbe,
    keys=KEYS,
    selectors=("command",),
    build=build,
    probe=probe,
    context=NoContext,
    argument=Argument("-- /PATH/TO/COMMAND [ARG]...",
                      "a command (its absolute path and arguments, after `--`)", argument),
)
