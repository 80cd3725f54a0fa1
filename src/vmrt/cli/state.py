from __future__ import annotations

import json

import click

from vmrt.runtime.context import Context


@click.command("state", help="output the state of a container")
@click.argument("container_id")
@click.pass_obj
def command(ctx: Context, container_id: str) -> None:
    from vmrt.runtime.state import state

    click.echo(json.dumps(state(ctx, container_id), indent=2))
