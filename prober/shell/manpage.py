"""The man pages: prober(1), written from the click commands' own help, and prober.toml(5), from
the key table: `python3 -m prober.shell.manpage --section 1 > prober.1`,
`python3 -m prober.shell.manpage --section 5 > prober.toml.5`.

The Debian package builds its man pages with this, so they document exactly the commands,
options and config keys of the code it ships. The date is $SOURCE_DATE_EPOCH's (reproducible
builds), else today's.
"""

from __future__ import annotations

import datetime
import inspect
import os
import re
import sys

import click

from prober import __version__
from prober.actuators import ACTUATORS
from prober.core.config import NOTIFY_KEYS, POLICY_KEYS, TARGET_KEYS, TOP_KEYS
from prober.core.keys import Key
from prober.probes import KINDS

SUMMARY = "restart systemd services that are up but not answering"

DESCRIPTION = """\
prober probes endpoints over HTTP, TCP or a Unix socket, or runs a check command, counts
failures across runs, works out which layer of a stack is broken, and asks systemd over D-Bus
to restart that unit, with grace periods, backoff, a restart budget and a dry run. It never
starts a unit that is not active. prober.toml(5) describes the config; the README and docs/ in
/usr/share/doc/prober/ the restart policy, operating it and its failure modes.
"""

_STATIC = r"""
.SH EXAMPLES
A first config, read off this host's running units and listening ports; then what it will do,
and what a run would do right now, restarting nothing:
.PP
.nf
.RS
prober init \-\-output /etc/prober/prober.toml
prober validate
prober check \-\-dry\-run
.RE
.fi
.PP
What is remembered per target, and one probe by hand, with no state:
.PP
.nf
.RS
prober status
prober probe https://mastodon.example.org/health \-\-expect\-body OK
prober probe \-\-expect\-output PONG \-\- /usr/bin/redis\-cli ping
.RE
.fi
.PP
Hands off during an upgrade, then back; forget a target's failures and restarts:
.PP
.nf
.RS
prober pause \-\-all \-\-for 30m \-\-reason "upgrading Mastodon"
prober resume
prober reset caddy
.RE
.fi
.SH EXIT STATUS
For \fBcheck\fR, Nagios-compatible: 0 every target passes; 1 some target fails, below its
failure_threshold; 2 a target reached its threshold (a restart was asked for, or is waiting,
given up or not possible); 3 prober could not do its job (bad config, bad arguments, an unusable
state file). Every command exits 3 on bad input, with one line on standard error.
.SH ENVIRONMENT
.TP
.B PROBER_CONFIG
The config file, unless \fB\-\-config\fR is given.
.TP
.B PROBER_STATE
The state file, unless \fB\-\-state\fR is given.
.TP
.B STATE_DIRECTORY
Set by systemd's StateDirectory=; the state file is state.json there.
.SH FILES
.TP
.I /etc/prober/prober.toml
The config: targets, their units and the restart policy. Examples are in
/usr/share/doc/prober/examples/.
.TP
.I /var/lib/prober/state.json
What prober remembers between runs: failures, restarts, history.
.TP
.I /etc/polkit-1/rules.d/50-prober.rules
Written by \fBprober polkit\-rule \-\-install\fR: lets the prober user restart the configured
units and nothing else.
.SH SEE ALSO
.BR prober.toml (5),
.BR systemctl (1),
.BR systemd.timer (5),
.BR polkit (8)
"""


def escape(text: str) -> str:
    """`text` as roff prints it literally: backslashes, minus signs, leading control chars."""
    text = text.replace("\\", "\\e").replace("-", "\\-")
    lines = [f"\\&{line}" if line.startswith((".", "'")) else line for line in text.split("\n")]
    return "\n".join(lines)


def _paragraphs(text: str) -> str:
    blocks = [" ".join(block.split()) for block in inspect.cleandoc(text).split("\n\n")]
    return "\n.PP\n".join(escape(block) for block in blocks if block and block != "\b")


def _options(command: click.Command, ctx: click.Context) -> list[str]:
    lines: list[str] = []
    for param in command.get_params(ctx):
        if not isinstance(param, click.Option) or "--help" in param.opts:
            continue
        record = param.get_help_record(ctx)
        if record is None:
            continue
        names, help_text = record
        lines += [".TP", f"\\fB{escape(names)}\\fR"]
        lines.append(escape(" ".join(help_text.split())) if help_text else "")
    return [line for line in lines if line != ""]


def render(group: click.Group, date: datetime.date, version: str = __version__) -> str:
    """The whole page for `group` (prober's CLI), dated `date`."""
    root = click.Context(group, info_name="prober")
    out = [
        f'.TH PROBER 1 "{date.isoformat()}" "prober {escape(version)}" "User Commands"',
        ".ad l",
        ".SH NAME",
        f"prober \\- {escape(SUMMARY)}",
        ".SH SYNOPSIS",
        ".B prober",
        "[\\fIOPTIONS\\fR] \\fICOMMAND\\fR [\\fIARGS\\fR]...",
        ".SH DESCRIPTION",
        _paragraphs(group.help or ""),
        ".PP",
        _paragraphs(DESCRIPTION),
        ".SH OPTIONS",
        *_options(group, root),
        ".SH COMMANDS",
    ]
    for name in group.list_commands(root):
        command = group.get_command(root, name)
        if command is None or command.hidden:
            continue
        ctx = click.Context(command, info_name=name, parent=root)
        usage = " ".join(command.collect_usage_pieces(ctx))
        out += [f'.SS "prober {escape(name)} {escape(usage)}"', _paragraphs(command.help or "")]
        out += _options(command, ctx)
    return "\n".join(out) + "\n" + _STATIC.lstrip("\n")


