"""The values a pod VM's QEMU is built from, in one place for every monitor that boots one.

A sandbox monitor and a warm pool VM's monitor (`pooled.py`) must boot the same
machine: a pool VM is later handed to a sandbox as if that sandbox's monitor had
booted it.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass

from vmrt.config import Config
from vmrt.vm import cmdline


@dataclass(frozen=True)
class Bounds:
    base_vcpus: int
    max_vcpus: int
    base_mib: int
    max_mib: int

    @property
    def hotplug_mib(self) -> int:
        """Must agree with `vm.cmdline.hotplug_memory_mib`: whole 128 MiB blocks."""
        return max(0, self.max_mib - self.base_mib) // 128 * 128


def _host_memory_mib() -> int:
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") // (1 << 20)
    except (ValueError, OSError):
        return 0


def bounds(cfg: Config) -> Bounds:
    """The configured bounds of hot-plug, 0 meaning the host's (Kata's
    default_maxvcpus/maxmemory). Here rather than in `sizing.py` (which re-exports it):
    QEMU's argv needs it before the monitor imports asyncio."""
    max_vcpus = cfg.max_vcpus or os.cpu_count() or 1
    max_mib = cfg.max_memory_mib or _host_memory_mib()
    return Bounds(cfg.vcpus, max(cfg.vcpus, max_vcpus), cfg.memory_mib,
                  max(cfg.memory_mib, max_mib))


def pod_vm(cfg: Config, *, name: str, kernel: str, initrd: str, kernel_cmdline: tuple[str, ...],
           root_image: str, accel: str, nonce: str, qmp_fd: int, agent_fd: int,
           console_log: str, max_vcpus: int, max_memory_mib: int,
           spare_qmp_fd: int = -1) -> cmdline.VMSpec:
    return cmdline.VMSpec(
        name=name[:32], qemu=cfg.qemu, accel=accel, machine=cfg.machine, vcpus=cfg.vcpus,
        memory_mib=cfg.memory_mib, kernel=kernel, initrd=initrd,
        kernel_cmdline=(*kernel_cmdline, f"vmrt.nonce={nonce}"),
        qmp_fd=qmp_fd, agent_fd=agent_fd, console_log=console_log,
        hotplug_slots=cfg.hotplug_slots, tb_size_mib=cfg.tb_size_mib, sandbox=cfg.sandbox_qemu,
        root_image=root_image, max_vcpus=max_vcpus, max_memory_mib=max_memory_mib,
        firmware=cfg.firmware, spare_qmp_fd=spare_qmp_fd)


def fingerprint(cfg: Config, *, kernel: str, initrd: str, kernel_cmdline: tuple[str, ...],
                root_image: str, accel: str) -> str:
    """What makes two pod VMs the same machine: a pool VM booted under another
    configuration or image is not handed out (the refill replaces it)."""
    shape = {
        "kernel": kernel, "initrd": initrd, "cmdline": list(kernel_cmdline),
        "root_image": root_image, "accel": accel, "qemu": cfg.qemu, "machine": cfg.machine,
        "vcpus": cfg.vcpus, "memory_mib": cfg.memory_mib, "max_vcpus": cfg.max_vcpus,
        "max_memory_mib": cfg.max_memory_mib, "hotplug_slots": cfg.hotplug_slots,
        "tb_size_mib": cfg.tb_size_mib, "sandbox_qemu": cfg.sandbox_qemu,
        "firmware": cfg.firmware,
    }
    return hashlib.sha256(json.dumps(shape, sort_keys=True).encode()).hexdigest()[:24]
