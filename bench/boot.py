"""The boot floor: QEMU launched by hand, with the argv vmrt would use, until the agent's hello.

No vmrt code runs on the timed path: the argv is built before the clock starts
(by vmrt's pure builder, from the same config and image, so the options are the
ones a pod VM gets: q35, memfd RAM, erofs root on virtio-blk, hot-plug root
ports, the TCG kernel arguments), then the bench itself forks QEMU and reads the
agent's port (a socketpair) until the hello frame arrives. `argv_differences`
checks that afterwards against the argv a real monitor logged, so the floor
cannot drift from what vmrt does.
"""

from __future__ import annotations

import json
import re
import secrets
import socket
import subprocess
import time
from pathlib import Path
from typing import Any

from lab import REPO
from stats import Figure

HELLO_TIMEOUT_S = 120.0


def floor_argv(config_path: Path | None, console_log: Path, qmp_fd: int,
               agent_fd: int) -> list[str]:
    import sys

    sys.path.insert(0, str(REPO / "src"))
    from vmrt.config import load
    from vmrt.monitor.vmspec import bounds, pod_vm
    from vmrt.runtime.sandbox import boot_image
    from vmrt.vm import cmdline

    cfg = load(str(config_path) if config_path else None)
    image = boot_image(cfg)  # what `create` resolves: image, accelerator, kernel arguments
    limits = bounds(cfg)
    # The VMSpec a sandbox monitor (and a pool VM's) builds; only ids and paths are the lab's.
    return cmdline.build(pod_vm(
        cfg, name="bench-floor", kernel=image.kernel, initrd=image.initrd,
        kernel_cmdline=image.kernel_cmdline, root_image=image.root_image, accel=image.accel,
        nonce=secrets.token_hex(16), qmp_fd=qmp_fd, agent_fd=agent_fd,
        console_log=str(console_log), max_vcpus=limits.max_vcpus,
        max_memory_mib=limits.max_mib))


def boot_once(workdir: Path, config_path: Path | None) -> tuple[float, list[str]]:
    """Seconds from launching QEMU to the agent's hello; and the argv used."""
    qmp_host, qmp_vm = socket.socketpair()
    agent_host, agent_vm = socket.socketpair()
    console = workdir / "floor-console.log"
    argv = floor_argv(config_path, console, qmp_vm.fileno(), agent_vm.fileno())
    t0 = time.perf_counter()
    proc = subprocess.Popen(argv, pass_fds=[qmp_vm.fileno(), agent_vm.fileno()],
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    qmp_vm.close()
    agent_vm.close()
    try:
        agent_host.settimeout(HELLO_TIMEOUT_S)
        seen = b""
        while b'"hello"' not in seen:
            chunk = agent_host.recv(4096)
            if not chunk:
                tail = console.read_bytes()[-400:].decode(errors="replace")
                raise RuntimeError(f"the guest closed its port before the hello: {tail}")
            seen += chunk
        elapsed = time.perf_counter() - t0
    finally:
        proc.kill()
        proc.wait()
        agent_host.close()
        qmp_host.close()
    return elapsed, argv


def boot_floor(workdir: Path, config_path: Path | None, runs: int) -> tuple[Figure, list[str]]:
    fig = Figure(note="QEMU launch -> agent hello, no vmrt code on the path")
    argv: list[str] = []
    for _ in range(runs):
        elapsed, argv = boot_once(workdir, config_path)
        fig.samples.append(elapsed)
    return fig, argv


def _normalized(argv: list[str]) -> list[str]:
    out = []
    for arg in argv:
        arg = re.sub(r"fd=\d+", "fd=N", arg)
        arg = re.sub(r"vmrt\.nonce=\w+", "vmrt.nonce=N", arg)
        arg = re.sub(r"path=\S+console\.log", "path=CONSOLE", arg)
        arg = re.sub(r"^vmrt-[^,]*,", "vmrt-NAME,", arg)
        out.append(arg)
    return out


def argv_differences(floor: list[str], monitor_log: Path) -> list[str]:
    """Options of the floor's QEMU that differ from those a monitor launched QEMU with."""
    real: list[str] = []
    for line in monitor_log.read_text().splitlines():
        try:
            rec: dict[str, Any] = json.loads(line)
        except ValueError:
            continue
        if rec.get("msg") == "launching qemu":
            real = list(rec.get("argv", []))
            break
    if not real:
        return ["no `launching qemu` record in " + str(monitor_log)]
    a, b = _normalized(floor), _normalized(real)
    return sorted(set(a) ^ set(b))
