"""Choose KVM where it works and TCG where it does not.

`/dev/kvm` existing is not enough: on nested PVM hosts (module kvm_pvm) a
stock guest kernel crawls or dies with "emulation failure", so KVM is only
chosen when the host module is a real hardware one (kvm_intel / kvm_amd) and
the device opens.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

HARDWARE_MODULES = ("kvm_intel", "kvm_amd")


@dataclass(frozen=True)
class AccelReport:
    accel: str
    reasons: tuple[str, ...] = field(default_factory=tuple)


def kvm_modules() -> list[str]:
    return [m for m in (*HARDWARE_MODULES, "kvm_pvm") if os.path.isdir(f"/sys/module/{m}")]


KVM_GET_API_VERSION = 0xAE00
KVM_CREATE_VM = 0xAE01


def kvm_trial() -> tuple[bool, str]:
    """Open /dev/kvm and create (then drop) an empty VM, as `kata-runtime check` does."""
    import fcntl

    try:
        fd = os.open("/dev/kvm", os.O_RDWR | os.O_CLOEXEC)
    except OSError as exc:
        return False, f"/dev/kvm cannot be opened: {exc.strerror}"
    try:
        version = fcntl.ioctl(fd, KVM_GET_API_VERSION)
        vm_fd = fcntl.ioctl(fd, KVM_CREATE_VM, 0)
        os.close(vm_fd)
        return True, f"trial: KVM API version {version}, an empty VM was created"
    except OSError as exc:
        return False, f"trial: KVM_CREATE_VM failed: {exc.strerror}"
    finally:
        os.close(fd)


def probe(requested: str = "auto") -> AccelReport:
    if requested == "tcg":
        return AccelReport("tcg", ("tcg requested by configuration",))
    reasons: list[str] = []
    usable = True
    if not os.path.exists("/dev/kvm"):
        reasons.append("/dev/kvm does not exist")
        usable = False
    else:
        trial = kvm_trial()
        reasons.append(trial[1])
        usable = trial[0]
    modules = kvm_modules()
    if "kvm_pvm" in modules:
        reasons.append("host module is kvm_pvm (nested PVM): stock guest kernels fail under it")
        usable = False
    elif any(m in modules for m in HARDWARE_MODULES):
        reasons.append(f"host module {', '.join(modules)} present")
    elif usable:
        reasons.append("no kvm_intel/kvm_amd module found")
        usable = False
    if requested == "kvm":
        return AccelReport("kvm", (*reasons, "kvm forced by configuration"))
    return AccelReport("kvm" if usable else "tcg", tuple(reasons))
