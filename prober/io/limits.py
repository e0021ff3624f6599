"""The process's soft limit on open files, raised where a run's probes or the page need room."""

from __future__ import annotations

USUAL_SOFT_LIMIT = 1024  # systemd's default soft limit on open files for a service


def raise_open_files(wanted: int) -> tuple[int, int] | None:
    """Raise the soft limit on open files to `wanted`, or as far as the hard limit allows:
    (before, after) when it was raised, None when it was that high already. The kernel's
    refusal propagates (OSError, ValueError): what it costs is the caller's to say."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY or soft >= wanted:
        return None
    raised = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    resource.setrlimit(resource.RLIMIT_NOFILE, (raised, hard))
    return soft, raised
