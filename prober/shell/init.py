"""`prober init`: a first config, read off the host.

`guess` and `render` are the pure core: the host's facts (its running service units, the TCP
ports they listen on, its name) in, commented TOML out, in the shape of examples/mastodon.toml,
with a `CHECK` comment on every line that is a guess. `read_facts` is the thin shell: systemctl
for the running units, /proc/net/tcp{,6} for the listening sockets, /proc/PID/fd for their
owners and /proc/PID/cgroup for their units. Everything read is bounded and treated as hostile:
a unit name that systemd would not accept is left out, never written into the TOML.
"""

from __future__ import annotations

import ipaddress
import os
import re
import socket
import subprocess
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass

from prober.actuators.systemd import normalize_unit
from prober.core.errors import SystemdError
from prober.core.text import one_line, reason

MAX_UNITS = 2000
MAX_PROC_NET = 8 << 20
MAX_OTHERS_SHOWN = 20
CADDY_ADMIN_PORT = 2019  # caddy's admin API, not a site
_HOSTNAME = re.compile(r"(?=.{1,253}$)[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
                       r"(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*")


@dataclass(frozen=True)
class Listener:
    """A TCP socket in LISTEN state, and the unit whose process holds it ("" if unknown)."""

    unit: str
    address: str
    port: int


@dataclass(frozen=True)
class HostFacts:
    hostname: str
    units: tuple[str, ...]  # running service units
    listeners: tuple[Listener, ...]
    owners_seen: bool = True  # whether the sockets' processes could be read (root)


@dataclass(frozen=True)
class Guess:
    """One target prober init proposes."""

    name: str
    unit: str
    port: int | None  # None: no listening socket seen, the role's usual port assumed
    address: str = "127.0.0.1"  # where to probe it
    seen: tuple[str, ...] = ()  # its listening sockets, "host:port"


# Known units by role, the first running match wins.
_ROLES: tuple[tuple[str, re.Pattern[str]], ...] = (
    ("caddy", re.compile(r"caddy\.service")),
    ("nginx", re.compile(r"nginx\.service")),
    ("web", re.compile(r"mastodon-web\.service")),
    ("streaming", re.compile(r"mastodon-streaming@\d+\.service|mastodon-streaming\.service")),
    ("sidekiq", re.compile(r"mastodon-sidekiq(?:[@-][A-Za-z0-9_.@-]*)?\.service")),
    ("postgres", re.compile(r"postgresql@[A-Za-z0-9_.-]+\.service|postgresql\.service")),
    ("redis", re.compile(r"redis-server(?:@[A-Za-z0-9_.-]+)?\.service|redis\.service")),
)
_DEFAULT_PORTS = {"caddy": 443, "nginx": 443, "web": 3000, "streaming": 4000,
                  "postgres": 5432, "redis": 6379}


def safe_units(units: Sequence[str]) -> list[str]:
    """The unit names prober could name in a config, in order, each once."""
    out: dict[str, None] = {}
    for name in units[:MAX_UNITS]:
        try:
            if normalize_unit(name) == name:
                out[name] = None
        except ValueError:
            continue
    return list(out)


def guess(facts: HostFacts) -> tuple[Guess, ...]:
    """The known units that run here, one target each, with the port each listens on."""
    units = safe_units(facts.units)
    guesses = []
    proxy_taken = False
    for role, pattern in _ROLES:
        found = sorted(u for u in units if pattern.fullmatch(u))
        # The templated streaming unit (Mastodon 4.2+) over its umbrella, which stays active
        # whatever node does.
        found.sort(key=lambda u: "@" not in u)
        if not found or (role in ("caddy", "nginx") and proxy_taken):
            continue
        proxy_taken = proxy_taken or role in ("caddy", "nginx")
        guesses.append(_with_port(role, found[0], facts.listeners))
    return tuple(guesses)


