"""A deterministic writer of the ``newc`` cpio format the kernel unpacks as an initramfs.

Written in Python rather than driving ``cpio -o`` so that the archive can
contain device nodes (``/dev/console``) without ``mknod`` on the host, every
entry is owned by root whoever builds it, and the output is byte-for-byte
reproducible: entries in sorted order, inode numbers assigned sequentially,
every mtime the same constant.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Final

NEWC_MAGIC: Final = b"070701"
TRAILER: Final = "TRAILER!!!"
HEADER_LEN: Final = 110
_CHUNK: Final = 1 << 20


def _pad4(n: int) -> int:
    return (4 - n % 4) % 4


@dataclass(frozen=True)
class DeviceNode:
    """A device node to put into the archive that does not exist in the tree."""

    path: str  # relative, e.g. "dev/console"
    mode: int  # including the type bits, e.g. stat.S_IFCHR | 0o600
    major: int
    minor: int


class CpioWriter:
    """Streams ``newc`` entries to a binary file object."""

    def __init__(self, out: BinaryIO, *, mtime: int = 0) -> None:
        self._out = out
        self._mtime = mtime
        self._ino = 0
        self._closed = False
        self.entries = 0
        self.bytes_written = 0

    def _write(self, data: bytes) -> None:
        self._out.write(data)
        self.bytes_written += len(data)

    def _header(
        self, name: str, mode: int, size: int, *, nlink: int = 1, rdev: tuple[int, int] = (0, 0)
    ) -> None:
        if self._closed:
            raise ValueError("archive already closed")
        if name.startswith("/") or not name:
            raise ValueError(f"cpio names are relative and non-empty: {name!r}")
        encoded = name.encode() + b"\0"
        self._ino += 1
        fields = (
            self._ino,  # c_ino
            mode,  # c_mode
            0,  # c_uid
            0,  # c_gid
            nlink,  # c_nlink
            self._mtime,  # c_mtime
            size,  # c_filesize
            0,  # c_devmajor
            0,  # c_devminor
            rdev[0],  # c_rdevmajor
            rdev[1],  # c_rdevminor
            len(encoded),  # c_namesize
            0,  # c_check
        )
        for value in fields:
            if not 0 <= value <= 0xFFFFFFFF:
                raise ValueError(f"cpio field out of range for {name!r}: {value}")
        header = NEWC_MAGIC + b"".join(b"%08X" % v for v in fields)
        self._write(header + encoded + b"\0" * _pad4(HEADER_LEN + len(encoded)))
        self.entries += 1

    def add_dir(self, name: str, perm: int = 0o755) -> None:
        self._header(name, stat.S_IFDIR | (perm & 0o7777), 0, nlink=2)

    def add_bytes(self, name: str, data: bytes, perm: int = 0o644) -> None:
        self._header(name, stat.S_IFREG | (perm & 0o7777), len(data))
        self._write(data + b"\0" * _pad4(len(data)))

    def add_file(self, name: str, source: Path, perm: int | None = None) -> None:
        st = source.stat()
        mode = stat.S_IMODE(st.st_mode) if perm is None else perm
        size = st.st_size
        self._header(name, stat.S_IFREG | mode, size)
        copied = 0
        with source.open("rb") as f:
            while chunk := f.read(_CHUNK):
                copied += len(chunk)
                if copied > size:
                    break
                self._write(chunk)
        if copied != size:
            raise OSError(f"{source} changed size while being archived")
        self._write(b"\0" * _pad4(size))

    def add_symlink(self, name: str, target: str) -> None:
        data = target.encode()
        self._header(name, stat.S_IFLNK | 0o777, len(data))
        self._write(data + b"\0" * _pad4(len(data)))

    def add_device(self, node: DeviceNode) -> None:
        kind = stat.S_IFMT(node.mode)
        if kind not in (stat.S_IFCHR, stat.S_IFBLK):
            raise ValueError(f"not a device mode: {node.mode:o}")
        self._header(node.path, node.mode, 0, rdev=(node.major, node.minor))

    def close(self) -> None:
        """Writes the trailer; the archive is complete afterwards."""
        self._header(TRAILER, 0, 0, nlink=1)
        self._closed = True


def tree_entries(root: Path) -> list[str]:
    """Every path under ``root`` (not ``root`` itself), relative, parents first, sorted."""
    found: list[str] = []

    def walk(directory: Path, prefix: str) -> None:
        with os.scandir(directory) as it:
            names = sorted(entry.name for entry in it)
        for name in names:
            rel = f"{prefix}{name}"
            found.append(rel)
            path = directory / name
            if path.is_dir() and not path.is_symlink():
                walk(path, rel + "/")

    walk(root, "")
    return found


def pack_tree(root: Path, out: BinaryIO, *, devices: Iterable[DeviceNode] = (), mtime: int = 0) -> CpioWriter:
    """Archives the tree under ``root`` (all owned by root:root) plus ``devices``.

    Regular files, directories and symlinks are supported; anything else in
    the tree (sockets, fifos, device files) is an error -- devices are passed
    explicitly.  Hard links are stored as independent copies.
    """
    writer = CpioWriter(out, mtime=mtime)
    for rel in tree_entries(root):
        path = root / rel
        st = path.lstat()
        perm = stat.S_IMODE(st.st_mode)
        if stat.S_ISLNK(st.st_mode):
            writer.add_symlink(rel, os.readlink(path))
        elif stat.S_ISDIR(st.st_mode):
            writer.add_dir(rel, perm)
        elif stat.S_ISREG(st.st_mode):
            writer.add_file(rel, path, perm)
        else:
            raise ValueError(f"unsupported file type in the image tree: {path}")
    for node in sorted(devices, key=lambda d: d.path):
        writer.add_device(node)
    writer.close()
    return writer


@dataclass(frozen=True)
class CpioEntry:
    """One parsed entry (used by tests and ``vmrt image info``)."""

    name: str
    mode: int
    uid: int
    gid: int
    mtime: int
    rdev: tuple[int, int]
    data: bytes


def read_newc(data: bytes) -> list[CpioEntry]:
    """Parses a ``newc`` archive (up to its trailer) -- a reader for checks, not for speed."""
    entries: list[CpioEntry] = []
    pos = 0
    while True:
        if data[pos : pos + 6] != NEWC_MAGIC:
            raise ValueError(f"bad cpio magic at offset {pos}")
        fields = [int(data[pos + 6 + 8 * i : pos + 14 + 8 * i], 16) for i in range(13)]
        namesize = fields[11]
        filesize = fields[6]
        name_start = pos + HEADER_LEN
        name = data[name_start : name_start + namesize - 1].decode()
        pos = name_start + namesize
        pos += _pad4(pos)
        body = data[pos : pos + filesize]
        pos += filesize
        pos += _pad4(pos)
        if name == TRAILER:
            return entries
        entries.append(
            CpioEntry(
                name=name,
                mode=fields[1],
                uid=fields[2],
                gid=fields[3],
                mtime=fields[5],
                rdev=(fields[9], fields[10]),
                data=body,
            )
        )
