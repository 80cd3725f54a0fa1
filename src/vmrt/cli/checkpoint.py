from __future__ import annotations

import click

from vmrt.runtime.context import Context


@click.command("checkpoint", help="checkpoint a running container (not supported by vmrt)",
               context_settings={"ignore_unknown_options": True})
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
@click.pass_obj
def command(ctx: Context, args: tuple[str, ...]) -> None:
    from vmrt.runtime.checkpoint import checkpoint

    checkpoint(ctx, args[-1] if args else "")  # runc's options come first, the id last
