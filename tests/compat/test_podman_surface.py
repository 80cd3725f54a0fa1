"""podman 4.3 beyond run/stop/rm: top, pause/unpause, stats, update (the runtime under test).

Same private podman as test_podman.py (its fixtures). What podman 4.3 asks of
the runtime here: `pause`/`resume` and `update --resources=<file>`; `top`
with ps(1) options runs `ps` in the container through `exec`; `stats` and
`top` without options read the host's cgroup and /proc of the container's pid
(for vmrt the shim, so those show host figures: see docs/runc-surface.md).
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import test_podman
from test_podman import IMAGE, Podman, cidfile, remember

from helpers.procs import wait_until

pytestmark = pytest.mark.compat

# test_podman.py's fixtures, by name: a private podman per module, a clean slate per test.
podman = test_podman.podman
pm = test_podman.pm


@contextlib.contextmanager
def running(pm: Podman, tmp_path: Path, *cmd: str, extra: tuple[str, ...] = ()) -> Iterator[str]:
    """`podman run -d`; the container goes (rm --force) whatever the test does."""
    cf = cidfile(tmp_path)
    try:
        pm.ok(*pm.run_args("-d", "--cidfile", str(cf), *extra), IMAGE, *cmd)
        yield remember(pm, cf)
    finally:
        if cf.exists():
            pm("rm", "--force", "--time", "0", cf.read_text().strip())


def log_lines(pm: Podman, cid: str) -> list[str]:
    return pm.ok("logs", cid).stdout.splitlines()


def test_top_with_ps_options(pm: Podman, tmp_path: Path) -> None:
    with running(pm, tmp_path, "sh", "-c", "sleep 1000 & sleep 2000") as cid:
        # Options psgo does not know make podman run ps(1) in the container (exec).
        res = pm.ok("top", cid, "-eo", "pid,comm")
        lines = res.stdout.splitlines()
        assert lines[0].split() == ["PID", "COMMAND"], res.stdout
        assert [line.split()[1] for line in lines[1:]].count("sleep") == 2, res.stdout


def test_pause_and_unpause(pm: Podman, tmp_path: Path) -> None:
    counter = "i=0; while :; do i=$((i+1)); echo $i; sleep 0.1; done"
    with running(pm, tmp_path, "sh", "-c", counter) as cid:
        assert wait_until(lambda: len(log_lines(pm, cid)) >= 3, 60)
        pm.ok("pause", cid)
        assert pm.inspect(cid)["State"]["Status"] == "paused"
        assert "Paused" in pm.ok("ps", "-a", "--filter", f"id={cid}", "--format",
                                 "{{.Status}}").stdout
        frozen = len(log_lines(pm, cid))
        time.sleep(1.0)
        assert len(log_lines(pm, cid)) == frozen, "a paused container went on printing"

        pm.ok("unpause", cid)
        assert pm.inspect(cid)["State"]["Status"] == "running"
        assert wait_until(lambda: len(log_lines(pm, cid)) > frozen + 2, 30)


def test_stats_no_stream_prints_figures(pm: Podman, tmp_path: Path) -> None:
    with running(pm, tmp_path, "sleep", "1000") as cid:
        res = pm.ok("stats", "--no-stream", "--format", "json", cid)
        rows = json.loads(res.stdout)
        assert len(rows) == 1 and cid.startswith(rows[0]["id"]), rows
        row = rows[0]
        assert int(row["pids"]) > 0, row
        assert row["mem_usage"].split("/")[0].strip() not in ("", "0B"), row
        table = pm.ok("stats", "--no-stream", cid).stdout.splitlines()
        assert table[0].split()[:2] == ["ID", "NAME"] and len(table) == 2, table


def test_update_memory_reaches_the_containers_cgroup(pm: Podman, tmp_path: Path) -> None:
    # The container reads its own cgroup's limit (cgroup v2 in a vmrt guest; runc on a
    # v1 host: the memory controller's file) twice a second.
    script = ("while :; do cat /sys/fs/cgroup/memory.max 2>/dev/null "
              "|| cat /sys/fs/cgroup/memory/memory.limit_in_bytes; sleep 0.5; done")
    with running(pm, tmp_path, "sh", "-c", script, extra=("--cgroupns", "private")) as cid:
        assert wait_until(lambda: bool(log_lines(pm, cid)), 60)
        assert log_lines(pm, cid)[-1] in ("max", str(2**63 - 4096)), log_lines(pm, cid)
        pm.ok("update", "--memory", "64m", cid)
        assert wait_until(lambda: log_lines(pm, cid)[-1] == str(64 << 20), 30), log_lines(pm, cid)
