from __future__ import annotations

import json

import click

from vmrt.runtime.context import Context


@click.group("pool", help="the warm pool of booted, empty VMs (config key pool_size)")
def command() -> None:
    pass


@command.command("ls", help="list the pool's VMs: booting, ready or dead")
@click.option("-f", "--format", "fmt", type=click.Choice(["table", "json"]), default="table")
@click.pass_obj
def ls(ctx: Context, fmt: str) -> None:
    from vmrt.runtime.pool import entries

    found = [e.to_json() for e in entries(ctx.root)]
    if fmt == "json":
        click.echo(json.dumps(found, indent=2))
        return
    click.echo(f"{'ID':20} {'STATE':8} {'MONITOR':>8} {'QEMU':>8}")
    for e in found:
        click.echo(f"{e['id']:20} {e['state']:8} {e['monitor']:>8} {e['qemu']:>8}")


@command.command("fill", help="start VMs until the pool holds pool_size (and replace stale ones)")
@click.option("--wait", is_flag=True, help="return once every VM of the pool is ready")
@click.pass_obj
def fill(ctx: Context, wait: bool) -> None:
    from vmrt.runtime.pool import fill as fill_pool

    fill_pool(ctx, wait=wait)


@command.command("drain", help="stop every VM of the pool")
@click.pass_obj
def drain(ctx: Context) -> None:
    from vmrt.runtime.pool import drain as drain_pool

    drain_pool(ctx)
