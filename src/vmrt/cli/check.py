from __future__ import annotations

import click

from vmrt.runtime.context import Context


@click.command("check", help="tell whether this host can run vmrt, and with which accelerator")
@click.pass_obj
def command(ctx: Context) -> None:
    from vmrt.runtime.check import check

    ok = True
    for item in check(ctx):
        click.echo(f"{'ok  ' if item.ok else 'FAIL'}  {item.name}: {item.detail}")
        ok = ok and item.ok
    if not ok:
        raise SystemExit(1)
