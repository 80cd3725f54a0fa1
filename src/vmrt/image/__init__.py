"""The guest image: a kernel and an initramfs built from Debian packages, cached.

`ensure_image` returns at once when the cache holds a build for the same
inputs (package versions, kernel config, agent sources); otherwise it builds.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from vmrt.config import Config
from vmrt.errors import ImageError

REPO_ROOT = Path(__file__).resolve().parents[3]
AGENT_DIR = REPO_ROOT / "guest-agent" / "vmrt_agent"
PROTOCOL_PY = Path(__file__).resolve().parents[1] / "protocol.py"
PACKAGES_FILE = REPO_ROOT / "images" / "packages.txt"


@dataclass(frozen=True)
class GuestImage:
    kernel: str
    initrd: str
    cmdline: tuple[str, ...]
    root_image: str = ""  # an erofs root on virtio-blk; then `initrd` is not booted


def ensure_image(cfg: Config, progress: Callable[[str], None] | None = None) -> GuestImage:
    from vmrt.image.kernel import KERNEL_CMDLINE, KernelBuildError, ensure_kernel
    from vmrt.image.rootfs import ensure_rootfs

    cache = cfg.cache_path
    try:
        cache.mkdir(parents=True, exist_ok=True)
        kernel = Path(cfg.kernel) if cfg.kernel else ensure_kernel(cache, progress=progress)
        initrd = Path(cfg.initrd) if cfg.initrd else ensure_rootfs(
            cache, agent_dir=AGENT_DIR, protocol_py=PROTOCOL_PY, packages_file=PACKAGES_FILE,
            progress=progress)
    except (KernelBuildError, OSError) as exc:
        raise ImageError(f"cannot build the guest image: {exc}") from exc
    except Exception as exc:
        if type(exc).__name__.endswith("Error") and not isinstance(exc, ImageError):
            raise ImageError(f"cannot build the guest image: {exc}") from exc
        raise
    for path in (kernel, initrd):
        if not path.is_file():
            raise ImageError(f"guest image file {path} is missing")
    if cfg.root == "erofs" and not cfg.initrd:
        from vmrt.image.rootfs import EROFS_ROOT_CMDLINE, erofs_image

        erofs = erofs_image(initrd)
        if erofs is None:
            raise ImageError(f"no erofs root beside {initrd}")
        return GuestImage(str(kernel), str(initrd), (*KERNEL_CMDLINE, *EROFS_ROOT_CMDLINE),
                          str(erofs))
    return GuestImage(str(kernel), str(initrd), tuple(KERNEL_CMDLINE))


def image_status(cfg: Config) -> tuple[bool, str]:
    """Whether a built image for the current inputs is in the cache, without building."""
    kernels = sorted(cfg.cache_path.glob("kernel-*/"))
    roots = sorted(cfg.cache_path.glob("rootfs-*/initrd.img"))
    if cfg.kernel and cfg.initrd:
        return Path(cfg.kernel).is_file() and Path(cfg.initrd).is_file(), f"{cfg.kernel}, {cfg.initrd}"
    if not kernels or not roots:
        return False, f"not built in {cfg.cache_path} (run `vmrt image build`)"
    return True, f"cache {cfg.cache_path}: {len(kernels)} kernel(s), {len(roots)} root(s)"


def image_info(cfg: Config) -> dict[str, object]:
    import json

    image = ensure_image(cfg)
    info: dict[str, object] = {"kernel": image.kernel, "initrd": image.initrd,
                               "cmdline": " ".join(image.cmdline)}
    manifest = Path(image.initrd).with_name("manifest.json")
    if manifest.is_file():
        info["rootfs"] = json.loads(manifest.read_text())
    info["kernel_size"] = Path(image.kernel).stat().st_size
    info["initrd_size"] = Path(image.initrd).stat().st_size
    return info
