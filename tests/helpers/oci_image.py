"""Build container images locally (no registry is reachable from the test machines).

* `rootfs_tar`: a plain tar of a root filesystem, for `podman import`.
* `write_oci_archive`: an OCI image layout (oci-layout, index.json, blobs/sha256/...)
  with one gzip layer, tarred, for `ctr images import`.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import tarfile
from pathlib import Path
from typing import Any

MT_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
MT_CONFIG = "application/vnd.oci.image.config.v1+json"
MT_LAYER_GZ = "application/vnd.oci.image.layer.v1.tar+gzip"
MT_INDEX = "application/vnd.oci.image.index.v1+json"


def _reset(info: tarfile.TarInfo) -> tarfile.TarInfo:
    info.uid = info.gid = 0
    info.uname = info.gname = "root"
    info.mtime = 0
    return info


def rootfs_tar_bytes(rootfs: Path) -> bytes:
    """A deterministic tar of `rootfs` (entries relative to it, owned by root)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for path in sorted(rootfs.rglob("*")):
            rel = path.relative_to(rootfs).as_posix()
            tar.add(path, arcname=rel, recursive=False, filter=_reset)
    return buf.getvalue()


def rootfs_tar(rootfs: Path, dest: Path) -> Path:
    dest.write_bytes(rootfs_tar_bytes(rootfs))
    return dest


def _blob(blobs: dict[str, bytes], data: bytes) -> str:
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    blobs[digest] = data
    return digest


def write_oci_archive(
    rootfs: Path,
    dest: Path,
    *,
    name: str,
    cmd: list[str] | None = None,
    env: list[str] | None = None,
) -> Path:
    """Write an OCI image layout archive of `rootfs` to `dest`, tagged `name`
    (e.g. "docker.io/library/busybox:vmrt-test")."""
    blobs: dict[str, bytes] = {}
    layer_tar = rootfs_tar_bytes(rootfs)
    diff_id = "sha256:" + hashlib.sha256(layer_tar).hexdigest()
    layer_gz = gzip.compress(layer_tar, mtime=0)
    layer_digest = _blob(blobs, layer_gz)
    config: dict[str, Any] = {
        "architecture": "amd64",
        "os": "linux",
        "config": {
            "Env": env or ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],
            "Cmd": cmd or ["sh"],
            "WorkingDir": "/",
        },
        "rootfs": {"type": "layers", "diff_ids": [diff_id]},
        "history": [{"created_by": "vmrt tests: busybox-static rootfs"}],
    }
    config_bytes = json.dumps(config, sort_keys=True).encode()
    config_digest = _blob(blobs, config_bytes)
    manifest = {
        "schemaVersion": 2,
        "mediaType": MT_MANIFEST,
        "config": {"mediaType": MT_CONFIG, "digest": config_digest, "size": len(config_bytes)},
        "layers": [{"mediaType": MT_LAYER_GZ, "digest": layer_digest, "size": len(layer_gz)}],
    }
    manifest_bytes = json.dumps(manifest, sort_keys=True).encode()
    manifest_digest = _blob(blobs, manifest_bytes)
    tag = name.rsplit(":", 1)[1] if ":" in name.rsplit("/", 1)[-1] else "latest"
    index = {
        "schemaVersion": 2,
        "mediaType": MT_INDEX,
        "manifests": [
            {
                "mediaType": MT_MANIFEST,
                "digest": manifest_digest,
                "size": len(manifest_bytes),
                "platform": {"architecture": "amd64", "os": "linux"},
                "annotations": {
                    "io.containerd.image.name": name,
                    "org.opencontainers.image.ref.name": tag,
                },
            }
        ],
    }
    files: dict[str, bytes] = {
        "oci-layout": json.dumps({"imageLayoutVersion": "1.0.0"}).encode(),
        "index.json": json.dumps(index, sort_keys=True).encode(),
    }
    for digest, data in blobs.items():
        files["blobs/sha256/" + digest.split(":", 1)[1]] = data
    with tarfile.open(dest, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for d in ("blobs", "blobs/sha256"):
            info = _reset(tarfile.TarInfo(d))
            info.type = tarfile.DIRTYPE
            info.mode = 0o755
            tar.addfile(info)
        for fname, data in files.items():
            info = _reset(tarfile.TarInfo(fname))
            info.size = len(data)
            info.mode = 0o644
            tar.addfile(info, io.BytesIO(data))
    return dest
