"""vmrt's own configuration: built-in defaults, overridden by a TOML file.

The file is /etc/vmrt/config.toml unless VMRT_CONFIG names another. Every key
has a default that works on a fresh machine, so no file is needed at all.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from vmrt.errors import ConfigError
from vmrt.util.record import field, fields, record, replace

DEFAULT_CONFIG_PATH = "/etc/vmrt/config.toml"


def default_cache_dir() -> Path:
    env = os.environ.get("VMRT_CACHE_DIR")
    if env:
        return Path(env)
    import platformdirs

    return Path(platformdirs.user_cache_dir("vmrt"))


@record
class Config:
    qemu: str = "/usr/bin/qemu-system-x86_64"
    virtiofsd: str = "/usr/lib/qemu/virtiofsd"
    accel: str = "auto"  # auto | kvm | tcg
    machine: str = "q35"
    vcpus: int = 1
    memory_mib: int = 512
    #: Bounds of VM growth by hot-plug (containers' CPU and memory limits); 0: the host's.
    max_vcpus: int = 0
    max_memory_mib: int = 0
    hotplug_slots: int = 16
    #: TCG's translation cache: 32 saves ≈34 MiB per VM and costs ≈0.2 s of boot (docs).
    tb_size_mib: int = 64
    #: qboot: a minimal firmware that boots the kernel ≈0.3 s sooner than SeaBIOS under TCG.
    firmware: str = "qboot.rom"
    #: Under TCG, keep the guest's local APIC timer (NO_HZ idle: an idle guest stops
    #: ticking); false: `noapictimer`, ≈0.13 s less boot, a periodic tick for life.
    guest_tickless: bool = True
    #: Under TCG, randomize guest processes' address space; false: `norandmaps`, so TCG
    #: reuses its translations across processes (each crun call ≈30 ms sooner).
    guest_aslr: bool = False
    root: str = "erofs"  # erofs (read-only disk image) | initramfs
    kernel: str = ""  # empty: the built image's kernel
    initrd: str = ""  # empty: the built image's initrd
    cache_dir: str = ""  # empty: the user cache dir
    boot_timeout_s: float = 30.0
    request_timeout_s: float = 30.0
    debug_console: bool = False
    sandbox_qemu: bool = True
    #: Booted, empty VMs kept ready under <root>/pool/ for sandbox creates to claim.
    pool_size: int = 0
    source: dict[str, str] = field(default_factory=dict, compare=False)

    @property
    def cache_path(self) -> Path:
        return Path(self.cache_dir) if self.cache_dir else default_cache_dir()


#: Each key's type is its default's (every key has one): no typing.get_type_hints on the
#: CLI's path.
_TYPES: dict[str, type] = {f.name: type(f.default) for f in fields(Config) if f.name != "source"}


def load(path: str | None = None) -> Config:
    """Read the config file, checking every key and type; unknown keys are errors."""
    path = path or os.environ.get("VMRT_CONFIG") or DEFAULT_CONFIG_PATH
    cfg = Config(source={f.name: "default" for f in fields(Config) if f.name != "source"})
    try:
        with open(path, "rb") as f:
            import tomllib  # only when there is a file: most machines have none

            data: dict[str, Any] = tomllib.load(f)
    except FileNotFoundError:
        return cfg
    except (OSError, ValueError) as exc:  # tomllib.TOMLDecodeError is a ValueError
        raise ConfigError(f"config {path}: {exc}") from exc
    changes: dict[str, Any] = {}
    for key, value in data.items():
        want = _TYPES.get(key)
        if want is None:
            raise ConfigError(f"config {path}: unknown key {key!r}")
        if want is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if not isinstance(value, want) or (want is int and isinstance(value, bool)):
            raise ConfigError(f"config {path}: {key} must be {want.__name__}")
        changes[key] = value
    if changes.get("accel", cfg.accel) not in ("auto", "kvm", "tcg"):
        raise ConfigError(f"config {path}: accel must be auto, kvm or tcg")
    if changes.get("pool_size", 0) < 0:
        raise ConfigError(f"config {path}: pool_size must be 0 or more")
    if changes.get("root", cfg.root) not in ("erofs", "initramfs"):
        raise ConfigError(f"config {path}: root must be erofs or initramfs")
    source = dict(cfg.source) | {k: path for k in changes}
    return replace(cfg, **changes, source=source)
