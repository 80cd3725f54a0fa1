from __future__ import annotations

import click

from vmrt.runtime.context import Context


@click.command("pause", help="pause suspends all processes inside the container")
@click.argument("container_id")
@click.pass_obj
def command(ctx: Context, container_id: str) -> None:
    from vmrt.runtime.pause import pause

    pause(ctx, container_id)
