"""What `vmrt debug` asks of the monitor: one QMP command, and a console in the guest.

`debug console` gets a channel like an exec'd process, owned by no container
(CONSOLE_OWNER cannot be a container id); the CLI checked the config's
`debug_console` before asking, and the monitor's socket is root's alone.

`debug qmp` passes one operator's QMP command through the monitor that owns QMP.

The monitor keeps the VM's truth (sandbox.json's devices, the shares its
virtiofsds serve, the fds it handed QEMU); a command that changes what it
owns behind its back would make that truth a lie, so those are refused:

* `quit`, `system_powerdown`, `system_reset`: the VM (and every container in it)
  would die or reboot under its shims; `vmrt delete`/`kill` take the VM down
  in order (the monitor would notice QEMU's death through its pidfd, but the
  containers' exit statuses would be lost).
* device and chardev hot-plug, fd passing: sandbox.json would no longer name
  what is plugged, and `delete` would leave or break devices.

Everything else (query-*, stop/cont, human-monitor-command, ...) goes through.
"""

from __future__ import annotations

import re
from typing import Any

from vmrt import protocol
from vmrt.errors import MonitorError

REFUSED = frozenset({
    "quit", "system_powerdown", "system_reset",
    "device_add", "device_del", "chardev-add", "chardev-remove", "chardev-change",
    "blockdev-add", "blockdev-del", "netdev_add", "netdev_del", "object-add", "object-del",
    "getfd", "closefd", "add-fd", "remove-fd", "qmp_capabilities",
})
_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_-]{0,127}")
#: The owner of a debug console's channel: not a container (ids cannot hold "<").
CONSOLE_OWNER = "<debug-console>"


def parse_qmp(args: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """The command and its arguments, validated; a refused command raises `invalid`."""
    command = protocol.get_str(args, "command", max_len=128)
    arguments = args.get("arguments") or {}
    if not _NAME.fullmatch(command):
        raise MonitorError(f"not a QMP command name: {command!r}", "invalid")
    if not isinstance(arguments, dict):
        raise MonitorError("QMP arguments must be an object", "invalid")
    if command in REFUSED:
        raise MonitorError(f"QMP {command} is refused: it would change what the monitor owns "
                           "behind its back (use vmrt delete/kill to stop a VM)", "invalid")
    return command, arguments
