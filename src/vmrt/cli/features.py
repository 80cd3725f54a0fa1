from __future__ import annotations

import json

import click

from vmrt.runtime.context import Context


@click.command("features", help="show the enabled features")
@click.pass_obj
def command(ctx: Context) -> None:
    from vmrt.runtime.features import features

    click.echo(json.dumps(features(), indent=4))
