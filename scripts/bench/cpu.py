"""CPU time of the processes that serve a run, read from /proc (Linux): the gunicorn
workers, and PostgreSQL when the benchmark started its own."""

from __future__ import annotations

import os
import time
from pathlib import Path

_TICK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def tree_seconds(pid: int | None) -> float | None:
    """User + system CPU seconds of `pid` and its live descendants (with the children
    they have reaped); None off Linux or when `pid` is gone."""
    if pid is None or not Path(f"/proc/{pid}").is_dir():
        return None
    total, todo = 0.0, [pid]
    while todo:
        current = todo.pop()
        try:
            fields = Path(f"/proc/{current}/stat").read_text().rsplit(")", 1)[1].split()
            # After the name: state is field 3, utime..cstime are fields 14 to 17.
            total += sum(int(x) for x in fields[11:15]) / _TICK
            for task in Path(f"/proc/{current}/task").iterdir():
                todo += [int(child) for child in (task / "children").read_text().split()]
        except (OSError, ValueError, IndexError):  # exited meanwhile
            continue
    return total


def run_seconds(pgdata: Path | None) -> float | None:
    """CPU seconds used so far by this process and by the embedded PostgreSQL of
    `pgdata` (postmaster, backends, background processes); None on an external
    database (`pgdata` None), whose processes are not ours to read."""
    database = tree_seconds(postmaster_pid(pgdata)) if pgdata is not None else None
    return None if database is None else time.process_time() + database


def postmaster_pid(pgdata: Path) -> int | None:
    """The embedded PostgreSQL's postmaster (first line of postmaster.pid), if any."""
    try:
        return int((pgdata / "postmaster.pid").read_text().split("\n", 1)[0])
    except (OSError, ValueError):
        return None


class CpuMeter:
    """CPU seconds per request of the web workers and of PostgreSQL, summed over the
    runs made through `measure()`."""

    def __init__(self, web_pid: int, pg_pid: int | None):
        self.pids = {"web": web_pid, "pg": pg_pid}
        self.seconds = {"web": 0.0, "pg": 0.0}
        self.requests = 0

    def measure(self, run, *args, **kwargs):
        """`run(*args, **kwargs)`, which returns a LoadResult; count its CPU and requests."""
        before = {part: tree_seconds(pid) for part, pid in self.pids.items()}
        result = run(*args, **kwargs)
        for part, pid in self.pids.items():
            after = tree_seconds(pid)
            if before[part] is None or after is None:
                self.pids[part] = None  # unknown from now on
            else:
                self.seconds[part] += after - before[part]
        self.requests += result.requests
        return result

    def per_request(self, part: str) -> float | None:
        """Microseconds of CPU per request, None when not measurable here."""
        if self.pids[part] is None or not self.requests:
            return None
        return self.seconds[part] / self.requests * 1e6
