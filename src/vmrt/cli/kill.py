from __future__ import annotations

import click

from vmrt.runtime.context import Context


@click.command("kill", help="kill sends the specified signal (default: SIGTERM) to the container")
@click.option("-a", "--all", "all_processes", is_flag=True, help="send to all processes")
@click.argument("container_id")
@click.argument("signal", default="SIGTERM")
@click.pass_obj
def command(ctx: Context, all_processes: bool, container_id: str, signal: str) -> None:
    from vmrt.runtime.kill import kill, parse_signal

    kill(ctx, container_id, parse_signal(signal), all_processes=all_processes)
