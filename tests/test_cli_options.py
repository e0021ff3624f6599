"""Options where people type them, durations as systemd spells them, and shell completion:
through the real `prober` command."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from prober.core.errors import UsageError
from prober.shell.cli import Context, cli
from tests.support.servers import refused_port
from tests.test_cli import Prober

REPO = Path(__file__).parent.parent


@pytest.fixture
def prober(tmp_path: Path) -> Prober:
    """A prober whose config is at other.toml, not where $PROBER_CONFIG points."""
    (tmp_path / "other.toml").write_text(
        # confirm_interval 0s: one failed run, not confirmed down within the run (exit 1)
        '[defaults]\nconfirm_interval = "0s"\n'
        f'[[target]]\nname = "web"\nurl = "http://127.0.0.1:{refused_port()}/"\ntimeout = "1s"\n')
    return Prober(tmp_path)


WARNED = "prober: warning: target=web: probe failed"


@pytest.mark.parametrize(("argv", "code", "warned"), [
    ("--config {tmp}/other.toml check --dry-run", 1, True),
    ("check --config {tmp}/other.toml --dry-run", 1, True),
    ("check --dry-run --config={tmp}/other.toml", 1, True),
    ("--config {tmp}/other.toml check --config {tmp}/other.toml", 1, True),
    ("-qq check --config {tmp}/other.toml", 1, False),
    ("check -qq --config {tmp}/other.toml", 1, False),
    ("--config {tmp}/other.toml check -qq", 1, False),
    ("-q check -q --config {tmp}/other.toml", 1, False),
    ("-q check --config {tmp}/other.toml", 1, True),
    ("check --quiet --config {tmp}/other.toml", 1, True),
    ("-v check --config {tmp}/other.toml", 1, True),
    ("check --verbose --debug --config {tmp}/other.toml", 1, True),
    ("--state {tmp}/elsewhere.json check --config {tmp}/other.toml", 1, True),
    ("--config {tmp}/other.toml validate", 0, False),
    ("validate --config {tmp}/other.toml -q", 0, False),
    ("--config {tmp}/other.toml --state {tmp}/elsewhere.json status", 3, False),
    ("status --state {tmp}/elsewhere.json --config {tmp}/other.toml -v", 3, False),
    ("-q probe tcp://127.0.0.1:1", 2, False),
    ("probe -q tcp://127.0.0.1:1", 2, False),
    ("--config {tmp}/other.toml check --config {tmp}/missing.toml", 3, False),
    ("--config {tmp}/missing.toml check --config {tmp}/other.toml", 3, False),
], ids=lambda value: value if isinstance(value, str) else None)
def test_options_mean_the_same_before_and_after_the_subcommand(
        prober: Prober, argv: str, code: int, warned: bool) -> None:
    """Every option of the group is taken after the subcommand too, with the same meaning; a
    path given both ways must be the same path."""
    run = prober(*shlex.split(argv.format(tmp=prober.tmp)),
                 env={"PROBER_CONFIG": str(prober.tmp / "absent.toml")})
    assert run.code == code, run
    assert "No such option" not in run.err and "Traceback" not in run.err
    assert (WARNED in run.err) == warned, run.err
    if code == 3 and "status" in argv:
        assert run.err.startswith("prober: error: no run recorded yet"), run.err
    elif code == 3:
        assert run.err == ("prober: error: --config given twice: "
                           f"{argv.split()[1].format(tmp=prober.tmp)} before check, "
                           f"{argv.rsplit(maxsplit=1)[-1].format(tmp=prober.tmp)} after it "
                           "(hint: give --config once)\n")


@pytest.mark.parametrize(("before", "after", "joined"), [
    (Context(), Context(), Context()),
    (Context(quiet=1), Context(quiet=1), Context(quiet=2)),
    (Context(verbose=1), Context(quiet=2), Context(verbose=1, quiet=2)),
    (Context(debug=True), Context(), Context(debug=True)),
    (Context(), Context(insecure_config=True), Context(insecure_config=True)),
    (Context(config_file="/a"), Context(), Context(config_file="/a")),
    (Context(), Context(state_file="/s"), Context(state_file="/s")),
    (Context(config_file="/a"), Context(config_file="/a"), Context(config_file="/a")),
    (Context(config_file=""), Context(), Context(config_file="")),
], ids=["none", "counts-add", "both-counts", "flag-before", "flag-after", "path-before",
        "path-after", "same-path", "empty-path"])
def test_options_of_both_positions_join(before: Context, after: Context,
                                        joined: Context) -> None:
    """Counts add up, flags hold if given either way, a path is taken from where it is given."""
    assert before.joined(after, "check") == joined


def test_a_path_given_both_ways_differently_is_refused() -> None:
    """`--config /a check --config /b`: which one was meant is not guessed."""
    with pytest.raises(UsageError, match="--config given twice: /a before check, /b after it"):
        Context(config_file="/a").joined(Context(config_file="/b"), "check")


def test_state_named_before_the_subcommand_is_used(prober: Prober) -> None:
    """`prober --state X check` writes X, and `prober status --state X` reads it back."""
    elsewhere = prober.tmp / "elsewhere.json"
    assert prober("--state", str(elsewhere), "check", "--config",
                  str(prober.tmp / "other.toml")).code == 1
    assert elsewhere.exists() and not prober.state.exists()
    status = prober("status", "--json", "--state", str(elsewhere), "--config",
                    str(prober.tmp / "other.toml"))
    assert status.json()["targets"][0]["consecutive_failures"] == 1


@pytest.mark.parametrize("position", ["before", "after"])
def test_insecure_config_in_either_position(prober: Prober, position: str) -> None:
    """--insecure-config accepts a world-writable config before or after the subcommand."""
    config = prober.tmp / "other.toml"
    config.chmod(0o666)
    assert prober("validate", "--config", str(config)).code == 3
    args = (["--insecure-config", "validate"] if position == "before"
            else ["validate", "--insecure-config"])
    run = prober(*args, "--config", str(config))
    assert run.code == 0, run


def _shipped_command_lines() -> list[tuple[str, list[str]]]:
    """Every prober command line the shipped cron file and units run, without the program."""
    lines = []
    cron = (REPO / "units" / "prober.cron").read_text()
    for command in re.findall(r"&& (prober [^>&]*)", cron):
        lines.append(("prober.cron", shlex.split(command)[1:]))
    for unit in sorted((REPO / "units").glob("*.service")):
        for exec_start in re.findall(r"^ExecStart=(\S*prober\b.*)$", unit.read_text(), re.M):
            lines.append((unit.name, shlex.split(exec_start)[1:]))
    return lines


def test_shipped_command_lines_are_found() -> None:
    """The cron line and the three services' ExecStart= are all read by the next test."""
    assert sorted(name for name, _ in _shipped_command_lines()) == [
        "prober-polkit.service", "prober-watch.service", "prober.cron", "prober.service"]


