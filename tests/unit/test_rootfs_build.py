"""The guest root builder: cpio writer, pruning rules, cache key, ELF checks.

Everything but the ``vm``-marked test runs in well under a second and needs
neither apt nor network.  The ``vm`` test builds (or reuses from the cache)
the real initramfs.
"""

from __future__ import annotations

import io
import os
import shutil
import stat
import struct
import subprocess
from pathlib import Path

import pytest

from vmrt.image import cpio, elf, rootfs
from vmrt.image.debs import Deb, PackageError, parse_print_uris, read_package_list

REPO = Path(__file__).resolve().parents[2]
PACKAGES_TXT = REPO / "images" / "packages.txt"
PROTOCOL_PY = REPO / "src" / "vmrt" / "protocol.py"
AGENT_DIR = REPO / "guest-agent" / "vmrt_agent"


# --------------------------------------------------------------------------- cpio


def test_cpio_layout_and_padding(tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "bin").mkdir(parents=True)
    (root / "bin" / "tool").write_bytes(b"12345")
    (root / "bin" / "tool").chmod(0o755)
    (root / "etc").mkdir()
    (root / "etc" / "empty").write_bytes(b"")
    (root / "etc" / "link").symlink_to("/bin/tool")
    out = io.BytesIO()
    writer = cpio.pack_tree(root, out, devices=[cpio.DeviceNode("dev/console", stat.S_IFCHR | 0o600, 5, 1)])
    data = out.getvalue()
    assert len(data) % 4 == 0
    assert data.startswith(b"070701")
    entries = cpio.read_newc(data)
    names = [e.name for e in entries]
    assert names == ["bin", "bin/tool", "etc", "etc/empty", "etc/link", "dev/console"]
    assert writer.entries == len(entries) + 1  # + trailer
    by_name = {e.name: e for e in entries}
    assert by_name["bin/tool"].data == b"12345"
    assert stat.S_IMODE(by_name["bin/tool"].mode) == 0o755
    assert stat.S_ISREG(by_name["bin/tool"].mode)
    assert stat.S_ISDIR(by_name["bin"].mode)
    assert stat.S_ISLNK(by_name["etc/link"].mode)
    assert by_name["etc/link"].data == b"/bin/tool"
    assert stat.S_ISCHR(by_name["dev/console"].mode)
    assert by_name["dev/console"].rdev == (5, 1)
    assert all(e.uid == 0 and e.gid == 0 and e.mtime == 0 for e in entries)
    assert data.rstrip(b"\0").endswith(b"TRAILER!!!")


def test_cpio_is_reproducible(tmp_path: Path) -> None:
    root = tmp_path / "root"
    root.mkdir()
    for name in ("b", "a", "c"):
        (root / name).write_text(name * 7)
    first, second = io.BytesIO(), io.BytesIO()
    cpio.pack_tree(root, first)
    os.utime(root / "a", (1, 1))  # mtimes do not leak into the archive
    cpio.pack_tree(root, second)
    assert first.getvalue() == second.getvalue()


def test_cpio_matches_gnu_cpio(tmp_path: Path) -> None:
    if shutil.which("cpio") is None:
        pytest.skip("no cpio")
    root = tmp_path / "root"
    (root / "d").mkdir(parents=True)
    (root / "d" / "f").write_bytes(bytes(range(256)) * 3 + b"x")
    (root / "l").symlink_to("d/f")
    archive = tmp_path / "a.cpio"
    with archive.open("wb") as f:
        cpio.pack_tree(root, f)
    out = tmp_path / "out"
    out.mkdir()
    subprocess.run(
        ["cpio", "-idm", "--quiet", "--no-absolute-filenames"],
        stdin=archive.open("rb"),
        cwd=out,
        check=True,
    )
    assert (out / "d" / "f").read_bytes() == (root / "d" / "f").read_bytes()
    assert os.readlink(out / "l") == "d/f"


def test_cpio_rejects_absolute_names() -> None:
    writer = cpio.CpioWriter(io.BytesIO())
    with pytest.raises(ValueError):
        writer.add_bytes("/etc/passwd", b"")


# --------------------------------------------------------------------------- pruning


