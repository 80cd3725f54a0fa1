from __future__ import annotations

import click

from vmrt.runtime.context import Context


@click.command("create", help="create a container")
@click.option("-b", "--bundle", default=".", help="path to the root of the bundle directory")
@click.option("--pid-file", default=None, help="file to write the process id to")
@click.option("--console-socket", default=None, help="unix socket to send the pty master to")
@click.option("--no-pivot", is_flag=True)
@click.option("--no-new-keyring", is_flag=True)
@click.option("--preserve-fds", type=int, default=0, hidden=True)
@click.argument("container_id")
@click.pass_obj
def command(ctx: Context, bundle: str, pid_file: str | None, console_socket: str | None,
            no_pivot: bool, no_new_keyring: bool, preserve_fds: int, container_id: str) -> None:
    from vmrt.cli import failed
    from vmrt.runtime.create import CreateOptions, create

    with failed("create"):
        create(ctx, CreateOptions(container_id, bundle, pid_file, console_socket, no_pivot,
                                  no_new_keyring))