@pytest.mark.parametrize(("where", "args"), _shipped_command_lines(),
                         ids=lambda value: value if isinstance(value, str) else None)
def test_shipped_command_lines_parse(where: str, args: list[str]) -> None:
    """prober's own click parser takes each shipped command line as it is written."""
    at = next(i for i, arg in enumerate(args) if arg in cli.commands)
    assert args[at] in ("check", "watch", "polkit-rule"), where
    root = cli.make_context("prober", args[:at])
    cli.commands[args[at]].make_context(args[at], args[at + 1:], parent=root)


def test_the_cron_line_runs(prober: Prober) -> None:
    """The cron fallback's command line, run as written: a check, quiet, that does not fail on
    its options."""
    (_, args), = [line for line in _shipped_command_lines() if line[0] == "prober.cron"]
    run = prober(*args, env={"PROBER_CONFIG": str(prober.tmp / "other.toml")})
    assert run.code == 1 and run.err.startswith(WARNED), run
    assert "error" not in run.err, run  # -q: warnings and errors only, and no error
    assert prober.state.exists()


@pytest.mark.parametrize(("args", "message"), [
    (["--if-stale", "soon"], '--if-stale: "soon" is not a duration (e.g. "30", "500ms"'),
    (["--if-stale", "-1"], '--if-stale: "-1" is not a duration'),
])
def test_check_duration_options_name_the_flag(prober: Prober, args: list[str],
                                              message: str) -> None:
    """A bad duration option is one line naming the flag the user typed."""
    run = prober("check", "--config", str(prober.tmp / "other.toml"), *args)
    assert run.code == 3 and run.err.startswith("prober: error: ") and message in run.err
    assert run.err.count("\n") == 1


