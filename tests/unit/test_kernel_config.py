"""The guest kernel's config fragment and the cache logic of vmrt.image.kernel (no build)."""

from __future__ import annotations

import re
import time
from pathlib import Path

import pytest

from vmrt.image import kernel
from vmrt.image.kernel import (
    KERNEL_CMDLINE,
    KERNEL_CONFIG_FRAGMENT,
    KernelBuildError,
    cache_key,
    ensure_kernel,
    fragment_settings,
)

SETTING = re.compile(r'^CONFIG_[A-Z0-9_]+=(y|-?[0-9]+|0x[0-9a-fA-F]+|"[^"\n]*")$')
UNSET = re.compile(r"^# CONFIG_[A-Z0-9_]+ is not set$")

# What vmrt relies on in the guest; each must be built in (=y).
REQUIRED_Y = [
    "64BIT",
    "PVH",
    "SMP",
    "HOTPLUG_CPU",
    "SERIAL_8250",
    "SERIAL_8250_CONSOLE",
    "BLK_DEV_INITRD",
    "DEVTMPFS",
    "TMPFS",
    "TMPFS_POSIX_ACL",
    "TMPFS_XATTR",
    "PROC_FS",
    "SYSFS",
    "UNIX98_PTYS",
    "FUTEX",
    "EPOLL",
    "SIGNALFD",
    "TIMERFD",
    "EVENTFD",
    "INOTIFY_USER",
    "FHANDLE",
    "POSIX_MQUEUE",
    "MULTIUSER",
    "PRINTK",
    "BINFMT_ELF",
    "BINFMT_SCRIPT",
    "ACPI",
    "PCI",
    "PCI_MSI",
    "PCIEPORTBUS",
    "HOTPLUG_PCI",
    "HOTPLUG_PCI_ACPI",
    "HOTPLUG_PCI_PCIE",
    "VIRTIO_PCI",
    "VIRTIO_CONSOLE",
    "VIRTIO_BLK",
    "VIRTIO_NET",
    "HW_RANDOM_VIRTIO",
    "FUSE_FS",
    "VIRTIO_FS",
    "OVERLAY_FS",
    "EXT4_FS",
    "EROFS_FS",
    "SQUASHFS",
    "MEMORY_HOTPLUG",
    "MEMORY_HOTREMOVE",
    "VIRTIO_MEM",
    "VIRTIO_BALLOON",
    "CGROUPS",
    "MEMCG",
    "CGROUP_SCHED",
    "FAIR_GROUP_SCHED",
    "CFS_BANDWIDTH",
    "CPUSETS",
    "CGROUP_PIDS",
    "BLK_CGROUP",
    "CGROUP_BPF",
    "BPF_SYSCALL",
    "NAMESPACES",
    "UTS_NS",
    "IPC_NS",
    "PID_NS",
    "NET_NS",
    "USER_NS",
    "SECCOMP",
    "SECCOMP_FILTER",
    "KEYS",
    "NET",
    "UNIX",
    "INET",
    "IPV6",
    "PACKET",
    "VETH",
    "TUN",
    "BRIDGE",
    "NET_SCHED",
    "NET_CLS_U32",
    "NET_CLS_FLOWER",
    "NET_ACT_MIRRED",
    "NET_SCH_INGRESS",
]

# Never in the guest kernel: modules would need a module tree in the initramfs.
REQUIRED_OFF = ["MODULES", "DEBUG_INFO", "SOUND", "DRM", "USB_SUPPORT", "WIRELESS"]


def fragment_text() -> str:
    return KERNEL_CONFIG_FRAGMENT.read_text()


def test_fragment_is_found_relative_to_the_package() -> None:
    assert KERNEL_CONFIG_FRAGMENT.is_file()
    assert KERNEL_CONFIG_FRAGMENT.parent.name == "images"
    assert (KERNEL_CONFIG_FRAGMENT.parents[1] / "src" / "vmrt" / "image" / "kernel.py").is_file()


def test_every_line_is_a_setting_an_unset_marker_or_a_comment() -> None:
    for lineno, line in enumerate(fragment_text().splitlines(), 1):
        if not line.strip() or UNSET.match(line):
            continue
        if line.startswith("#"):
            # a commented-out setting reads as a setting to a human but not to kconfig
            assert not re.match(r"^#\s*CONFIG_\w+\s*=", line), f"line {lineno}: {line!r}"
            continue
        assert SETTING.match(line), f"line {lineno}: {line!r}"
        assert not line.endswith("=m"), f"line {lineno}: modules are off: {line!r}"


