from __future__ import annotations

import os
import signal
import sys

import click

from vmrt.runtime.context import Context


@click.command("run", help="create and run a container")
@click.option("-b", "--bundle", default=".", help="path to the root of the bundle directory")
@click.option("--pid-file", default=None, help="file to write the process id to")
@click.option("--console-socket", default=None, help="unix socket to send the pty master to")
@click.option("-d", "--detach", is_flag=True, help="detach from the container's process")
@click.option("--no-pivot", is_flag=True)
@click.option("--no-new-keyring", is_flag=True)
@click.argument("container_id")
@click.pass_obj
def command(ctx: Context, bundle: str, pid_file: str | None, console_socket: str | None,
            detach: bool, no_pivot: bool, no_new_keyring: bool, container_id: str) -> None:
    from vmrt.cli import failed
    from vmrt.runtime.create import CreateOptions, create
    from vmrt.runtime.delete import delete
    from vmrt.runtime.start import start
    from vmrt.shim.main import FORWARDED

    with failed("run"):
        shim_pid = create(ctx, CreateOptions(container_id, bundle, pid_file, console_socket,
                                             no_pivot, no_new_keyring))
        try:
            start(ctx, container_id)
        except BaseException:
            delete(ctx, container_id, force=True)
            raise
    if detach:
        return
    # The shim is our child: relay our signals to it (it relays them to the guest),
    # reap it, and report its status the way a shell would, as runc run does.
    for sig in FORWARDED:
        signal.signal(sig, lambda s, _f: os.kill(shim_pid, s))
    _, wstatus = os.waitpid(shim_pid, 0)
    for sig in FORWARDED:
        signal.signal(sig, signal.SIG_DFL)
    delete(ctx, container_id, force=True)
    if os.WIFSIGNALED(wstatus):
        sys.exit(128 + os.WTERMSIG(wstatus))
    sys.exit(os.WEXITSTATUS(wstatus))