@pytest.mark.parametrize(
    "path",
    [
        "usr/share/doc/libc6/copyright",
        "usr/share/man/man1/crun.1.gz",
        "usr/share/locale/de/LC_MESSAGES/libc.mo",
        "usr/lib/x86_64-linux-gnu/gconv/UTF-16.so",
        "usr/lib/python3.11/test/test_os.py",
        "usr/lib/python3.11/idlelib",
        "usr/lib/python3.11/tkinter/__init__.py",
        "usr/lib/python3.11/lib2to3/main.py",
        "usr/lib/python3.11/ensurepip",
        "usr/lib/python3.11/pydoc_data/topics.py",
        "usr/lib/python3.11/distutils/core.py",
        "usr/lib/python3.11/unittest/mock.py",
        "usr/lib/python3.11/sqlite3/__init__.py",
        "usr/lib/python3.11/turtledemo",
        "usr/lib/python3.11/config-3.11-x86_64-linux-gnu/Makefile",
        "usr/lib/python3.11/lib-dynload/_ssl.cpython-311-x86_64-linux-gnu.so",
        "usr/lib/python3.11/lib-dynload/_testcapi.cpython-311-x86_64-linux-gnu.so",
        "usr/lib/python3.11/lib-dynload/_sqlite3.cpython-311-x86_64-linux-gnu.so",
        "usr/lib/x86_64-linux-gnu/libcrun.a",
        "usr/bin/getconf",
        "sbin/ldconfig",
        "etc/ld.so.conf.d/x86_64-linux-gnu.conf",
    ],
)
def test_pruned(path: str) -> None:
    assert rootfs.is_pruned(path)


@pytest.mark.parametrize(
    "path",
    [
        "bin/busybox",
        "usr/bin/python3.11",
        "usr/bin/crun",
        "lib/x86_64-linux-gnu/libc.so.6",
        "lib64/ld-linux-x86-64.so.2",
        "usr/lib/x86_64-linux-gnu/libffi.so.8",
        "usr/lib/python3.11/os.py",
        "usr/lib/python3.11/asyncio/base_events.py",
        "usr/lib/python3.11/json/decoder.py",
        "usr/lib/python3.11/ctypes/__init__.py",
        "usr/lib/python3.11/logging/handlers.py",
        "usr/lib/python3.11/encodings/utf_8.py",
        "usr/lib/python3.11/lib-dynload/_ctypes.cpython-311-x86_64-linux-gnu.so",
        "usr/lib/python3.11/lib-dynload/_asyncio.cpython-311-x86_64-linux-gnu.so",
        "usr/lib/python3.11/lib-dynload/termios.cpython-311-x86_64-linux-gnu.so",
        "usr/lib/python3.11/lib-dynload/_json.cpython-311-x86_64-linux-gnu.so",
        "usr/lib/python3.11/unittest_helper.py",  # a prefix of a pruned name is not pruned
    ],
)
def test_kept(path: str) -> None:
    assert not rootfs.is_pruned(path)


def test_prune_removes_only_pruned(tmp_path: Path) -> None:
    for rel in ("usr/share/doc/x/copyright", "usr/bin/crun", "usr/bin/getconf", "bin/busybox"):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text("x")
    assert rootfs.prune(tmp_path) == 2  # usr/share (a tree) and usr/bin/getconf
    assert (tmp_path / "usr/bin/crun").exists()
    assert (tmp_path / "bin/busybox").exists()
    assert not (tmp_path / "usr/share").exists()
    assert not (tmp_path / "usr/bin/getconf").exists()


# --------------------------------------------------------------------------- key


def _agent(tmp_path: Path, body: str = "def main() -> None: ...\n") -> tuple[Path, Path]:
    agent = tmp_path / "vmrt_agent"
    agent.mkdir(exist_ok=True)
    (agent / "__init__.py").write_text("")
    (agent / "main.py").write_text(body)
    (agent / "__pycache__").mkdir(exist_ok=True)
    (agent / "__pycache__" / "main.cpython-311.pyc").write_bytes(b"junk")
    (agent / "notes.txt").write_text("not python")
    protocol = tmp_path / "protocol.py"
    if not protocol.exists():
        protocol.write_text("VERSION = 1\n")
    return agent, protocol


DEBS = [Deb("crun", "1.8.1-1+deb12u1", "crun_1.8.1-1+deb12u1_amd64.deb", 1, "ab" * 32)]


def test_agent_files_selection(tmp_path: Path) -> None:
    agent, protocol = _agent(tmp_path)
    files = rootfs.agent_files(agent, protocol)
    assert sorted(files) == ["__init__.py", "main.py", "protocol.py"]
    assert files["protocol.py"] == b"VERSION = 1\n"