def test_no_option_is_set_twice() -> None:
    names = re.findall(r"^(?:# )?(CONFIG_[A-Z0-9_]+)[= ]", fragment_text(), re.MULTILINE)
    dupes = {n for n in names if names.count(n) > 1}
    assert not dupes


def test_fragment_builds_in_what_vmrt_relies_on() -> None:
    settings = fragment_settings(fragment_text())
    missing = [o for o in REQUIRED_Y if settings.get(f"CONFIG_{o}") != "y"]
    assert not missing, f"not =y in images/kernel.config: {missing}"


def test_fragment_leaves_out_modules_and_debug_info() -> None:
    settings = fragment_settings(fragment_text())
    for opt in REQUIRED_OFF:
        assert f"CONFIG_{opt}" in settings, opt
        assert settings[f"CONFIG_{opt}"] is None, opt


def test_fragment_parser_rejects_garbage() -> None:
    with pytest.raises(ValueError, match="line 2"):
        fragment_settings("CONFIG_A=y\nCONFIG_B\n")
    with pytest.raises(ValueError):
        fragment_settings("CONFIG_A=\n")
    assert fragment_settings('# c\n\nCONFIG_A=y\n# CONFIG_B is not set\nCONFIG_C="x"\n') == {
        "CONFIG_A": "y",
        "CONFIG_B": None,
        "CONFIG_C": '"x"',
    }


def test_cmdline_has_the_serial_console_and_keeps_hotplug_buses() -> None:
    assert "console=ttyS0" in KERNEL_CMDLINE
    assert not any(o.startswith("pci=") and "lastbus" in o for o in KERNEL_CMDLINE)
    assert all(o and " " not in o for o in KERNEL_CMDLINE)


def test_tcg_only_options_stay_out_of_the_base_cmdline() -> None:
    # noapictimer helps TCG boot but would route every timer through the HPET under KVM
    assert "noapictimer" in kernel.KERNEL_CMDLINE_TCG
    assert not set(kernel.KERNEL_CMDLINE_TCG) & set(KERNEL_CMDLINE)


def test_cache_key_depends_on_fragment_and_version() -> None:
    a = cache_key(b"CONFIG_A=y\n", "6.1.1-1")
    assert a == cache_key(b"CONFIG_A=y\n", "6.1.1-1")
    assert a != cache_key(b"CONFIG_A=y\n", "6.1.1-2")
    assert a != cache_key(b"CONFIG_B=y\n", "6.1.1-1")
    assert re.fullmatch(r"[0-9a-f]+", a)


def test_cached_kernel_is_returned_without_building(tmp_path: Path) -> None:
    frag = tmp_path / "frag.config"
    frag.write_text("CONFIG_A=y\n")
    entry = tmp_path / "cache" / f"kernel-{cache_key(frag.read_bytes(), '9.9-1')}"
    entry.mkdir(parents=True)
    (entry / kernel.BOOT_TARGET).write_bytes(b"\x7fELF")
    t0 = time.monotonic()
    got = ensure_kernel(tmp_path / "cache", fragment=frag, source_version="9.9-1")
    assert time.monotonic() - t0 < 0.05
    assert got == entry / kernel.BOOT_TARGET


def test_bad_fragment_raises_kernel_build_error(tmp_path: Path) -> None:
    frag = tmp_path / "frag.config"
    frag.write_text("this is not kconfig\n")
    with pytest.raises(KernelBuildError, match="line 1"):
        ensure_kernel(tmp_path / "cache", fragment=frag, source_version="9.9-1")


def test_lost_settings_are_listed() -> None:
    fragment = {"CONFIG_A": "y", "CONFIG_B": "y", "CONFIG_C": None, "CONFIG_D": "64"}
    config = "CONFIG_A=y\n# CONFIG_B is not set\nCONFIG_C=y\nCONFIG_D=64\n"
    with pytest.raises(KernelBuildError) as err:
        kernel._check_config(fragment, config)
    text = str(err.value)
    assert "CONFIG_B=y" in text
    assert "CONFIG_C" in text
    assert "CONFIG_A" not in text
    assert "CONFIG_D" not in text


def test_work_dirs_of_dead_builders_are_removed(tmp_path: Path) -> None:
    dead = tmp_path / ".tmp-build-dead"
    alive = tmp_path / ".tmp-build-alive"
    fresh = tmp_path / ".tmp-build-fresh"  # its builder has not locked its owner file yet
    for d in (dead, alive, fresh):
        d.mkdir()
    (dead / ".owner").touch()
    with kernel._locked(alive / ".owner"):
        kernel._remove_stale(tmp_path)
    assert not dead.exists()
    assert alive.exists()
    assert fresh.exists()
