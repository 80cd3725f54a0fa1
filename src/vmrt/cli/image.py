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
    from vmrt.image import ensure_image

    quiet = not sys.stderr.isatty()
    image = ensure_image(ctx.config, progress=None if quiet else _progress)
    click.echo(f"kernel {image.kernel}\ninitrd {image.initrd}")


def _progress(message: str) -> None:
    sys.stderr.write(f"\r\x1b[K{message}")
    sys.stderr.flush()


@command.command("info", help="print what the guest image holds")
@click.pass_obj
def info(ctx: Context) -> None:
    from vmrt.image import image_info

    click.echo(json.dumps(image_info(ctx.config), indent=2))
