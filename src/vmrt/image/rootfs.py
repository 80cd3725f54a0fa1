"""The guest root: an uncompressed ``newc`` initramfs built from Debian packages.

``ensure_rootfs`` returns ``<cache_dir>/rootfs-<key>/initrd.img``, building it
on a miss.  The key covers everything the image is made of: the exact package
versions apt would download, the agent's sources, the wire protocol module and
:data:`BUILDER_VERSION`.  A hit costs a few file reads and hashes.

Build steps (into a private temp dir, renamed into place atomically):

1. pin the packages of ``images/packages.txt`` (``apt-get download --print-uris``),
   fetch the missing ``.deb`` files into ``<cache_dir>/debs/``, ``dpkg-deb -x`` them;
2. prune what the guest never uses (docs, locales, gconv, most binaries, parts
   of the stdlib, extension modules whose libraries are not shipped);
3. add the agent as ``/usr/lib/python3.11/vmrt_agent`` (+ ``protocol.py``), ``/init``,
   busybox applet links, ``/etc/passwd``/``group`` and the mount-point directories;
4. precompile all python to ``__pycache__/*.cpython-311.pyc`` with
   ``--invalidation-mode unchecked-hash`` (used whatever the mtimes), running
   the guest's own interpreter through the guest's own loader, so the bytecode
   is exactly what the guest expects;
5. check: every kept ELF file's loader and ``DT_NEEDED`` libraries resolve inside
   the root, no symlink dangles, and the guest interpreter imports the agent's
   modules and the stdlib it relies on from ``.pyc`` files without compiling;
6. pack a reproducible cpio (sorted, root-owned, mtime 0) with ``/dev/console``,
   and, when ``mkfs.erofs`` is installed, the same tree as ``root.erofs``.

Measured under TCG with the minimal kernel (medians of 9, busy 2-core host):
launch -> agent hello 1.70 s from the initramfs, 1.59-1.74 s from the erofs
disk -- a tie -- but QEMU's PSS after hello is ~257 MB with the initramfs and
~170 MB with erofs, which reads only the pages it touches.
"""

from __future__ import annotations

import contextlib
import fcntl
import fnmatch
import hashlib
import json
import os
import shutil
import stat
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Final

from vmrt.image import debs as debs_mod
from vmrt.image.cpio import DeviceNode, pack_tree
from vmrt.image.elf import check_closure, resolve_in_root

#: Bump when the build steps change in a way that changes the image.
BUILDER_VERSION: Final = "rootfs-4"

PYTHON: Final = "python3.11"
PY_LIB: Final = f"usr/lib/{PYTHON}"
GUEST_PYTHON: Final = f"/usr/bin/{PYTHON}"
AGENT_PACKAGE: Final = "vmrt_agent"
AGENT_DIR_IN_ROOT: Final = f"{PY_LIB}/{AGENT_PACKAGE}"
IMAGE_NAME: Final = "initrd.img"
#: The same tree as a read-only erofs image, built beside the initramfs when
#: ``mkfs.erofs`` is installed.  Boot it on the first virtio-blk disk with
#: :data:`EROFS_ROOT_CMDLINE` (needs a kernel with erofs and virtio-blk built in,
#: and devtmpfs automount: the image has no device nodes).
EROFS_NAME: Final = "root.erofs"
EROFS_ROOT_CMDLINE: Final[tuple[str, ...]] = ("root=/dev/vda", "rootfstype=erofs", "ro", "init=/init")
MANIFEST_NAME: Final = "manifest.json"
DEBS_DIR_NAME: Final = "debs"
LOCK_NAME: Final = ".rootfs.lock"

#: ``/init``: the kernel runs it through binfmt_script; ``-I -S`` = isolated, no site.
INIT_SCRIPT: Final = (
    f"#!{GUEST_PYTHON} -IS\n"
    "# vmrt guest init: the agent does every PID-1 duty (mounts, reaping, shutdown).\n"
    f"from {AGENT_PACKAGE}.main import main\n"
    "\n"
    "main()\n"
)

ETC_FILES: Final[Mapping[str, str]] = {
    "etc/passwd": "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n",
    "etc/group": "root:x:0:\nnogroup:x:65534:\n",
    "etc/hosts": "127.0.0.1\tlocalhost\n::1\tlocalhost\n",
    "etc/hostname": "vmrt\n",
}

