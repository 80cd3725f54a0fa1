from __future__ import annotations

import click

from vmrt.runtime.context import Context


@click.command("list", help="lists containers started by vmrt with the given root")
@click.option("-f", "--format", "fmt", type=click.Choice(["table", "json"]), default="table")
@click.option("-q", "--quiet", is_flag=True, help="display only container IDs")
@click.pass_obj
def command(ctx: Context, fmt: str, quiet: bool) -> None:
    from vmrt.runtime.state import list_states, render_list

    click.echo(render_list(list_states(ctx), fmt, quiet), nl=False)
