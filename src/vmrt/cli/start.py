from __future__ import annotations

import click

from vmrt.runtime.context import Context


@click.command("start", help="executes the user defined process in a created container")
@click.argument("container_id")
@click.pass_obj
def command(ctx: Context, container_id: str) -> None:
    from vmrt.runtime.start import start

    start(ctx, container_id)