#: Directories the agent and crun mount on or write to (path, permissions).
DIRECTORIES: Final[Sequence[tuple[str, int]]] = (
    ("dev", 0o755),
    ("etc", 0o755),
    ("mnt", 0o755),
    ("proc", 0o555),
    ("root", 0o700),
    ("run", 0o755),
    ("sys", 0o555),
    ("tmp", 0o1777),
    ("var", 0o755),
    ("var/tmp", 0o1777),
)

#: Nodes needed before the agent mounts devtmpfs on /dev (the kernel does not
#: automount it on an initramfs): init's stdio is /dev/console, and python
#: reads /dev/urandom for its hash seed when getrandom() would still block
#: (a kernel without random.trust_cpu: "failed to get random numbers").
DEVICES: Final[Sequence[DeviceNode]] = (
    DeviceNode("dev/console", stat.S_IFCHR | 0o600, 5, 1),
    DeviceNode("dev/null", stat.S_IFCHR | 0o666, 1, 3),
    DeviceNode("dev/zero", stat.S_IFCHR | 0o666, 1, 5),
    DeviceNode("dev/random", stat.S_IFCHR | 0o666, 1, 8),
    DeviceNode("dev/urandom", stat.S_IFCHR | 0o666, 1, 9),
)

#: In these directories only the listed files are kept (busybox links come later).
BIN_DIRS: Final = frozenset({"bin", "sbin", "usr/bin", "usr/sbin", "usr/local/bin"})
KEEP_BINARIES: Final = frozenset({"bin/busybox", f"usr/bin/{PYTHON}", "usr/bin/crun"})

#: Removed with everything under them.
PRUNE_TREES: Final = frozenset(
    {
        "etc",  # package config (ld.so.conf.d, python's sitecustomize); ours is written after
        "usr/share",  # doc, man, locale, lintian, binfmts, initramfs-tools hooks
        "usr/include",
        "usr/libexec",
        "usr/lib/binfmt.d",
        "usr/lib/x86_64-linux-gnu/gconv",  # iconv modules (8 MB); python never uses iconv
        "usr/lib/x86_64-linux-gnu/pkgconfig",
        *(
            f"{PY_LIB}/{name}"
            for name in (
                "test",
                "ctypes/test",
                "idlelib",
                "tkinter",
                "turtledemo",
                "turtle.py",
                "lib2to3",
                "ensurepip",
                "venv",
                "pydoc.py",
                "pydoc_data",
                "distutils",
                "unittest",
                "doctest.py",
                "sqlite3",
                "dbm",
                "curses",
                "wsgiref",
                "xmlrpc",
                "__phello__",
                "sitecustomize.py",  # a link into /etc/python3.11, and -S skips it anyway
                "site-packages",
                "dist-packages",
            )
        ),
    }
)

#: Extension modules dropped: their libraries are not shipped, or nothing here uses them.
DROPPED_EXTENSIONS: Final = (
    "_test*",
    "_ctypes_test",
    "_xxtestfuzz",
    "_xxsubinterpreters",
    "xxlimited*",
    "audioop",
    "ossaudiodev",
    "nis",  # libnsl2, libtirpc3
    "readline",  # libreadline8
    "_curses*",  # libncursesw6
    "_dbm",  # libdb5.3
    "_sqlite3",  # libsqlite3-0
    "_crypt",  # libcrypt1
    "_bz2",  # libbz2-1.0
    "_uuid",  # libuuid1 (uuid falls back to pure python)
    "_hashlib",  # libssl3 (hashlib falls back to the built-in hashes)
    "_ssl",  # libssl3
    "_codecs_*",  # CJK codecs
    "_multibytecodec",
)

PRUNE_GLOBS: Final = (
    f"{PY_LIB}/config-3.11-*",
    "*.a",
    "*.la",
    "lib/x86_64-linux-gnu/libmemusage.so",
    "lib/x86_64-linux-gnu/libpcprofile.so",
    "lib/x86_64-linux-gnu/libc_malloc_debug.so*",
    "lib/x86_64-linux-gnu/libthread_db.so*",
    "lib/x86_64-linux-gnu/libBrokenLocale.so*",
    *(f"{PY_LIB}/lib-dynload/{m}.cpython-311-x86_64-linux-gnu.so" for m in DROPPED_EXTENSIONS),
)