def build_date(environ: dict[str, str] | os._Environ[str]) -> datetime.date:
    """$SOURCE_DATE_EPOCH's day (UTC), else today."""
    epoch = environ.get("SOURCE_DATE_EPOCH")
    if epoch:
        return datetime.datetime.fromtimestamp(int(epoch), datetime.UTC).date()
    return datetime.datetime.now(datetime.UTC).date()


CONFIG_SUMMARY = "the configuration of prober(1)"

CONFIG_DESCRIPTION = """\
prober reads one TOML file: top-level keys, a [defaults] table and one [[target]] table per
thing to probe, and a [notify] table. Every key of [defaults] can be overridden per target.
Unknown keys are errors, with a "did you mean". The file must be a regular file of at most
1 MiB of UTF-8, owned by root or the running user and writable by no one else.

Durations are systemd's time spans (systemd.time(7)) or a plain number of seconds, written as a
string or not: 30, "30" and "30s" are the same; "500ms", "5min", "1h 30min", "2w". As in
systemd, m is minutes and M months.
"""

CONFIG_EXAMPLE = """\
[defaults]
timeout = "5s"
failure_threshold = 3

[[target]]
name = "caddy"
url = "https://mastodon.example.org/health"
resolve = "127.0.0.1"
expect_body = "OK"
unit = "caddy.service"
depends_on = ["web"]

[[target]]
name = "web"
url = "http://127.0.0.1:3000/health"
unit = "mastodon-web.service"
"""

_CONFIG_STATIC = r"""
.SH FILES
.TP
.I /etc/prober/prober.toml
The config, unless \fB\-\-config\fR or \fBPROBER_CONFIG\fR names another.
.TP
.I /usr/share/doc/prober/examples/
Examples: a Mastodon host behind caddy or nginx, a host that runs only caddy.
.SH SEE ALSO
.BR prober (1),
.BR systemd.time (7)
"""


def _inline(text: str) -> str:
    """A key's one-line meaning in roff: `code` in bold, *words* in italics."""
    text = re.sub(r"`([^`]*)`", lambda m: f"\\fB{m.group(1)}\\fR", escape(text))
    return re.sub(r"\*([^*]+)\*", r"\\fI\1\\fR", text)


def _keys(keys: tuple[Key, ...], *, marks_defaults: bool = False) -> list[str]:
    lines = []
    for key in keys:
        if key.default == "required":
            tag = f"\\fB{escape(key.name)}\\fR (required)"
        elif key.default:
            tag = f"\\fB{escape(key.name)}\\fR = \\fI{escape(key.default)}\\fR"
        else:
            tag = f"\\fB{escape(key.name)}\\fR"
        meaning = _inline(key.help)
        if marks_defaults and key.in_defaults:
            meaning += "; also in [defaults]"
        lines += [".TP", tag, meaning]
    return lines


def render_config(date: datetime.date, version: str = __version__) -> str:
    """prober.toml(5): every section of the config and its keys, each with its default and
    meaning, from the key table; dated `date`."""
    out = [
        f'.TH PROBER.TOML 5 "{date.isoformat()}" "prober {escape(version)}" "File Formats"',
        ".ad l",
        ".SH NAME",
        f"prober.toml \\- {escape(CONFIG_SUMMARY)}",
        ".SH SYNOPSIS",
        "/etc/prober/prober.toml",
        ".SH DESCRIPTION",
        _paragraphs(CONFIG_DESCRIPTION),
        '.SH "TOP-LEVEL KEYS"',
        *_keys(TOP_KEYS),
        '.SH "[notify] KEYS"',
        *_keys(NOTIFY_KEYS),
        '.SH "[[target]] KEYS"',
        "Every target, whatever its kind; exactly one of the keys that choose the kind "
        "(url, tcp, command) is given.",
        *_keys(TARGET_KEYS),
        '.SH "PROBE KEYS"',
        "Each kind's own keys, in its [[target]] tables; those marked so also in [defaults].",
    ]
    for kind in KINDS:
        out += [f'.SS "{escape(kind.name)}"', *_keys(kind.keys, marks_defaults=True)]
    out += ['.SH "ACTUATOR KEYS"',
            "What restarts a target, named by one actuator's key in its [[target]] table (none: "
            "monitored only); those marked so also in [defaults], its top-level keys at the top."]
    for actuator in ACTUATORS:
        out += [f'.SS "{escape(actuator.name)}"',
                *_keys((*actuator.keys, *actuator.top_keys), marks_defaults=True)]
    out += [
        '.SH "POLICY KEYS"',
        "When a target's unit is restarted: in [defaults] or per target.",
        *_keys(POLICY_KEYS),
        ".SH EXAMPLE",
        ".nf",
        ".RS",
        escape(CONFIG_EXAMPLE.rstrip("\n")),
        ".RE",
        ".fi",
    ]
    return "\n".join(out) + "\n" + _CONFIG_STATIC.lstrip("\n")


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--section", type=click.Choice(["1", "5"]), default="1", show_default=True,
              help="1: prober(1), the commands; 5: prober.toml(5), the config file.")
def main(section: str) -> None:
    """Write a man page to standard output: prober(1), from the commands' own help, or
    prober.toml(5), from the config's key table. Its date is $SOURCE_DATE_EPOCH's, else
    today's."""
    from prober.shell.cli import cli

    date = build_date(os.environ)
    sys.stdout.write(render(cli, date) if section == "1" else render_config(date))


if __name__ == "__main__":
    main(prog_name="python3 -m prober.shell.manpage")
