"""The HTTP probe kind's spec: its keys, their parsing, and the notice of a certificate
about to expire. No httpx here: the config, `validate` and `status` read only this.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from prober.core.keys import (
    Key,
    Option,
    Shape,
    absolute_path,
    boolean,
    choice,
    duration,
    format_duration,
    ip_address,
    regex,
    string,
    url,
)
from prober.core.keys import headers as headers_value
from prober.core.kinds import Invalid
from prober.core.results import ProbeResult
from prober.core.text import redact_url
from prober.probes.shared import DEFAULT_MAX_BODY, MAX_BODY


class Method(StrEnum):
    GET = "GET"
    HEAD = "HEAD"


@dataclass(frozen=True)
class StatusRange:
    """An accepted status: one code (`low == high`) or a class like 2xx."""

    low: int
    high: int

    def matches(self, code: int) -> bool:
        return self.low <= code <= self.high

    def __str__(self) -> str:
        return str(self.low) if self.low == self.high else f"{self.low // 100}xx"


def parse_statuses(value: object) -> tuple[StatusRange, ...]:
    items = value if isinstance(value, list) else [value]
    if not items:
        raise ValueError("must list at least one status")
    ranges = []
    for item in items:
        if isinstance(item, int) and not isinstance(item, bool) and 100 <= item <= 599:
            ranges.append(StatusRange(item, item))
        elif isinstance(item, str) and re.fullmatch(r"[1-5]xx", item.lower()):
            low = int(item[0]) * 100
            ranges.append(StatusRange(low, low + 99))
        elif isinstance(item, str) and item.isascii() and item.isdigit() and \
                100 <= int(item) <= 599:
            ranges.append(StatusRange(int(item), int(item)))
        else:
            raise ValueError(f'{item!r} is not a status code (100-599) or a class like "2xx"')
    return tuple(ranges)


@dataclass(frozen=True)
class HttpProbe:
    """One HTTP(S) request, and what its answer must be."""

    url: str = "http://localhost/"
    unix_socket: str | None = None
    method: Method = Method.GET
    headers: tuple[tuple[str, str], ...] = ()
    resolve: str | None = None
    tls_verify: bool = True
    ca_file: str | None = None
    follow_redirects: bool = False
    expect_status: tuple[StatusRange, ...] = (StatusRange(200, 299),)
    expect_body: str | None = None
    expect_body_regex: str | None = None
    max_body: int = DEFAULT_MAX_BODY
    tls_expiry_warning: float = 14 * 86400.0

    @property
    def endpoint(self) -> str:
        shown = redact_url(self.url)
        return f"{shown} via unix:{self.unix_socket}" if self.unix_socket else shown

    @property
    def reads_certificate(self) -> bool:
        """Whether the peer certificate is read: only a verified one can be, without a
        compiled X.509 parser."""
        return self.tls_verify and self.url.lower().startswith("https:")


def _header_option(values: Sequence[str]) -> dict[str, str] | None:
    if not values:
        return None
    out = {}
    for text in values:
        name, sep, value = text.partition(":")
        if not sep or not name.strip():
            raise ValueError(f'"{text}": expected "Name: value"')
        out[name.strip()] = value.strip()
    return out


KEYS = (
    Key("url", Shape.URL, url, "`http://` or `https://` URL to probe"),
    Key("unix_socket", Shape.PATH, absolute_path,
        "HTTP over this Unix socket (as puma can listen); `url` then gives path and Host "
        "(default `http://localhost/`)", option=Option("--unix-socket", "PATH")),
    Key("method", Shape.CHOICE, choice(Method), "`GET` or `HEAD`", default="GET",
        in_defaults=True, choices=tuple(Method),
        option=Option("--method", "GET|HEAD")),
    Key("headers", Shape.HEADERS, headers_value,
        "table of extra request headers; values never appear in output", default="{}",
        in_defaults=True,
        option=Option("--header", "'NAME: VALUE'", "an extra request header, the flag again "
                      "for more; values never appear in output", multiple=True,
                      convert=_header_option)),
    Key("resolve", Shape.IP, ip_address,
        "connect to this IP but keep the URL's host for Host and TLS SNI/verification "
        "(like `curl --resolve`), for every redirect to that same host too",
        option=Option("--resolve", "IP", "Connect to IP, keep the URL's host (curl-style).")),
    Key("tls_verify", Shape.BOOLEAN, boolean, "verify certificates", default="true",
        in_defaults=True,
        option=Option("--insecure", help="Do not verify TLS certificates.", is_flag=True,
                      convert=lambda on: False if on else None)),
    Key("ca_file", Shape.PATH, absolute_path,
        "PEM file of CA certificates to trust for this target (instead of the system's)",
        in_defaults=True, option=Option("--ca-file", "PATH"), existing_file=True),
    Key("follow_redirects", Shape.BOOLEAN, boolean, "follow redirects, at most 10 (more, or "
        "a loop, fail as `redirect`), never reading their bodies, keeping no cookie; the URL's "
        "user:password and `headers` go to the target's own host only", default="false",
        in_defaults=True,
        option=Option("--follow-redirects", is_flag=True, convert=lambda on: True if on else None)),
    Key("expect_status", Shape.STATUSES, parse_statuses,
        'list of codes and classes: `[200, "3xx"]`', default='["2xx"]', in_defaults=True,
        option=Option("--expect-status", "CODE|NXX", "a code or class the status must be "
                      "(200, 3xx); the flag again for more", multiple=True,
                      convert=lambda values: list(values) or None)),
    Key("expect_body", Shape.STRING, string, "substring the body must contain",
        option=Option("--expect-body", "TEXT")),
    Key("expect_body_regex", Shape.REGEX, regex, "regular expression (Python's `re`) the body "
        "must match; matched in a child process, killed (failing as `timeout`) at the target's "
        "`timeout`",
        option=Option("--expect-body-regex", "REGEX")),
    MAX_BODY,
    Key("tls_expiry_warning", Shape.DURATION, duration(),
        "an HTTPS target whose certificate expires within this long is *warning* (exit 1); "
        'never a restart; `"0s"` disables; only with `tls_verify`', default="14d",
        in_defaults=True, option=Option("--tls-expiry-warning", "DURATION")),
)


def build(values: Mapping[str, Any]) -> HttpProbe:
    spec = HttpProbe(**values)
    if spec.method is Method.HEAD and (spec.expect_body or spec.expect_body_regex):
        key = "expect_body" if spec.expect_body else "expect_body_regex"
        raise Invalid(key, "cannot be checked with method HEAD (no body)")
    return spec


def argument(args: Sequence[str]) -> Mapping[str, Any] | None:
    if len(args) == 1 and args[0].lower().startswith(("http://", "https://")):
        return {"url": args[0]}
    return None


def certificate_notice(spec: HttpProbe, result: ProbeResult, now: float) -> str | None:
    """Why the target is warning because its certificate expires within tls_expiry_warning,
    or None. An expired certificate is already a `tls` failure; this only ever warns."""
    window = spec.tls_expiry_warning
    certificate = result.certificate
    if not window or certificate is None or not result.ok:
        return None
    left = certificate.not_after - now
    if left > window:
        return None
    date = dt.datetime.fromtimestamp(certificate.not_after, dt.UTC).strftime("%Y-%m-%d")
    days = max(0, int(left // 86400))
    return (f"certificate of {certificate.subject} expires on {date}, in {days} "
            f"day{'' if days == 1 else 's'} (tls_expiry_warning "
            f"{format_duration(window)})")
