"""State files: atomic, reserved once, status derived from live processes."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from vmrt.errors import ExistsError, NotFoundError
from vmrt.paths import Root
from vmrt.state import status
from vmrt.state.model import ContainerState, ProcessRef, Status
from vmrt.state.store import Store
from vmrt.util.proc import start_time


def _state(cid: str, st: Status, shim: ProcessRef | None) -> ContainerState:
    return ContainerState(id=cid, bundle="/b", sandbox=cid, role="standalone", status=st,
                          created="now", shim=shim)


def test_reserve_is_exclusive(tmp_path: Path) -> None:
    store = Store(Root(tmp_path / "root"))
    store.reserve_container("a")
    store.save_container(_state("a", Status.CREATED, None))
    with pytest.raises(ExistsError, match="container with given ID already exists"):
        store.reserve_container("a")
    assert oct((tmp_path / "root").stat().st_mode & 0o777) == "0o700"


def test_abandoned_reservation_is_reclaimed(tmp_path: Path) -> None:
    store = Store(Root(tmp_path / "root"))
    store.reserve_container("a")  # a create that died before writing any state
    store.reserve_container("a")


def test_round_trip_and_missing(tmp_path: Path) -> None:
    store = Store(Root(tmp_path))
    store.reserve_container("a")
    me = ProcessRef(os.getpid(), start_time(os.getpid()) or 0)
    store.save_container(_state("a", Status.RUNNING, me))
    assert store.load_container("a").shim == me
    with pytest.raises(NotFoundError, match="container does not exist"):
        store.load_container("b")


def test_status_follows_the_shim() -> None:
    proc = subprocess.Popen(["sleep", "30"])
    ref = ProcessRef(proc.pid, start_time(proc.pid) or 0)
    assert status.current(_state("a", Status.RUNNING, ref)) is Status.RUNNING
    # a recycled pid with another start time is not our shim
    assert status.current(_state("a", Status.RUNNING, ProcessRef(proc.pid, 1))) is Status.STOPPED
    proc.kill()
    proc.wait()
    assert status.current(_state("a", Status.RUNNING, ref)) is Status.STOPPED
