from __future__ import annotations

import click

from vmrt.runtime.context import Context


@click.command("delete", help="delete any resources held by the container")
@click.option("-f", "--force", is_flag=True, help="forcibly delete a running container")
@click.argument("container_id")
@click.pass_obj
def command(ctx: Context, force: bool, container_id: str) -> None:
    from vmrt.runtime.delete import delete

    delete(ctx, container_id, force=force)
