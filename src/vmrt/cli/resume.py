from __future__ import annotations

import click

from vmrt.runtime.context import Context


@click.command("resume", help="resumes all processes that have been previously paused")
@click.argument("container_id")
@click.pass_obj
def command(ctx: Context, container_id: str) -> None:
    from vmrt.runtime.resume import resume

    resume(ctx, container_id)
