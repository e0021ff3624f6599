"""prober(1), written from the click commands' own help:
`python3 -m prober.shell.manpage > prober.1`.

The Debian package builds its man page with this, so the page documents exactly the commands
and options of the code it ships. The date is $SOURCE_DATE_EPOCH's (reproducible builds), else
today's.
"""

from __future__ import annotations

import datetime
import inspect
import os
import sys

import click

from prober import __version__

SUMMARY = "restart systemd services that are up but not answering"

DESCRIPTION = """\
prober probes endpoints over HTTP, TCP or a Unix socket, or runs a check command, counts
failures across runs, works out which layer of a stack is broken, and asks systemd over D-Bus
to restart that unit, with grace periods, backoff, a restart budget and a dry run. It never
starts a unit that is not active. The README (in /usr/share/doc/prober/) describes the config
and the restart policy.
"""

_STATIC = r"""
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


def main() -> None:
    from prober.shell.cli import cli

    sys.stdout.write(render(cli, build_date(os.environ)))


if __name__ == "__main__":
    main()
