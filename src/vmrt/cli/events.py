from __future__ import annotations

import contextlib
import json
import sys
from typing import Any

import click

from vmrt.runtime.context import Context


@click.command("events", help="display container events such as OOM notifications, cpu, "
               "memory, and IO usage statistics (read from the container's cgroup in the VM)")
@click.option("--interval", default="5s", help="set the stats collection interval")
@click.option("--stats", "once", is_flag=True, help="display the container's stats then exit")
@click.argument("container_id")
@click.pass_obj
def command(ctx: Context, interval: str, once: bool, container_id: str) -> None:
    from vmrt.runtime import events

    seconds = events.parse_interval(interval)
    if once:
        _emit(events.stats(ctx, container_id))
        return
    with contextlib.suppress(KeyboardInterrupt):  # ^C ends the stream, as runc's
        events.stream(ctx, container_id, seconds, _emit)


def _emit(event: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(event, separators=(",", ":")) + "\n")
    sys.stdout.flush()  # a reader waits for each event as it comes (a pipe is block-buffered)
