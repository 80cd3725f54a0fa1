"""The QEMU command line, built purely from values.

Nothing here touches the system, so the argv for a configuration can be
golden-tested. Every value that lands inside a QEMU option string goes
through `opt()`, which doubles commas: a path or id with a comma must not be
able to add options of its own.
"""

from __future__ import annotations

from dataclasses import dataclass


def opt(value: str) -> str:
    """Escape a value for a QEMU `key=value,...` option string."""
    if any(c in value for c in "\n\r\x00"):
        raise ValueError(f"refusing control characters in a QEMU option value: {value!r}")
    return value.replace(",", ",,")


@dataclass(frozen=True)
class VMSpec:
    name: str
    qemu: str
    accel: str  # "kvm" or "tcg"
    machine: str
    vcpus: int
    memory_mib: int
    kernel: str
    initrd: str
    kernel_cmdline: tuple[str, ...]
    qmp_fd: int
    agent_fd: int
    console_log: str
    hotplug_slots: int = 8
    tb_size_mib: int = 64
    sandbox: bool = True
    #: A read-only root image (erofs) on virtio-blk instead of an initramfs. Its pages
    #: come from the host's page cache, shared by every VM, instead of guest RAM.
    root_image: str = ""
    #: Hot-plug bounds (0: none). vCPUs beyond `vcpus` are plugged with device_add;
    #: memory beyond `memory_mib` comes from one virtio-mem device (memfd, share=on:
    #: virtio-fs must reach hot-plugged RAM too), resized with qom-set.
    max_vcpus: int = 0
    max_memory_mib: int = 0
    #: `-bios`: a firmware file name (QEMU looks it up in its data directory) or path;
    #: empty: QEMU's default (SeaBIOS).
    firmware: str = ""
    #: A second QMP monitor, for a warm pool VM's own use before it is claimed (-1: none).
    spare_qmp_fd: int = -1


#: The virtio-mem device that grows and shrinks the guest's RAM (QOM path for qom-set).
HOTPLUG_MEMORY_ID = "vmem0"
HOTPLUG_MEMORY_PATH = f"/machine/peripheral/{HOTPLUG_MEMORY_ID}"
#: virtio-mem's plug granularity; requested sizes are multiples of it.
HOTPLUG_MEMORY_BLOCK_MIB = 2


def root_port_id(slot: int) -> str:
    return f"rp{slot}"


def hotplug_memory_mib(vm: VMSpec) -> int:
    """Size of the virtio-mem region: the bound above the base, in whole 128 MiB blocks
    (the guest kernel adds memory in blocks of that size)."""
    return max(0, vm.max_memory_mib - vm.memory_mib) // 128 * 128


def build(vm: VMSpec) -> list[str]:
    """argv for a pod VM: q35 with hot-plug root ports, memfd RAM for virtio-fs."""
    mem = f"{vm.memory_mib}M"
    hot_mib = hotplug_memory_mib(vm)
    argv = [
        vm.qemu,
        "-name", f"vmrt-{opt(vm.name)},debug-threads=on",
        "-machine", f"{opt(vm.machine)},memory-backend=mem",
        "-object", f"memory-backend-memfd,id=mem,size={mem},share=on",
        "-m", mem + (f",maxmem={vm.memory_mib + hot_mib}M" if hot_mib else ""),
        "-smp", str(vm.vcpus) + (f",maxcpus={vm.max_vcpus}" if vm.max_vcpus > vm.vcpus else ""),
        "-nodefaults", "-no-user-config", "-nographic", "-no-reboot",
        "-kernel", vm.kernel,  # a plain path, not an option string: QEMU takes it verbatim
        "-append", " ".join(vm.kernel_cmdline),
        "-chardev", f"socket,id=qmp,fd={vm.qmp_fd}",
        "-mon", "chardev=qmp,mode=control",
        "-chardev", f"file,id=console,path={opt(vm.console_log)}",
        "-serial", "chardev:console",
        "-device", "virtio-serial-pci,id=vser0",
        "-chardev", f"socket,id=agent,fd={vm.agent_fd}",
        "-device", "virtserialport,chardev=agent,name=vmrt.agent,bus=vser0.0",
        "-device", "virtio-rng-pci",
    ]
    if vm.root_image:
        argv += ["-drive", f"file={opt(vm.root_image)},if=none,id=root,format=raw,readonly=on",
                 "-device", "virtio-blk-pci,drive=root,id=rootdisk"]
    else:
        argv += ["-initrd", vm.initrd]  # verbatim, as -kernel
    if vm.accel == "tcg":
        # One vCPU thread, and a bounded translation cache: ~27 MiB less per VM, same boot.
        # split-wx: the cache is a memfd, whose dead pages the monitor can give back
        # after a flush (monitor/jit_trim.py); boot time measured the same.
        argv += ["-accel", f"tcg,thread=single,split-wx=on,tb-size={vm.tb_size_mib}",
                 "-cpu", "max"]
    else:
        argv += ["-accel", "kvm", "-cpu", "host"]
    for slot in range(vm.hotplug_slots):
        # Eight root ports per PCI slot (functions 0-7): q35 has few free slots on pcie.0.
        dev, fn = 0x10 + slot // 8, slot % 8
        argv += ["-device",
                 f"pcie-root-port,id={root_port_id(slot)},bus=pcie.0,chassis={slot + 1},"
                 f"addr={dev:#x}.{fn}" + (",multifunction=on" if fn == 0 else "")]
    if hot_mib:
        argv += ["-object", f"memory-backend-memfd,id=hotmem,size={hot_mib}M,share=on",
                 "-device", f"virtio-mem-pci,id={HOTPLUG_MEMORY_ID},memdev=hotmem,requested-size=0,"
                 f"block-size={HOTPLUG_MEMORY_BLOCK_MIB}M"]
    if vm.spare_qmp_fd >= 0:
        argv += ["-chardev", f"socket,id=qmp-spare,fd={vm.spare_qmp_fd}",
                 "-mon", "chardev=qmp-spare,mode=control"]
    if vm.firmware:
        argv += ["-bios", vm.firmware]  # a plain file name, not an option string
    if vm.sandbox:
        argv += ["-sandbox",
                 "on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny"]
    return argv
