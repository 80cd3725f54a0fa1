"""The guest kernel's command line follows the config (vmrt only).

Under TCG a guest maps its processes at fixed addresses (`norandmaps`) unless
`guest_aslr = true`: QEMU's TCG keys its translations by virtual address, so
with ASLR every crun call is translated afresh. What is checked is what a
container sees in /proc/sys/kernel/randomize_va_space: 0 (fixed) or 2 (full).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest

from helpers.runtime import Runtime

pytestmark = pytest.mark.vm


@pytest.mark.parametrize("aslr", [False, True], ids=["default", "guest_aslr"])
def test_guest_address_space_randomization_follows_the_config(
        runtime: Runtime, bundle, new_id, vmrt_config: Callable[[str], Path],
        aslr: bool) -> None:
    if not runtime.is_vmrt:
        pytest.skip("the guest kernel is a VM runtime's")
    vmrt_config("guest_aslr = true\n" if aslr else "")
    cid = new_id()
    runtime.ok("run", "--detach", "--bundle", str(bundle(["sleep", "100000"])), cid)
    try:
        [vm] = json.loads(runtime.ok("debug", "ls", "--format", "json").stdout)
        seen = runtime.ok("exec", cid, "cat", "/proc/sys/kernel/randomize_va_space").stdout
        assert seen.strip() == ("2" if aslr or vm["accel"] != "tcg" else "0")
    finally:
        runtime.ok("delete", "--force", cid)