def test_key_changes_with_agent_protocol_packages_and_builder(tmp_path: Path) -> None:
    agent, protocol = _agent(tmp_path)
    base = rootfs.compute_key(DEBS, rootfs.agent_files(agent, protocol))
    # stable
    assert base == rootfs.compute_key(DEBS, rootfs.agent_files(agent, protocol))
    # __pycache__ and non-.py files do not matter
    (agent / "__pycache__" / "main.cpython-311.pyc").write_bytes(b"other junk")
    (agent / "notes.txt").write_text("changed")
    assert base == rootfs.compute_key(DEBS, rootfs.agent_files(agent, protocol))
    # the agent does
    (agent / "main.py").write_text("def main() -> None: print('hi')\n")
    changed_agent = rootfs.compute_key(DEBS, rootfs.agent_files(agent, protocol))
    assert changed_agent != base
    # a new module does
    (agent / "extra.py").write_text("")
    assert rootfs.compute_key(DEBS, rootfs.agent_files(agent, protocol)) != changed_agent
    files = rootfs.agent_files(agent, protocol)
    key = rootfs.compute_key(DEBS, files)
    # the protocol does
    protocol.write_text("VERSION = 2\n")
    assert rootfs.compute_key(DEBS, rootfs.agent_files(agent, protocol)) != key
    # a package version does
    newer = [Deb("crun", "1.8.2-1", "crun_1.8.2-1_amd64.deb", 1, "cd" * 32)]
    assert rootfs.compute_key(newer, files) != key
    # the builder does
    assert rootfs.compute_key(DEBS, files, "rootfs-999") != key


def test_agent_without_main_is_refused(tmp_path: Path) -> None:
    agent = tmp_path / "vmrt_agent"
    agent.mkdir()
    (tmp_path / "protocol.py").write_text("")
    with pytest.raises(rootfs.RootfsError, match=r"main\.py"):
        rootfs.agent_files(agent, tmp_path / "protocol.py")


# --------------------------------------------------------------------------- packages


def test_packages_txt_parses() -> None:
    names = read_package_list(PACKAGES_TXT)
    for needed in ("busybox-static", "crun", "python3.11-minimal", "libc6", "libffi8"):
        assert needed in names
    assert "libssl3" not in names


def test_package_list_rejects_duplicates(tmp_path: Path) -> None:
    p = tmp_path / "p.txt"
    p.write_text("crun\n# comment\ncrun  # again\n")
    with pytest.raises(PackageError, match="twice"):
        read_package_list(p)


def test_parse_print_uris() -> None:
    out = (
        "'http://deb.debian.org/debian/pool/main/b/busybox/busybox-static_1.35.0-4%2bdeb12u1"
        "%2bb1_amd64.deb' busybox-static_1%3a1.35.0-4+deb12u1+b1_amd64.deb 928188 "
        "SHA256:3d3fdbe91d4660c873e14b092c213fe81c1da6362daa236eb25d0171eb108744\n"
    )
    (deb,) = parse_print_uris(out)
    assert deb.name == "busybox-static"
    assert deb.version == "1:1.35.0-4+deb12u1+b1"
    assert deb.pin == "busybox-static=1:1.35.0-4+deb12u1+b1"
    assert deb.size == 928188
    assert deb.sha256.startswith("3d3fdbe9")


# --------------------------------------------------------------------------- ELF / pyc


def test_parse_elf_of_host_binaries() -> None:
    info = elf.parse_elf(Path("/usr/bin/python3.11").read_bytes())
    assert info.interpreter == "/lib64/ld-linux-x86-64.so.2"
    assert "libc.so.6" in info.needed


def test_resolve_in_root_stays_inside(tmp_path: Path) -> None:
    (tmp_path / "lib/x86_64-linux-gnu").mkdir(parents=True)
    (tmp_path / "lib/x86_64-linux-gnu/ld.so").write_text("")
    (tmp_path / "lib64").mkdir()
    (tmp_path / "lib64/ld.so").symlink_to("/lib/x86_64-linux-gnu/ld.so")
    (tmp_path / "escape").symlink_to("/etc/passwd")  # exists on the host, not in the root
    assert elf.resolve_in_root(tmp_path, "/lib64/ld.so") == tmp_path / "lib/x86_64-linux-gnu/ld.so"
    assert elf.resolve_in_root(tmp_path, "/escape") is None


