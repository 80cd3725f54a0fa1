"""The QEMU argv is a pure function of its values: golden-checked, and escaping proven."""

from __future__ import annotations

import pytest

from vmrt.vm import cmdline

BASE = cmdline.VMSpec(
    name="pod1", qemu="/usr/bin/qemu-system-x86_64", accel="tcg", machine="q35", vcpus=1,
    memory_mib=512, kernel="/k/vmlinux", initrd="/k/initrd.img",
    kernel_cmdline=("console=ttyS0", "quiet"), qmp_fd=5, agent_fd=6,
    console_log="/run/vmrt/sandboxes/pod1/console.log", hotplug_slots=2)


def _pairs(argv: list[str]) -> list[tuple[str, str]]:
    return [(argv[i], argv[i + 1]) for i in range(1, len(argv) - 1) if argv[i].startswith("-")
            and not argv[i + 1].startswith("-")]


def test_golden() -> None:
    argv = cmdline.build(BASE)
    pairs = _pairs(argv)
    assert ("-machine", "q35,memory-backend=mem") in pairs
    # virtio-fs needs guest RAM the vhost-user backend can map
    assert ("-object", "memory-backend-memfd,id=mem,size=512M,share=on") in pairs
    assert ("-chardev", "socket,id=qmp,fd=5") in pairs
    assert ("-chardev", "socket,id=agent,fd=6") in pairs
    assert ("-device", "virtserialport,chardev=agent,name=vmrt.agent,bus=vser0.0") in pairs
    assert ("-accel", "tcg,thread=single,split-wx=on,tb-size=64") in pairs
    assert ("-device",
            "pcie-root-port,id=rp0,bus=pcie.0,chassis=1,addr=0x10.0,multifunction=on") in pairs
    assert ("-device", "pcie-root-port,id=rp1,bus=pcie.0,chassis=2,addr=0x10.1") in pairs
    assert ("-append", "console=ttyS0 quiet") in pairs
    assert argv[argv.index("-sandbox") + 1].startswith("on,obsolete=deny")
    assert "-no-reboot" in argv and "-nodefaults" in argv


def test_a_spare_qmp_monitor_only_when_asked() -> None:
    assert not any("qmp-spare" in a for a in cmdline.build(BASE))
    pairs = _pairs(cmdline.build(cmdline.VMSpec(**{**BASE.__dict__, "spare_qmp_fd": 9})))
    assert ("-chardev", "socket,id=qmp-spare,fd=9") in pairs
    assert ("-mon", "chardev=qmp-spare,mode=control") in pairs


def test_commas_in_paths_cannot_add_options() -> None:
    vm = cmdline.VMSpec(**{**BASE.__dict__, "console_log": "/tmp/a,b=c/console.log"})
    argv = cmdline.build(vm)
    assert "file,id=console,path=/tmp/a,,b=c/console.log" in argv


def test_control_characters_are_refused() -> None:
    with pytest.raises(ValueError, match="control characters"):
        cmdline.opt("a\nb")


def test_kvm_uses_host_cpu() -> None:
    argv = cmdline.build(cmdline.VMSpec(**{**BASE.__dict__, "accel": "kvm"}))
    assert argv[argv.index("-cpu") + 1] == "host"
    assert argv[argv.index("-accel") + 1] == "kvm"


def test_no_hotplug_bounds_no_hotplug_devices() -> None:
    argv = cmdline.build(BASE)
    assert argv[argv.index("-m") + 1] == "512M"
    assert argv[argv.index("-smp") + 1] == "1"
    assert not any("virtio-mem" in a for a in argv)


def test_hotplug_bounds() -> None:
    """vCPUs up to maxcpus by device_add; memory by one virtio-mem device whose RAM is a
    shared memfd like the base RAM (virtio-fs must reach hot-plugged memory too)."""
    vm = cmdline.VMSpec(**{**BASE.__dict__, "max_vcpus": 4, "max_memory_mib": 4700})
    pairs = _pairs(cmdline.build(vm))
    assert ("-smp", "1,maxcpus=4") in pairs
    # the region above the base is rounded down to whole 128 MiB memory blocks
    assert ("-m", "512M,maxmem=4608M") in pairs
    assert ("-object", "memory-backend-memfd,id=hotmem,size=4096M,share=on") in pairs
    assert ("-device", "virtio-mem-pci,id=vmem0,memdev=hotmem,requested-size=0,block-size=2M") \
        in pairs
    assert cmdline.HOTPLUG_MEMORY_PATH == "/machine/peripheral/vmem0"