#: Imported by the guest interpreter at build time, from .pyc only, or the build fails.
REQUIRED_MODULES: Final = (
    "asyncio",
    "base64",
    "concurrent.futures",
    "ctypes",
    "ctypes.util",
    "dataclasses",
    "enum",
    "errno",
    "fcntl",
    "hashlib",
    "json",
    "logging",
    "logging.handlers",
    "os",
    "pathlib",
    "pty",
    "resource",
    "selectors",
    "shutil",
    "signal",
    "socket",
    "struct",
    "subprocess",
    "tempfile",
    "termios",
    "traceback",
    "typing",
    "zlib",
)

Progress = Callable[[str], None]


class RootfsError(Exception):
    """The guest root cannot be built, or a built root fails its checks."""


# --------------------------------------------------------------------------- pure parts


def is_pruned(rel: str) -> bool:
    """Whether the root-relative path ``rel`` (``usr/share/doc/x``) is left out of the guest."""
    rel = rel.strip("/")
    parts = rel.split("/")
    for i in range(1, len(parts) + 1):
        if "/".join(parts[:i]) in PRUNE_TREES:
            return True
    parent = "/".join(parts[:-1])
    if parent in BIN_DIRS and rel not in KEEP_BINARIES:
        return True
    return any(fnmatch.fnmatchcase(rel, pattern) for pattern in PRUNE_GLOBS)


def agent_files(agent_dir: Path, protocol_py: Path) -> dict[str, bytes]:
    """The agent package as it lands in the guest: relative path -> bytes.

    Every ``.py`` under ``agent_dir`` (``__pycache__`` excluded), plus
    ``protocol_py`` as ``protocol.py`` (it wins over a copy in ``agent_dir``).
    """
    if not agent_dir.is_dir():
        raise RootfsError(f"agent directory {agent_dir} does not exist")
    files: dict[str, bytes] = {}
    for path in sorted(agent_dir.rglob("*.py")):
        rel = path.relative_to(agent_dir)
        if "__pycache__" in rel.parts or not path.is_file():
            continue
        files[rel.as_posix()] = path.read_bytes()
    files["protocol.py"] = protocol_py.read_bytes()
    if "main.py" not in files:
        raise RootfsError(f"{agent_dir} has no main.py (the guest's /init imports it)")
    files.setdefault("__init__.py", b"")
    return dict(sorted(files.items()))


def compute_key(
    packages: Sequence[debs_mod.Deb],
    agent: Mapping[str, bytes],
    builder_version: str = BUILDER_VERSION,
) -> str:
    """SHA-256 (hex) over everything the image is made of."""
    h = hashlib.sha256()

    def item(tag: str, data: bytes) -> None:
        h.update(f"{tag}\0{len(data)}\0".encode())
        h.update(data)

    item("builder", builder_version.encode())
    for deb in packages:
        item("deb", f"{deb.name}\0{deb.version}\0{deb.sha256}".encode())
    for rel, data in sorted(agent.items()):
        item("agent:" + rel, data)
    return h.hexdigest()


def image_dir(cache_dir: Path, key: str) -> Path:
    return cache_dir / f"rootfs-{key[:16]}"


# --------------------------------------------------------------------------- the build