@pytest.mark.parametrize("timeout", ["5", "5sec", "2min", "1 second", "500msec", "1min 5s"])
def test_probe_takes_systemd_durations(prober: Prober, timeout: str) -> None:
    """`prober probe --timeout` reads the grammar of the config: systemd spans, plain seconds."""
    run = prober("probe", f"tcp://127.0.0.1:{refused_port()}", "--timeout", timeout)
    assert run.code == 2 and "connection refused" in run.out, run


@pytest.mark.parametrize("interval", ['"30"', "30", '"30sec"', '"0.5min"'])
def test_config_takes_systemd_durations(prober: Prober, interval: str) -> None:
    """`interval = "30"` and `interval = 30` alike, as systemd's spans: validate accepts them."""
    prober.write(f"interval = {interval}\n" + (prober.tmp / "other.toml").read_text())
    run = prober("validate")
    assert run.code == 0, run


# --- completion ----------------------------------------------------------------------------------

@pytest.mark.parametrize("shell", ["bash", "zsh", "fish"])
def test_completion_script_is_produced(prober: Prober, shell: str) -> None:
    """`_PROBER_COMPLETE={shell}_source prober` prints the shell's script, no internal error."""
    run = prober(env={"_PROBER_COMPLETE": f"{shell}_source"})
    assert run.code == 0 and run.err == "", run
    assert "_PROBER_COMPLETE" in run.out and f"{shell}_complete" in run.out


@pytest.mark.parametrize(("words", "cword", "expected"), [
    ("prober ch", 1, ["check"]),
    ("prober p", 1, ["pause", "polkit-rule", "probe"]),
    ("prober check --dr", 2, ["--dry-run"]),
    ("prober -q check --form", 3, ["--format"]),
    ("prober check --format ", 3, ["text", "json", "nagios"]),
])
def test_click_completes(prober: Prober, words: str, cword: int, expected: list[str]) -> None:
    """click's completion protocol, as the bash script drives it, completes prober's words."""
    run = prober(env={"_PROBER_COMPLETE": "bash_complete", "COMP_WORDS": words,
                      "COMP_CWORD": str(cword)})
    assert run.code == 0 and run.err == "", run
    assert [line.split(",", 1)[1] for line in run.out.splitlines()] == expected


def test_bash_completes_with_the_script_sourced(prober: Prober, tmp_path: Path) -> None:
    """bash, with the generated script sourced, fills COMPREPLY from the real prober."""
    script = tmp_path / "completion.bash"
    script.write_text(prober(env={"_PROBER_COMPLETE": "bash_source"}).out)
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    launcher = bin_dir / "prober"
    launcher.write_text(f'#!/bin/sh\nexec {shlex.quote(sys.executable)} -m prober "$@"\n')
    launcher.chmod(0o755)
    done = subprocess.run(
        ["bash", "-c", f". {shlex.quote(str(script))}; COMP_WORDS=(prober ch); COMP_CWORD=1; "
         '_prober_completion prober; printf "%s\\n" "${COMPREPLY[@]}"'],
        capture_output=True, text=True, timeout=60, check=False,
        env={**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}"})
    assert done.returncode == 0 and done.stdout.split() == ["check"], done
