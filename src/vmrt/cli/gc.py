from __future__ import annotations

import click

from vmrt.runtime.context import Context


@click.command("gc", help="remove what a crash or a host reboot left behind under --root")
@click.option("--dry-run", is_flag=True, help="only list the orphans")
@click.pass_obj
def command(ctx: Context, dry_run: bool) -> None:
    from vmrt.runtime.gc import collect

    for orphan in collect(ctx, dry_run=dry_run):
        click.echo(str(orphan))