def ensure_rootfs(
    cache_dir: Path,
    *,
    agent_dir: Path,
    protocol_py: Path,
    packages_file: Path,
    progress: Progress | None = None,
) -> Path:
    """Path of an initramfs with the current packages and agent, built if not cached."""
    cache_dir.mkdir(parents=True, exist_ok=True)
    names = debs_mod.read_package_list(packages_file)
    packages = debs_mod.resolve(names, cache_dir)
    agent = agent_files(agent_dir, protocol_py)
    key = compute_key(packages, agent)
    final = image_dir(cache_dir, key)
    image = final / IMAGE_NAME
    if image.is_file():
        return image
    with _locked(cache_dir / LOCK_NAME):
        if image.is_file():  # another builder finished while we waited
            return image
        _build(cache_dir, final, key, packages, agent, progress)
    return image


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    with path.open("a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _build(
    cache_dir: Path,
    final: Path,
    key: str,
    packages: Sequence[debs_mod.Deb],
    agent: Mapping[str, bytes],
    progress: Progress | None,
) -> None:
    say = progress or (lambda _msg: None)
    started = time.monotonic()
    deb_paths = debs_mod.fetch(packages, cache_dir / DEBS_DIR_NAME, progress)
    work = Path(tempfile.mkdtemp(dir=cache_dir, prefix=".rootfs-build-"))
    try:
        root = work / "root"
        root.mkdir()
        say(f"unpacking {len(deb_paths)} packages")
        for deb in deb_paths:
            debs_mod.extract(deb, root)
        removed = prune(root)
        say(f"pruned {removed} paths")
        install_agent(root, agent)
        populate(root)
        say("precompiling python")
        compile_python(root)
        say("checking the root")
        verify_root(root)
        out = work / "out"
        out.mkdir()
        say("packing the initramfs")
        with (out / IMAGE_NAME).open("wb") as f:
            writer = pack_tree(root, f, devices=DEVICES)
        size = (out / IMAGE_NAME).stat().st_size
        erofs = build_erofs(root, out / EROFS_NAME)
        manifest = {
            "key": key,
            "builder_version": BUILDER_VERSION,
            "built_at": datetime.now(UTC).isoformat(timespec="seconds"),
            "build_seconds": round(time.monotonic() - started, 2),
            "format": "newc cpio, uncompressed",
            "size": size,
            "files": writer.entries - 1,  # without the trailer
            "sha256": debs_mod.sha256_file(out / IMAGE_NAME),
            "packages": [{"name": d.name, "version": d.version, "sha256": d.sha256} for d in packages],
            "agent_files": sorted(agent),
            "erofs": None
            if erofs is None
            else {
                "file": EROFS_NAME,
                "size": erofs.stat().st_size,
                "sha256": debs_mod.sha256_file(erofs),
            },
        }
        (out / MANIFEST_NAME).write_text(json.dumps(manifest, indent=2) + "\n")
        (out / IMAGE_NAME).chmod(0o644)
        try:
            os.rename(out, final)
        except OSError:
            if not (final / IMAGE_NAME).is_file():
                raise
        say(f"built {final / IMAGE_NAME} ({size / 1e6:.1f} MB) in {manifest['build_seconds']} s")
    finally:
        shutil.rmtree(work, ignore_errors=True)


def prune(root: Path) -> int:
    """Deletes every pruned path under ``root``; returns how many were removed."""
    removed = 0
    for dirpath, dirnames, filenames in os.walk(root, topdown=True):
        base = Path(dirpath)
        rel_base = base.relative_to(root).as_posix()
        prefix = "" if rel_base == "." else rel_base + "/"
        for name in list(dirnames):
            path = base / name
            if is_pruned(prefix + name):
                if path.is_symlink():
                    path.unlink()
                else:
                    shutil.rmtree(path)
                dirnames.remove(name)
                removed += 1
        for name in filenames:
            if is_pruned(prefix + name):
                (base / name).unlink()
                removed += 1
    return removed


def install_agent(root: Path, agent: Mapping[str, bytes]) -> None:
    target = root / AGENT_DIR_IN_ROOT
    if target.exists():
        raise RootfsError(f"/{AGENT_DIR_IN_ROOT} already exists in the packages")
    for rel, data in agent.items():
        path = target / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        path.chmod(0o644)
    for directory in [target, *(p for p in target.rglob("*") if p.is_dir())]:
        directory.chmod(0o755)


def populate(root: Path) -> None:
    """Directories, /etc, /init and busybox's applet links."""
    for rel, perm in DIRECTORIES:
        path = root / rel
        path.mkdir(parents=True, exist_ok=True)
        path.chmod(perm)
    for rel, text in ETC_FILES.items():
        (root / rel).write_text(text)
        (root / rel).chmod(0o644)
    (root / "var/run").symlink_to("/run")
    init = root / "init"
    init.write_text(INIT_SCRIPT)
    init.chmod(0o755)
    link_busybox(root)