def _with_port(role: str, unit: str, listeners: Sequence[Listener]) -> Guess:
    own = sorted({(item.port, item.address) for item in listeners if item.unit == unit
                  and not (role == "caddy" and item.port == CADDY_ADMIN_PORT)})
    seen = tuple(_host(address, port) for port, address in own)
    if role == "streaming" and "@" in unit:
        port = int(unit.split("@")[1].removesuffix(".service"))
        return Guess(role, unit, port, _reach(own, port), seen)
    if not own:
        return Guess(role, unit, None)
    ports = [port for port, _ in own]
    for preferred in (_DEFAULT_PORTS.get(role), 80 if role in ("caddy", "nginx") else None):
        if preferred in ports:
            return Guess(role, unit, preferred, _reach(own, preferred), seen)
    return Guess(role, unit, ports[0], _reach(own, ports[0]), seen)


def _reach(own: Sequence[tuple[int, str]], port: int) -> str:
    """The address to probe a port on: loopback for a wildcard listener, else its own."""
    addresses = sorted((address for p, address in own if p == port), key=_loopback_first)
    if not addresses:
        return "127.0.0.1"
    address = ipaddress.ip_address(addresses[0])
    if address.is_unspecified:  # "::" too: Linux's sockets are dual-stack by default
        return "127.0.0.1"
    return str(address)


def _loopback_first(address: str) -> tuple[bool, bool]:
    parsed = ipaddress.ip_address(address)
    return (not parsed.is_loopback, parsed.version != 4)


def _host(address: str, port: int) -> str:
    return f"[{address}]:{port}" if ":" in address else f"{address}:{port}"


def _q(text: str) -> str:
    """A TOML basic string; only ever given names already checked, but quoted safely anyway."""
    escaped = text.replace("\\", "\\\\").replace('"', '\\"')
    return '"' + "".join(ch if ch.isprintable() else f"\\u{ord(ch):04x}" for ch in escaped) + '"'


def _list(items: Sequence[str]) -> str:
    return "[" + ", ".join(_q(item) for item in items) + "]"


_HEADER = """\
# prober config written by `prober init` on {host},
# from what was running there: the service units, the TCP ports they listen on, and the names
# prober knows (caddy, nginx, Mastodon's mastodon-web/streaming/sidekiq, postgresql, redis).
# Lines marked CHECK are guesses: read them, then `prober validate` says what each target will
# do. See examples/mastodon.toml for the why of each setting.
# At /etc/prober/prober.toml this file is live at once: the timer's next run probes (and may
# restart) what it names, and prober-polkit.path rewrites the polkit rule for its units.
# The commands run as the `prober` user, under prober.service's sandbox; never through a shell.

[defaults]
timeout = "5s"             # hard deadline for one probe or command
failure_threshold = 3      # restart after 3 failed runs in a row (~90 s with the 30 s timer)
success_threshold = 1
startup_grace = "60s"      # failures this soon after a unit started do not count
cooldown = "2m"            # between two restarts of one unit, doubling while they don't help
max_cooldown = "30m"
max_restarts = 3           # at most 3 restarts within restart_window, then give up and alert
restart_window = "1h"
pressure_threshold = 10    # a starving service that only times out waits for the pressure
pressure_hold = "5m"       # to pass, up to this long (see examples/mastodon.toml)
"""

_NOTIFY = """
# Where events go (docs/configuration.md, "[notify] keys"): mail to the local MTA, a webhook, a
# command.
# [notify]
# mail_to = ["admin@example.org"]
"""


def render(facts: HostFacts, guesses: Sequence[Guess]) -> str:
    """The config's text: a header, [defaults], one commented [[target]] per guess."""
    host = facts.hostname if _HOSTNAME.fullmatch(facts.hostname) else "this host"
    names = {g.name: g for g in guesses}
    parts = [_HEADER.format(host=host)]
    if not facts.owners_seen:
        parts.append("# CHECK: the sockets' processes could not be read (run `prober init` as "
                     "root): every port below is a default, not what was seen.\n")
    for item in guesses:
        parts.append("\n" + _target(item, names, host))
    parts.append(_others(facts, guesses))
    parts.append(_NOTIFY)
    return "".join(parts)


