from __future__ import annotations

import click

from vmrt.runtime.context import Context


@click.command("restore", help="restore a container from a checkpoint (not supported by vmrt)",
               context_settings={"ignore_unknown_options": True})
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
@click.pass_obj
def command(ctx: Context, args: tuple[str, ...]) -> None:
    from vmrt.runtime.checkpoint import restore

    restore(ctx, args[-1] if args else "")  # runc's options come first, the id last
