from __future__ import annotations

import click

from vmrt.runtime.context import Context


@click.command("spec", help="create a new specification file (config.json)")
@click.option("-b", "--bundle", default=".", help="path to the root of the bundle directory")
@click.option("--rootless", "is_rootless", is_flag=True,
              help="generate a configuration for a rootless container")
@click.pass_obj
def command(ctx: Context, bundle: str, is_rootless: bool) -> None:
    from vmrt.runtime.spec import write_spec

    write_spec(bundle, is_rootless=is_rootless)
