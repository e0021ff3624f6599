"""The Prometheus exposition: the same series on `/metrics` and in the textfile.

It comes from `prometheus_client`: a collector renders one `Snapshot` into metric families, in a
registry of its own (no process or platform collectors, nothing global). Importing this module
loads prometheus_client, so the healthy `check` imports it only when a textfile is configured.

Per target, with the labels `target`, `unit` and `container` (`""` where none), for the
targets the state knows (every target from its first run on): `prober_probe_success`,
`prober_probe_duration_seconds`, `prober_consecutive_failures`, `prober_target_down`,
`prober_restarts_total`, `prober_given_up`, `prober_paused`, `prober_target_prober_fault` and,
for targets whose last result has a verified certificate,
`prober_tls_not_after_timestamp_seconds`. For the host and the run:
`prober_last_run_timestamp_seconds`, `prober_interval_seconds`, `prober_run_deadline_seconds`,
`prober_run_status`, `prober_memory_pressure_some_avg10` and
`prober_pressure_threshold_percent`; for the watcher, `prober_config_last_reload_successful`
and `prober_config_last_reload_success_timestamp_seconds` (Prometheus's own names).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.registry import Collector, CollectorRegistry

from prober.core.actuator import restarted_as
from prober.core.errors import StateError
from prober.core.results import ProbeResult
from prober.core.runs import Snapshot, pressure_threshold
from prober.core.text import os_reason
from prober.core.tracker import Health, TargetState
from prober.core.view import TargetView, views
from prober.io.files import write_atomically

__all__ = ["CONTENT_TYPE", "exposition", "families", "write_textfile"]

CONTENT_TYPE = CONTENT_TYPE_LATEST  # of `exposition()`'s bytes, for `/metrics`
TEXTFILE_MODE = 0o644  # node_exporter runs as another user, whatever the unit's UMask=
LABELS = ("target", "unit", "container")

HELP = {
    "prober_probe_success": "1 if the target's last probe passed, 0 if it failed.",
    "prober_probe_duration_seconds": "How long the target's last probe took until its answer "
                                     "was judged, in seconds.",
    "prober_consecutive_failures": "Runs in a row in which the target failed; 0 once it "
                                   "passes (a paused target's failures do not count).",
    "prober_target_down": "1 while the target is down: it failed failure_threshold runs in a "
                          "row and has not recovered.",
    "prober_restarts": "Restarts of the target's unit that prober asked systemd for.",
    "prober_given_up": "1 when prober has given up restarting the target (max_restarts within "
                       "restart_window spent) until it passes again or is reset.",
    "prober_paused": "1 while an operator's pause (prober pause) holds: probed and reported, "
                     "never restarted.",
    "prober_target_prober_fault": "1 while prober cannot judge the target through its own "
                                  "fault (a file its config names is missing or unsafe): the "
                                  "admin's to fix; never counted, never restarted.",
    "prober_tls_not_after_timestamp_seconds": "When the verified TLS certificate of the "
                                              "target expires, in seconds since the epoch.",
    "prober_last_run_timestamp_seconds": "When prober's last run ended, in seconds since the "
                                         "epoch.",
    "prober_interval_seconds": "The config's interval: time between the starts of two runs of "
                               "prober watch (the shipped timer's period too).",
    "prober_run_deadline_seconds": "The longest one run may take under the config: the "
                                   "slowest probe budget + confirmations + restart_timeout + "
                                   "verify_timeout.",
    "prober_run_status": "The last run's status as a Nagios exit code: 0 ok, 1 warning, "
                         "2 critical, 3 unknown.",
    "prober_memory_pressure_some_avg10": "Host memory pressure (PSI): percent of the last 10 s "
                                         "in which some task stalled waiting for memory.",
    "prober_pressure_threshold_percent": "The config's default pressure_threshold: memory "
                                         "some avg10 (percent) from which restarts are held "
                                         "back; 0 disables.",
    "prober_config_last_reload_successful": "1 if the watcher's last config reload loaded, 0 if "
                                            "it was rejected (the watcher runs on the config "
                                            "it had).",
    "prober_config_last_reload_success_timestamp_seconds": "When the watcher last loaded its "
                                                           "config, in seconds since the "
                                                           "epoch.",
}


@dataclass(frozen=True)
class _Row:
    """One target as the per-target series see it."""

    view: TargetView

    @property
    def state(self) -> TargetState:
        return self.view.state

    @property
    def result(self) -> ProbeResult | None:
        """This run's, when the snapshot's report has the target."""
        return None if self.view.item is None else self.view.item.result

    @property
    def labels(self) -> list[str]:
        names = restarted_as(self.view.target)
        return [self.view.target.name, names.get("unit") or "", names.get("container") or ""]

    @property
    def success(self) -> bool | None:
        return self.state.last_ok if self.result is None else self.result.ok

    @property
    def duration(self) -> float | None:
        if self.result is not None:
            return self.result.latency
        latency_ms = self.state.last_latency_ms
        return None if latency_ms is None else latency_ms / 1000


def _rows(snapshot: Snapshot) -> list[_Row]:
    return [_Row(view) for view in views(snapshot)
            if view.item is not None or view.target.name in snapshot.state.targets]


def _gauge(name: str, value: float | None = None) -> GaugeMetricFamily:
    if value is None:
        return GaugeMetricFamily(name, HELP[name], labels=LABELS)
    return GaugeMetricFamily(name, HELP[name], value=value)


def _target_families(snapshot: Snapshot) -> Iterator[Metric]:
    rows = _rows(snapshot)
    success = _gauge("prober_probe_success")
    duration = _gauge("prober_probe_duration_seconds")
    failures = _gauge("prober_consecutive_failures")
    down = _gauge("prober_target_down")
    restarts = CounterMetricFamily("prober_restarts", HELP["prober_restarts"], labels=LABELS)
    given_up = _gauge("prober_given_up")
    paused = _gauge("prober_paused")
    fault = _gauge("prober_target_prober_fault")
    certificate = _gauge("prober_tls_not_after_timestamp_seconds")
    for row in rows:
        state, labels = row.state, row.labels
        if row.success is not None:
            success.add_metric(labels, 1 if row.success else 0)
        if row.duration is not None:
            duration.add_metric(labels, row.duration)
        failures.add_metric(labels, state.consecutive_failures)
        down.add_metric(labels, 1 if state.health is Health.DOWN else 0)
        restarts.add_metric(labels, state.restarts_total)
        given_up.add_metric(labels, 1 if row.view.given_up else 0)
        paused.add_metric(labels, 1 if row.view.paused else 0)
        fault.add_metric(labels, 1 if row.view.prober_fault else 0)
        if row.result is not None and row.result.certificate is not None:
            certificate.add_metric(labels, row.result.certificate.not_after)
    yield from (success, duration, failures, down, restarts, given_up, paused, fault)
    if certificate.samples:
        yield certificate


def _run_families(snapshot: Snapshot) -> Iterator[Metric]:
    config, report = snapshot.config, snapshot.report
    last_run = snapshot.state.updated_at if report is None else report.ended_at
    if last_run is not None:
        yield _gauge("prober_last_run_timestamp_seconds", last_run)
    yield _gauge("prober_interval_seconds", config.interval)
    yield _gauge("prober_run_deadline_seconds", config.run_deadline)
    if report is not None:
        yield _gauge("prober_run_status", report.status.exit_code)
        if report.pressure is not None:
            yield _gauge("prober_memory_pressure_some_avg10", report.pressure.some_avg10)
    yield _gauge("prober_pressure_threshold_percent", pressure_threshold(config))
    if snapshot.reload is not None:
        yield _gauge("prober_config_last_reload_successful",
                     1 if snapshot.reload.successful else 0)
        yield _gauge("prober_config_last_reload_success_timestamp_seconds",
                     snapshot.reload.last_success_at)


def families(snapshot: Snapshot) -> list[Metric]:
    """The metric families of `snapshot`, in exposition order."""
    return [*_target_families(snapshot), *_run_families(snapshot)]


class _SnapshotCollector(Collector):
    def __init__(self, snapshot: Snapshot) -> None:
        self.snapshot = snapshot

    def collect(self) -> Iterator[Metric]:
        return iter(families(self.snapshot))


def exposition(snapshot: Snapshot) -> bytes:
    """The Prometheus text exposition of `snapshot` (content type `CONTENT_TYPE`)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_SnapshotCollector(snapshot))
    return bytes(generate_latest(registry))


def write_textfile(path: str, snapshot: Snapshot) -> None:
    """Write the exposition for node_exporter's textfile collector: atomically (it never reads
    half a file) and readable by others (mode 0644 whatever the umask)."""
    try:
        write_atomically(Path(path), exposition(snapshot), mode=TEXTFILE_MODE, durable=False)
    except OSError as exc:
        raise StateError(f"{path}: cannot write the metrics file: {os_reason(exc)}") from None