def _port_note(item: Guess) -> str:
    if item.seen:
        more = "; CHECK which one to probe" if len(item.seen) > 1 else ""
        return f"# {item.unit} listens on {', '.join(item.seen[:8])}{more}.\n"
    if item.port is not None:
        return ""
    return (f"# CHECK: no TCP socket of {item.unit} was seen; "
            f"{_DEFAULT_PORTS.get(item.name, 0)} is the usual port.\n")


def _url(item: Guess, path: str) -> str:
    port = item.port if item.port is not None else _DEFAULT_PORTS[item.name]
    return f"http://{_host(item.address, port)}{path}"


def _deps(wanted: Sequence[str], names: Mapping[str, Guess]) -> str:
    present = [name for name in wanted if name in names]
    return f"depends_on = {_list(present)}\n" if present else ""


def _target(item: Guess, names: Mapping[str, Guess], host: str) -> str:
    builders = {"caddy": _proxy, "nginx": _proxy, "web": _web, "streaming": _streaming,
                "sidekiq": _sidekiq, "postgres": _postgres, "redis": _redis}
    return builders[item.name](item, names, host)


def _proxy(item: Guess, names: Mapping[str, Guess], host: str) -> str:
    backend = "web" in names
    path = "/health" if backend else "/"
    head = (f"# The proxy ({item.unit}). If it answers nothing while what it proxies "
            "answers,\n# it is restarted.\n")
    if item.port == 443 or (item.port is None and host != "this host"):
        lines = (f"{head}{_port_note(item)}[[target]]\nname = {_q(item.name)}\n"
                 f"url = {_q(f'https://{host}{path}')}   # CHECK: your site's name\n"
                 f"resolve = {_q(item.address)}      # probe this host's own proxy\n")
    else:
        lines = (f"{head}{_port_note(item)}[[target]]\nname = {_q(item.name)}\n"
                 f"url = {_q(_url(item, path))}   # CHECK: the path answers 2xx\n")
    if backend:
        lines += 'expect_body = "OK"        # Mastodon\'s /health, through the proxy\n'
    return lines + f"unit = {_q(item.unit)}\n" + _deps(["web", "streaming"], names)


def _web(item: Guess, names: Mapping[str, Guess], host: str) -> str:
    return ("# Mastodon's web server (puma). Its /health answers \"OK\" without touching the "
            "database.\n" + _port_note(item) +
            f'[[target]]\nname = "web"\nurl = {_q(_url(item, "/health"))}\n'
            f'expect_body = "OK"\nunit = {_q(item.unit)}\n' + _deps(["postgres", "redis"], names)
            + 'startup_grace = "2m"       # puma with several workers takes a while to boot\n')


def _streaming(item: Guess, names: Mapping[str, Guess], host: str) -> str:
    note = "" if "@" in item.unit else (
        "# CHECK: since Mastodon 4.2 node runs as mastodon-streaming@PORT.service and "
        "mastodon-streaming.service\n# is an umbrella that stays active whatever node does: "
        "name the @PORT unit if there is one.\n")
    return ("# Mastodon's streaming server (node).\n" + note + _port_note(item) +
            f'[[target]]\nname = "streaming"\n'
            f'url = {_q(_url(item, "/api/v1/streaming/health"))}\n'
            f'expect_body = "OK"\nunit = {_q(item.unit)}\n' + _deps(["postgres", "redis"], names))


