"""Hostile targets (issue 19): whatever a target sends, one `prober` run stays within its
deadline and its memory. Each case is the real command against a real loopback server."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.hostile import (
    REDOS_BODY,
    REDOS_REGEX,
    bomb,
    encoded,
    gzipped,
    measured_prober,
    redirect_with_body,
)
from tests.support.servers import Exchange, Server, answer, health, serve

pytestmark = pytest.mark.timeout(120)

# How far above a healthy probe's peak RSS a hostile one may go: max_body is 64 KiB, so this
# is all slack, yet an unbounded body (a bomb of 128 MiB) cannot hide in it.
RSS_SLACK_KIB = 16 * 1024


@pytest.fixture(scope="module")
def healthy_peak_kib() -> int:
    """The peak RSS of a one-shot `prober probe` of a healthy target."""
    with serve(health()) as server:
        run = measured_prober("probe", server.url("/health"), "--expect-body", "OK")
    assert run.code == 0, run
    return run.peak_kib


@pytest.mark.parametrize(("layers", "expect"), [
    (1, ("--expect-body", "OK")), (2, ("--expect-body", "OK")), (2, ()),
], ids=["gzip", "gzip-gzip", "gzip-gzip-status-only"])
def test_gzip_bomb_is_read_only_up_to_max_body(healthy_peak_kib: int, layers: int,
                                               expect: tuple[str, ...]) -> None:
    """A body marked `Content-Encoding: gzip` (or `gzip, gzip`) although prober asked for
    `identity`, decoding to 128 MiB: decoded only up to max_body, so the probe fails as
    `too-large` holding no more than a healthy one does; a status-only check never decodes
    it and passes."""
    with serve(encoded(bomb(layers), layers)) as server:
        run = measured_prober("probe", server.url("/"), *expect, "--json")
    result = json.loads(run.out)
    if expect:
        assert (run.code, result["failure"]) == (2, "too-large"), run
        assert result["reason"] == 'body over 64KiB and its first 64KiB does not contain "OK"'
    else:
        assert (run.code, result["ok"]) == (0, True), run
    assert run.peak_kib <= healthy_peak_kib + RSS_SLACK_KIB, (run.peak_kib, healthy_peak_kib)


def test_a_body_gzipped_anyway_by_a_proxy_still_passes() -> None:
    """A healthy service behind a proxy that gzips regardless (one layer or two) passes on its
    decoded body."""
    for layers in (1, 2):
        body = b"status: all good"
        for _ in range(layers):
            body = gzipped(body)
        with serve(encoded(body, layers)) as server:
            run = measured_prober("probe", server.url("/"), "--expect-body", "all good")
        assert run.code == 0, run


def test_a_redirect_body_is_never_read(healthy_peak_kib: int) -> None:
    """A redirect whose body is 96 MiB is followed without reading that body."""
    with serve(redirect_with_body()) as server:
        run = measured_prober("probe", server.url("/"), "--follow-redirects",
                              "--expect-body", "OK")
    assert run.code == 0, run
    assert [r.path for r in server.requests] == ["/", "/in"]
    assert run.peak_kib <= healthy_peak_kib + RSS_SLACK_KIB, (run.peak_kib, healthy_peak_kib)


def sets_cookie(exchange: Exchange) -> None:
    """Redirect / to /in, setting a cookie; answer /in 200."""
    if exchange.request.path == "/":
        exchange.respond(302, b"", [("Location", "/in"), ("Set-Cookie", "session=abc; Path=/")])
    else:
        exchange.respond(200, b"OK")


def slow_redirect(exchange: Exchange) -> None:
    """Redirect / to /in after a pause (so another target's redirect comes first); answer
    /in 200."""
    if exchange.request.path == "/" and exchange.wait(0.5):
        exchange.respond(302, b"", [("Location", "/in")])
    else:
        exchange.respond(200, b"OK")


def test_no_cookie_reaches_another_target(tmp_path: Path) -> None:
    """Two targets in one `prober check`, both following redirects: the cookie one's redirect
    sets never reaches the other's, nor the next hop of its own."""
    with serve(sets_cookie) as setter, serve(slow_redirect) as other:
        config = tmp_path / "prober.toml"
        config.write_text(
            '[defaults]\ntimeout = "5s"\nfollow_redirects = true\n'
            f'[[target]]\nname = "setter"\nurl = "{setter.url("/")}"\n'
            f'[[target]]\nname = "other"\nurl = "{other.url("/")}"\n')
        run = measured_prober("check", "--json", env={
            "PROBER_CONFIG": str(config), "PROBER_STATE": str(tmp_path / "state.json")})
    assert run.code == 0, run
    seen = [(r.path, r.header("Cookie")) for r in (*setter.requests, *other.requests)]
    assert seen == [("/", None), ("/in", None), ("/", None), ("/in", None)]


def absolute_redirect(exchange: Exchange) -> None:
    """Redirect / to /in on the host the request named, by an absolute URL; answer /in 200."""
    if exchange.request.path == "/":
        location = f"http://{exchange.request.header('Host')}/in"
        exchange.respond(302, b"", [("Location", location)])
    else:
        exchange.respond(200, b"OK")


@pytest.fixture
def both_loopbacks() -> Iterator[tuple[Server, Server]]:
    """The same handler on 127.0.0.1 and on ::1, on the same port."""
    for _ in range(20):
        with serve(absolute_redirect) as v4:
            try:
                v6 = Server(absolute_redirect, host="::1", port=v4.port)
            except OSError:  # the port is taken on ::1: try another
                continue
            with v6:
                yield v4, v6
            return
    pytest.skip("no port free on both 127.0.0.1 and ::1")


def test_resolve_pins_every_hop_to_the_same_host(
        both_loopbacks: tuple[Server, Server]) -> None:
    """With `resolve = "::1"`, an absolute redirect to the target's own host still goes to
    ::1, as `curl --resolve` keeps it; left unpinned it would reach 127.0.0.1."""
    v4, v6 = both_loopbacks
    url = f"http://127.0.0.1:{v4.port}/"
    run = measured_prober("probe", url, "--resolve", "::1", "--follow-redirects")
    assert run.code == 0, run
    assert [r.path for r in v6.requests] == ["/", "/in"]
    assert v4.requests == []
    assert {r.header("Host") for r in v6.requests} == {f"127.0.0.1:{v4.port}"}


def test_credentials_and_headers_stay_on_the_targets_host() -> None:
    """The URL's user:password (as Basic auth) and the target's `headers` go with every hop on
    its own host, and with none on another host."""
    with serve(answer(), host="127.0.0.2") as elsewhere:
        away = elsewhere.url("/in")

        def there(exchange: Exchange) -> None:
            location = "/next" if exchange.request.path == "/" else away
            exchange.respond(302, b"", [("Location", location)])

        with serve(there) as home:
            url = home.url("/").replace("://", "://admin:hunter2@")
            run = measured_prober("probe", url, "--follow-redirects", "--header",
                                  "X-Token: s3cret")
    assert run.code == 0, run
    sent = [(r.path, r.header("Authorization") is not None, r.header("X-Token"))
            for r in (*home.requests, *elsewhere.requests)]
    assert sent == [("/", True, "s3cret"), ("/next", True, "s3cret"), ("/in", False, None)]


def test_a_regex_that_backtracks_for_ever_is_cut_at_the_timeout(tmp_path: Path) -> None:
    """`expect_body_regex = "(A+)+B"` against 4 KiB of "A" fails as `timeout` at the target's
    timeout, and the other target of the run is probed meanwhile."""
    with serve(answer(200, REDOS_BODY)) as redos, serve(health()) as web:
        config = tmp_path / "prober.toml"
        config.write_text(
            '[defaults]\ntimeout = "1s"\n'
            f'[[target]]\nname = "redos"\nurl = "{redos.url("/")}"\n'
            f'expect_body_regex = "{REDOS_REGEX}"\n'
            f'[[target]]\nname = "web"\nurl = "{web.url("/health")}"\nexpect_body = "OK"\n')
        run = measured_prober("check", "--json", timeout=30, env={
            "PROBER_CONFIG": str(config), "PROBER_STATE": str(tmp_path / "state.json")})
    targets = {t["name"]: t for t in json.loads(run.out)["targets"]}
    assert targets["web"]["ok"] is True, run
    assert (targets["redos"]["failure"], targets["redos"]["reason"]) == \
        ("timeout", "expect_body_regex did not finish within 1s")


def test_an_output_regex_that_backtracks_for_ever_is_cut_at_the_timeout() -> None:
    """`--expect-output-regex "(A+)+B"` against 4 KiB of "A" fails as `timeout` at the
    timeout, not never."""
    run = measured_prober("probe", "--timeout", "1s", "--expect-output-regex", REDOS_REGEX,
                          "--json", "--", "/bin/sh", "-c",
                          f"head -c {len(REDOS_BODY)} /dev/zero | tr '\\0' A", timeout=30)
    result = json.loads(run.out)
    assert (run.code, result["failure"], result["reason"]) == \
        (2, "timeout", "expect_output_regex did not finish within 1s")