def test_closure_reports_missing_library(tmp_path: Path) -> None:
    (tmp_path / "usr/bin").mkdir(parents=True)
    shutil.copy("/usr/bin/python3.11", tmp_path / "usr/bin/python3.11")
    checked, missing = elf.check_closure(tmp_path)
    assert checked == 1
    kinds = {(m.kind, m.what) for m in missing}
    assert ("interpreter", "/lib64/ld-linux-x86-64.so.2") in kinds
    assert ("library", "libc.so.6") in kinds
    assert all(m.path == "/usr/bin/python3.11" for m in missing)


def _pyc(flags: int) -> bytes:
    return rootfs.PYC_MAGIC_311 + struct.pack("<I", flags) + b"\0" * 8


def test_stale_pycs(tmp_path: Path) -> None:
    (tmp_path / "__pycache__").mkdir()
    for name, flags in (("good", 0b01), ("checked", 0b11), ("timestamp", 0b00)):
        (tmp_path / f"{name}.py").write_text("")
        (tmp_path / "__pycache__" / f"{name}.cpython-311.pyc").write_bytes(_pyc(flags))
    (tmp_path / "missing.py").write_text("")
    assert rootfs.stale_pycs(tmp_path) == ["checked.py", "missing.py", "timestamp.py"]


def test_summary_without_manifest(tmp_path: Path) -> None:
    image = tmp_path / "initrd.img"
    image.write_bytes(b"x" * 8)
    summary = rootfs.rootfs_contents_summary(image)
    assert summary["size"] == 8
    assert summary["manifest"] is None


# --------------------------------------------------------------------------- the real image


@pytest.mark.vm
def test_real_rootfs(tmp_path: Path) -> None:
    if shutil.which("apt-get") is None or shutil.which("dpkg-deb") is None:
        pytest.skip("needs apt-get and dpkg-deb")
    agent_dir = AGENT_DIR
    if not (agent_dir / "main.py").is_file():  # the agent is not written yet
        agent_dir, _ = _agent(tmp_path)
    cache = Path(os.environ.get("VMRT_CACHE_DIR", Path.home() / ".cache" / "vmrt"))
    kwargs = {"agent_dir": agent_dir, "protocol_py": PROTOCOL_PY, "packages_file": PACKAGES_TXT}
    image = rootfs.ensure_rootfs(cache, **kwargs)  # type: ignore[arg-type]
    assert image.name == "initrd.img"
    assert rootfs.ensure_rootfs(cache, **kwargs) == image  # type: ignore[arg-type]

    summary = rootfs.rootfs_contents_summary(image)
    assert summary["size"] == image.stat().st_size
    assert isinstance(summary["files"], int) and summary["files"] > 100
    packages = summary["packages"]
    assert isinstance(packages, dict) and "crun" in packages

    root = tmp_path / "unpacked"
    root.mkdir()
    entries = cpio.read_newc(image.read_bytes())
    for entry in entries:
        path = root / entry.name
        if stat.S_ISDIR(entry.mode):
            path.mkdir(parents=True, exist_ok=True)
        elif stat.S_ISLNK(entry.mode):
            path.symlink_to(entry.data.decode())
        elif stat.S_ISREG(entry.mode):
            path.write_bytes(entry.data)
    names = {e.name for e in entries}
    for needed in ("usr/bin/python3.11", "usr/bin/crun", "bin/busybox", "init", "dev/console"):
        assert needed in names
    assert "usr/lib/python3.11/vmrt_agent/__pycache__/main.cpython-311.pyc" in names
    assert (root / "init").read_text().startswith("#!/usr/bin/python3.11 -IS\n")
    assert os.readlink(root / "bin/sh") == "busybox"
    checked, missing = elf.check_closure(root)
    assert checked > 20
    assert missing == []
    assert rootfs.stale_pycs(root / "usr/lib/python3.11") == []
    assert all(e.uid == 0 and e.gid == 0 for e in entries)
    if shutil.which("mkfs.erofs"):
        erofs = rootfs.erofs_image(image)
        assert erofs is not None
        assert erofs.read_bytes()[1024:1028] == b"\xe2\xe1\xf5\xe0"  # EROFS_SUPER_MAGIC_V1