def _sidekiq(item: Guess, names: Mapping[str, Guess], host: str) -> str:
    redis = names.get("redis")
    where = _host(redis.address, redis.port) if redis and redis.port else "127.0.0.1:6379"
    return ("# Sidekiq, by its heartbeat and its threads (not by `ps`): install sidekiq-alive, "
            "which comes\n# with prober, as root:\n#   install -D -m 0755 "
            "examples/sidekiq-alive /usr/local/lib/prober/sidekiq-alive\n"
            "# CHECK: --redis-url is SIDEKIQ_REDIS_URL, else REDIS_HOST/REDIS_PORT of "
            ".env.production;\n# --max-busy longer than your longest legitimate job.\n"
            '[[target]]\nname = "sidekiq"\n'
            'command = ["/usr/local/lib/prober/sidekiq-alive", "--redis-url", '
            f'"redis://{where}/0",\n'
            '           "--this-host", "--max-busy", "15m"]\n'
            f"unit = {_q(item.unit)}\n" + _deps(["redis", "postgres"], names)
            + 'startup_grace = "2m"       # Rails boots before the first heartbeat\n')


def _postgres(item: Guess, names: Mapping[str, Guess], host: str) -> str:
    port = item.port if item.port is not None else _DEFAULT_PORTS["postgres"]
    return ("# The database, monitored only (no `unit`), on purpose: a restart under a running "
            "Mastodon is\n# rarely the fix and drops every transaction. To let prober restart "
            f"it after all:\n# unit = {_q(item.unit)}\n" + _port_note(item) +
            '[[target]]\nname = "postgres"\n'
            f'command = ["/usr/bin/pg_isready", "--host", "/var/run/postgresql", "--port", '
            f'"{port}",\n           "--timeout", "3"]\n'
            "# CHECK: --host is DB_HOST of .env.production (a socket folder, or 127.0.0.1)\n")


def _redis(item: Guess, names: Mapping[str, Guess], host: str) -> str:
    port = item.port if item.port is not None else _DEFAULT_PORTS["redis"]
    return ("# Redis, monitored only, as the database (a hung Redis restarted may lose queued "
            f"jobs).\n# To let prober restart it: unit = {_q(item.unit)}\n" + _port_note(item) +
            '[[target]]\nname = "redis"\n'
            f'command = ["/usr/bin/redis-cli", "-h", {_q(item.address)}, "-p", "{port}", '
            '"ping"]\nexpect_output = "PONG"     # redis-cli exits 0 even on "NOAUTH"\n'
            '# env_file = "/etc/prober/redis.env"   # REDISCLI_AUTH=..., if Redis has a '
            "password\n")


def _others(facts: HostFacts, guesses: Sequence[Guess]) -> str:
    """A comment naming the other units that listen, for the admin to decide about."""
    known = {g.unit for g in guesses}
    allowed = set(safe_units(facts.units))
    seen: dict[str, list[str]] = {}
    for item in sorted(facts.listeners, key=lambda x: (x.unit, x.port)):
        if item.unit in allowed and item.unit not in known:
            seen.setdefault(item.unit, []).append(_host(item.address, item.port))
    if not seen:
        return ""
    lines = ["\n# Also listening, not guessed at (add a [[target]] if prober should watch it):"]
    for unit, where in list(seen.items())[:MAX_OTHERS_SHOWN]:
        lines.append(f"#   {unit}: {', '.join(sorted(set(where))[:5])}")
    if len(seen) > MAX_OTHERS_SHOWN:
        lines.append(f"#   ... and {len(seen) - MAX_OTHERS_SHOWN} more")
    return "\n".join(lines) + "\n"


# --- the shell: reading the host ----------------------------------------------------------


def read_facts(proc: str = "/proc") -> HostFacts:
    """The running service units (systemctl) and their listening TCP sockets (/proc)."""
    units = running_units()
    sockets = dict(_listening(proc))
    owners = dict(_socket_owners(proc, set(sockets)))
    listeners = tuple(Listener(owners.get(inode, ""), address, port)
                      for inode, (address, port) in sockets.items())
    return HostFacts(hostname=one_line(socket.gethostname()), units=tuple(units),
                     listeners=listeners, owners_seen=bool(owners) or not sockets)