def build_erofs(root: Path, out: Path) -> Path | None:
    """The root as a reproducible erofs image (uncompressed), or None without mkfs.erofs."""
    if shutil.which("mkfs.erofs") is None:
        return None
    proc = subprocess.run(
        [
            "mkfs.erofs",
            "--quiet",
            "--all-root",
            "-T0",
            "-U",
            "00000000-0000-0000-0000-000000000000",
            str(out),
            str(root),
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    if proc.returncode != 0:
        raise RootfsError(f"mkfs.erofs failed: {proc.stderr.strip()}")
    out.chmod(0o644)
    return out


def erofs_image(image: Path) -> Path | None:
    """The erofs twin of an initramfs built by :func:`ensure_rootfs`, if one was built."""
    candidate = image.parent / EROFS_NAME
    return candidate if candidate.is_file() else None


def link_busybox(root: Path) -> int:
    """Links every applet as ``/bin/<applet>`` and at busybox's own path (``/sbin/ip``)."""
    busybox = root / "bin/busybox"
    proc = subprocess.run([str(busybox), "--list-full"], capture_output=True, text=True, check=False)
    if proc.returncode != 0 or not proc.stdout.strip():
        raise RootfsError(f"busybox --list-full failed: {proc.stderr.strip()}")
    made = 0
    for line in sorted(proc.stdout.split()):
        rel = line.strip("/")
        applet = rel.rsplit("/", 1)[-1]
        if applet in ("busybox", "") or "/" in applet:
            continue
        for link, target in ((f"bin/{applet}", "busybox"), (rel, "/bin/busybox")):
            path = root / link
            if os.path.lexists(path):
                continue
            path.parent.mkdir(parents=True, exist_ok=True)
            path.symlink_to(target)
            made += 1
    for needed in ("sh", "mount", "umount", "ip", "poweroff", "reboot", "cat", "ls"):
        if not os.path.lexists(root / "bin" / needed):
            raise RootfsError(f"busybox has no {needed} applet")
    return made


def guest_python_argv(root: Path) -> list[str]:
    """Runs the guest's python on the host through the guest's own loader and libraries."""
    loader = resolve_in_root(root, "/lib64/ld-linux-x86-64.so.2")
    if loader is None:
        raise RootfsError("the root has no /lib64/ld-linux-x86-64.so.2")
    lib_path = ":".join(str(root / d) for d in ("lib/x86_64-linux-gnu", "usr/lib/x86_64-linux-gnu"))
    return [str(loader), "--library-path", lib_path, str(root / GUEST_PYTHON.lstrip("/"))]


def compile_python(root: Path) -> None:
    """Writes ``__pycache__/*.cpython-311.pyc`` (unchecked-hash) for all python in the root.

    Filenames inside the bytecode are the guest's (``/usr/lib/python3.11/…``).
    """
    argv = [
        *guest_python_argv(root),
        "-I",
        "-S",
        "-B",  # else the imports of compileall itself leave timestamp pycs it then keeps
        "-m",
        "compileall",
        "-q",
        "-f",
        "-j",
        "0",
        "--invalidation-mode",
        "unchecked-hash",
        "-s",
        str(root),
        "-p",
        "/",
        str(root / PY_LIB),
    ]
    proc = subprocess.run(argv, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise RootfsError(
            f"compileall failed ({proc.returncode}):\n{proc.stdout[-4000:]}{proc.stderr[-4000:]}"
        )


PYC_MAGIC_311: Final = (3495).to_bytes(2, "little") + b"\r\n"  # CPython 3.11 final
_PYC_HASH_BASED: Final = 0b01
_PYC_CHECK_SOURCE: Final = 0b10


def stale_pycs(lib_dir: Path, cache_tag: str = "cpython-311") -> list[str]:
    """Sources under ``lib_dir`` whose ``.pyc`` the guest would not use as is.

    A usable one exists next to the source (``__pycache__/<name>.<tag>.pyc``),
    has 3.11's magic and is hash-based without source checking ("unchecked
    hash"), so the guest neither stats nor hashes the source, whatever the
    mtimes in the cpio.  Returns the offending sources, relative to ``lib_dir``.
    """
    bad: list[str] = []
    for source in sorted(lib_dir.rglob("*.py")):
        pyc = source.parent / "__pycache__" / f"{source.stem}.{cache_tag}.pyc"
        try:
            with pyc.open("rb") as f:
                header = f.read(8)
        except OSError:
            bad.append(source.relative_to(lib_dir).as_posix())
            continue
        flags = int.from_bytes(header[4:8], "little") if len(header) == 8 else -1
        if (
            header[:4] != PYC_MAGIC_311
            or flags < 0
            or not flags & _PYC_HASH_BASED
            or flags & _PYC_CHECK_SOURCE
        ):
            bad.append(source.relative_to(lib_dir).as_posix())
    return bad


_SMOKE_TEST: Final = r"""
import sys
compiled = []
def hook(event, args):
    if event == "compile" and isinstance(args[1], str) and args[1].endswith(".py"):
        compiled.append(args[1])
sys.addaudithook(hook)
import importlib, importlib.util, json, pkgutil
names = sys.argv[1:]
del sys.argv[1:]
import vmrt_agent
names += sorted(
    m.name
    for m in pkgutil.walk_packages(vmrt_agent.__path__, "vmrt_agent.")
    if not m.name.endswith(".__main__")  # runs the agent when imported
)
failed = {}
for name in names:
    try:
        importlib.import_module(name)
    except ImportError as e:
        failed[name] = f"{type(e).__name__}: {e}"
    except BaseException as e:
        failed[name] = f"(on the build host) {type(e).__name__}: {e}"
import hashlib
hashlib.sha256(b"").hexdigest()
print(json.dumps({"compiled": compiled, "failed": failed, "magic": list(importlib.util.MAGIC_NUMBER)}))
"""


def verify_root(root: Path) -> None:
    """Fails loudly on an unresolved library, a dangling link, or a module the guest lacks."""
    checked, missing = check_closure(root)
    if checked == 0:
        raise RootfsError("no ELF files in the root")
    if missing:
        raise RootfsError(
            "libraries missing from the guest root (add their packages to packages.txt, "
            "or prune the files that need them):\n  " + "\n  ".join(map(str, missing))
        )
    dangling = [
        "/" + p.relative_to(root).as_posix()
        for p in sorted(root.rglob("*"))
        if p.is_symlink() and resolve_in_root(root, "/" + p.relative_to(root).as_posix()) is None
    ]
    if dangling:
        raise RootfsError("dangling symlinks in the guest root:\n  " + "\n  ".join(dangling))
    for required in ("bin/busybox", "bin/sh", "usr/bin/crun", GUEST_PYTHON.lstrip("/"), "init"):
        if resolve_in_root(root, "/" + required) is None:
            raise RootfsError(f"/{required} is missing from the guest root")
    stale = stale_pycs(root / PY_LIB)
    if stale:
        raise RootfsError(
            f"{len(stale)} python sources lack an unchecked-hash .pyc (the guest would "
            "compile them at every boot):\n  " + "\n  ".join(stale[:20])
        )
    proc = subprocess.run(
        [*guest_python_argv(root), "-I", "-S", "-B", "-c", _SMOKE_TEST, *REQUIRED_MODULES],
        capture_output=True,
        text=True,
        check=False,
        cwd=root,
        env={"PATH": "/usr/bin:/bin", "LC_ALL": "C"},
        timeout=120,
    )
    if proc.returncode != 0:
        raise RootfsError(f"the guest python failed its import check:\n{proc.stderr[-4000:]}")
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    if result["failed"]:
        lines = [f"{k}: {v}" for k, v in sorted(result["failed"].items())]
        raise RootfsError(
            "modules the guest cannot import (from the pruned stdlib):\n  " + "\n  ".join(lines)
        )
    if result["compiled"]:
        raise RootfsError(
            "the guest python compiled sources instead of using .pyc files:\n  "
            + "\n  ".join(result["compiled"][:20])
        )
    if proc.stderr.strip():
        raise RootfsError(f"the guest python complained during the import check:\n{proc.stderr}")


# --------------------------------------------------------------------------- inspection


def rootfs_contents_summary(image: Path) -> dict[str, object]:
    """What ``vmrt image info`` shows: size, file count, packages, key, build time."""
    summary: dict[str, object] = {"path": str(image), "exists": image.is_file()}
    if image.is_file():
        summary["size"] = image.stat().st_size
    manifest_path = image.parent / MANIFEST_NAME
    try:
        manifest = json.loads(manifest_path.read_text())
    except (OSError, ValueError):
        summary["manifest"] = None
        return summary
    for field in ("key", "builder_version", "built_at", "build_seconds", "format", "files", "erofs"):
        summary[field] = manifest.get(field)
    summary["packages"] = {p["name"]: p["version"] for p in manifest.get("packages", [])}
    summary["agent_files"] = manifest.get("agent_files", [])
    if summary.get("size") != manifest.get("size"):
        summary["warning"] = "image size differs from the manifest: the image was modified"
    return summary


def cached_rootfs_images(cache_dir: Path) -> list[Path]:
    """Every built initramfs in the cache, newest first (for ``vmrt image info`` / pruning)."""
    images = [p / IMAGE_NAME for p in cache_dir.glob("rootfs-*") if (p / IMAGE_NAME).is_file()]
    return sorted(images, key=lambda p: p.stat().st_mtime, reverse=True)
