from __future__ import annotations

import json

import click

from vmrt.runtime.context import Context


@click.command("ps", help="ps displays the processes running inside a container (guest pids)",
               context_settings={"ignore_unknown_options": True,
                                 "allow_interspersed_args": False})
@click.option("-f", "--format", "fmt", default="table", help="select one of: table or json")
@click.argument("container_id")
@click.argument("ps_args", nargs=-1, type=click.UNPROCESSED)
@click.pass_obj
def command(ctx: Context, fmt: str, container_id: str, ps_args: tuple[str, ...]) -> None:
    from vmrt.errors import InvalidArgumentError
    from vmrt.runtime.ps import DEFAULT_PS_ARGS, filter_table, processes

    if fmt not in ("table", "json"):
        ctx.store.load_container(container_id)  # runc: an unknown id is told first
        raise InvalidArgumentError("invalid format option")
    if fmt == "json":
        found = processes(ctx, container_id, None)
        click.echo(json.dumps(list(found.pids) or None))  # runc prints null for none
        return
    found = processes(ctx, container_id, ps_args or DEFAULT_PS_ARGS)
    if found.table is not None:
        for line in filter_table(found.table, found.pids):
            click.echo(line)
