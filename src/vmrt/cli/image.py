from __future__ import annotations

import json
import sys

import click

from vmrt.runtime.context import Context


@click.group("image", help="build and inspect the guest image")
def command() -> None:
    pass


@command.command("build", help="build the guest kernel and root (cached by their inputs)")
@click.pass_obj
def build(ctx: Context) -> None:
    from vmrt.cli.progress import progress_for
    from vmrt.image import ensure_image

    with progress_for(sys.stderr) as progress:  # a status line on a terminal, silence in CI
        image = ensure_image(ctx.config, progress=progress)
    click.echo(f"kernel {image.kernel}\ninitrd {image.initrd}")


@command.command("info", help="print what the guest image holds")
@click.pass_obj
def info(ctx: Context) -> None:
    from vmrt.image import image_info

    click.echo(json.dumps(image_info(ctx.config), indent=2))
