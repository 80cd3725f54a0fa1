"""`events`: a container's stats (once, or every interval) and its OOM kills, as runc prints them.

Figures come from the container's cgroup in the guest (`stats_container`).
The stream asks for them every `OOM_POLL_S` (or every interval, if shorter)
to notice a rise of `memory.events`' `oom_kill` promptly, prints a stats
event every interval, and ends once the container has stopped, after one
last look for OOM kills: the OOM killer's victim is often the container's
init, and its cgroup still exists until `delete`.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from typing import Any

from vmrt.errors import InvalidArgumentError, StateTransitionError, VmrtError
from vmrt.monitor.client import MonitorClient
from vmrt.runtime import sandbox as sandboxes
from vmrt.runtime.context import Context
from vmrt.runtime.stats import oom_kills, to_runc
from vmrt.state import status
from vmrt.state.model import ContainerState, Status

OOM_POLL_S = 0.25
Event = dict[str, Any]

_DURATION = re.compile(r"([0-9]*(?:\.[0-9]*)?)(ns|us|µs|ms|s|m|h)")
_UNIT_S = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}


def parse_interval(text: str) -> float:
    """Go's time.ParseDuration ("5s", "250ms", "1m30s"), in seconds, which must be > 0."""
    body = text[1:] if text[:1] in "+-" else text
    total = 0.0
    if body == "0":
        pass
    elif not body or _DURATION.sub("", body) or not all(
            num not in ("", ".") for num, _ in _DURATION.findall(body)):
        raise InvalidArgumentError(f'invalid value "{text}" for flag -interval: parse error')
    else:
        total = sum(float(num) * _UNIT_S[unit] for num, unit in _DURATION.findall(body))
    if text.startswith("-"):
        total = -total
    if total <= 0:
        raise InvalidArgumentError("duration interval must be greater than 0")
    return total


def _require_running(state: ContainerState) -> None:
    if status.current(state) in (Status.STOPPED, Status.CREATING):
        raise StateTransitionError(f"container with id {state.id} is not running")


def _stats_event(container_id: str, raw: dict[str, Any]) -> Event:
    return {"type": "stats", "id": container_id, "data": to_runc(raw)}


def stats(ctx: Context, container_id: str) -> Event:
    """One stats event (`events --stats`)."""
    state = ctx.store.load_container(container_id)
    _require_running(state)
    with sandboxes.monitor(ctx, state.sandbox) as mon:
        return _stats_event(container_id, mon.call("stats_container", id=container_id))


def stream(ctx: Context, container_id: str, interval: float,
           emit: Callable[[Event], None]) -> None:
    """Stats every `interval` and OOM events as they happen, until the container stops."""
    state = ctx.store.load_container(container_id)
    _require_running(state)
    with sandboxes.monitor(ctx, state.sandbox) as mon:
        seen = oom_kills(mon.call("stats_container", id=container_id))
        next_stats = time.monotonic() + interval
        while True:
            time.sleep(max(0.0, min(OOM_POLL_S, interval, next_stats - time.monotonic())))
            stopped = status.current(state) is Status.STOPPED
            raw = _poll(mon, container_id)
            if raw is None:
                return  # the container (or its VM) is gone
            kills = oom_kills(raw)
            if kills > seen:
                emit({"type": "oom", "id": container_id})
            seen = max(seen, kills)
            if stopped:
                return
            if time.monotonic() >= next_stats:
                emit(_stats_event(container_id, raw))
                # One event per interval; a late one does not bring a burst after it.
                next_stats = max(next_stats + interval, time.monotonic())


def _poll(mon: MonitorClient, container_id: str) -> dict[str, Any] | None:
    try:
        return mon.call("stats_container", id=container_id)
    except VmrtError:
        return None