def running_units() -> list[str]:
    argv = ["systemctl", "list-units", "--type=service", "--state=running", "--no-legend",
            "--plain", "--no-pager"]
    try:
        done = subprocess.run(argv, capture_output=True, timeout=15, check=False,
                              env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"),
                                   "LANG": "C.UTF-8", "SYSTEMD_COLORS": "0"})
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise SystemdError(f"cannot list the running units: {reason(str(exc))}") from None
    if done.returncode != 0:
        said = done.stderr.decode("utf-8", "replace")
        raise SystemdError(f"cannot list the running units: {reason(said) or 'systemctl failed'}")
    lines = done.stdout.decode("utf-8", "replace").splitlines()[:MAX_UNITS]
    return [line.split()[0] for line in lines if line.split()]


def _listening(proc: str) -> Iterator[tuple[int, tuple[str, int]]]:
    """(inode, (address, port)) of each TCP socket in LISTEN state."""
    for name, family in (("tcp", socket.AF_INET), ("tcp6", socket.AF_INET6)):
        try:
            with open(os.path.join(proc, "net", name), "rb") as file:
                text = file.read(MAX_PROC_NET).decode("ascii", "replace")
        except OSError:
            continue
        for line in text.splitlines()[1:]:
            parsed = parse_proc_net_line(line, family)
            if parsed is not None:
                yield parsed


def parse_proc_net_line(line: str, family: int) -> tuple[int, tuple[str, int]] | None:
    """One line of /proc/net/tcp{,6}, if it is a listening socket."""
    fields = line.split()
    if len(fields) < 10 or fields[3] != "0A":
        return None
    try:
        address_hex, port_hex = fields[1].split(":")
        raw = bytes.fromhex(address_hex)
        # The kernel prints each 32-bit word in host (little-endian) order.
        packed = b"".join(raw[i:i + 4][::-1] for i in range(0, len(raw), 4))
        address = socket.inet_ntop(family, packed)
        return int(fields[9]), (address, int(port_hex, 16))
    except (ValueError, OSError):
        return None


def _socket_owners(proc: str, inodes: set[int]) -> Iterator[tuple[int, str]]:
    """(inode, unit) for the sockets among `inodes`, by the unit of the process holding it."""
    wanted = {f"socket:[{inode}]": inode for inode in inodes}
    try:
        pids = [entry for entry in os.listdir(proc) if entry.isdigit()]
    except OSError:
        return
    for pid in pids:
        unit = None
        try:
            fds = os.listdir(os.path.join(proc, pid, "fd"))
        except OSError:
            continue
        for fd in fds:
            try:
                target = os.readlink(os.path.join(proc, pid, "fd", fd))
            except OSError:
                continue
            inode = wanted.get(target)
            if inode is None:
                continue
            unit = unit or _unit_of(proc, pid)
            if unit:
                yield inode, unit


def _unit_of(proc: str, pid: str) -> str:
    """The service unit a process runs in, from its cgroup path ("" if none)."""
    try:
        with open(os.path.join(proc, pid, "cgroup"), "rb") as file:
            text = file.read(64 * 1024).decode("utf-8", "replace")
    except OSError:
        return ""
    for line in text.splitlines():
        if line.startswith("0::"):
            for part in reversed(line[3:].split("/")):
                if part.endswith(".service"):
                    return part
    return ""


def write_new(path: str, text: str) -> None:
    """Write `text` to `path` only if nothing is there (atomically: all of it or nothing);
    FileExistsError if something is, OSError for the rest."""
    directory = os.path.dirname(os.path.abspath(path))
    temporary = os.path.join(directory, f".{os.path.basename(path)}.prober-init-{os.getpid()}")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                 0o644)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as file:
            file.write(text)
            file.flush()
            os.fsync(file.fileno())
        os.link(temporary, path)  # unlike rename, never replaces what is there
    finally:
        os.unlink(temporary)
