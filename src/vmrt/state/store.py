"""State on disk: atomic writes, one flock per object, O_EXCL reservation.

Calls arrive concurrently (CRI-O runs state, kill and exec at once), and a
vmrt process may die at any instruction, so a reader must only ever see a
complete file: write to a temp file, fsync, rename, fsync the directory.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
from collections.abc import Callable, Iterator
from pathlib import Path

from vmrt.errors import ExistsError, NotFoundError, VmrtError
from vmrt.paths import Root
from vmrt.state.model import ContainerState, SandboxState

TYPE_CHECKING = False  # typing is not imported at run time: `vmrt state` pays for every import
if TYPE_CHECKING:
    from typing import Any


def atomic_write(path: Path, data: bytes, mode: int = 0o600) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, mode)
        try:
            os.write(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.rename(tmp, path)
    except OSError as exc:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise VmrtError(f"cannot write {path}: {exc.strerror}") from exc
    dfd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)


def write_json(path: Path, obj: Any) -> None:
    atomic_write(path, json.dumps(obj, indent=1, sort_keys=True).encode())


def read_json(path: Path) -> dict[str, Any]:
    with open(path, "rb") as f:
        data = json.load(f)
    if not isinstance(data, dict):
        raise VmrtError(f"corrupt state file {path}")
    return data


def _rmtree(path: Path) -> None:
    import shutil  # not at import: `vmrt state` removes nothing

    shutil.rmtree(path, ignore_errors=True)


@contextlib.contextmanager
def locked(directory: Path, *, shared: bool = False) -> Iterator[int]:
    """flock the directory itself: no lock file to leak, and the lock dies with its holder."""
    try:
        fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except FileNotFoundError:
        raise NotFoundError() from None
    try:
        fcntl.flock(fd, fcntl.LOCK_SH if shared else fcntl.LOCK_EX)
        yield fd
    finally:
        os.close(fd)


class Store:
    def __init__(self, root: Root) -> None:
        self.root = root

    # --- containers --------------------------------------------------------

    def reserve_container(self, container_id: str) -> Path:
        """Claim an id by creating its directory; the claim is atomic across processes."""
        self.root.ensure()
        cdir = self.root.container(container_id).path
        try:
            cdir.mkdir(mode=0o700)
        except FileExistsError:
            if not self._reclaim_abandoned(cdir):
                raise ExistsError() from None
            cdir.mkdir(mode=0o700)
        except OSError as exc:
            raise VmrtError(f"mkdir {cdir}: {exc.strerror.lower() if exc.strerror else exc}") from exc
        return cdir

    def _reclaim_abandoned(self, cdir: Path) -> bool:
        """A directory without state whose creator died mid-create is debris, not a container."""
        if (cdir / "state.json").exists():
            return False
        try:
            with locked(cdir) as fd:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                if (cdir / "state.json").exists() or (cdir / "creating").exists():
                    return False
                _rmtree(cdir)
                return True
        except (BlockingIOError, NotFoundError):
            return False

    def container_exists(self, container_id: str) -> bool:
        return self.root.container(container_id).state.exists()

    def load_container(self, container_id: str) -> ContainerState:
        try:
            return ContainerState.from_json(read_json(self.root.container(container_id).state))
        except FileNotFoundError:
            raise NotFoundError() from None
        except (ValueError, KeyError, TypeError) as exc:
            raise VmrtError(f"corrupt state for container {container_id}: {exc}") from exc

    def save_container(self, state: ContainerState) -> None:
        write_json(self.root.container(state.id).state, state.to_json())

    def remove_container(self, container_id: str) -> None:
        _rmtree(self.root.container(container_id).path)

    def container_ids(self) -> list[str]:
        try:
            return sorted(p.name for p in self.root.containers.iterdir() if (p / "state.json").exists())
        except FileNotFoundError:
            return []

    def lock_container(self, container_id: str) -> contextlib.AbstractContextManager[int]:
        return locked(self.root.container(container_id).path)

    # --- sandboxes ---------------------------------------------------------

    def create_sandbox_dir(self, sandbox_id: str) -> Path:
        self.root.ensure()
        sdir = self.root.sandbox(sandbox_id).path
        try:
            sdir.mkdir(mode=0o700)
        except FileExistsError:
            raise ExistsError(f"sandbox {sandbox_id} already exists") from None
        return sdir

    def load_sandbox(self, sandbox_id: str) -> SandboxState:
        path = self.root.sandbox(sandbox_id).state
        try:
            return SandboxState.from_json(read_json(path))
        except FileNotFoundError:
            raise NotFoundError(f"sandbox {sandbox_id} does not exist") from None
        except (ValueError, KeyError, TypeError) as exc:
            raise VmrtError(f"corrupt state for sandbox {sandbox_id}: {exc}") from exc

    def save_sandbox(self, state: SandboxState) -> None:
        write_json(self.root.sandbox(state.id).state, state.to_json())

    def update_sandbox(self, sandbox_id: str,
                       change: Callable[[SandboxState], SandboxState]) -> SandboxState:
        with locked(self.root.sandbox(sandbox_id).path):
            new = change(self.load_sandbox(sandbox_id))
            self.save_sandbox(new)
            return new

    def lock_sandbox(self, sandbox_id: str) -> contextlib.AbstractContextManager[int]:
        return locked(self.root.sandbox(sandbox_id).path)

    def sandbox_ids(self) -> list[str]:
        try:
            return sorted(p.name for p in self.root.sandboxes.iterdir()
                          if (p / "sandbox.json").exists())
        except FileNotFoundError:
            return []

    def remove_sandbox(self, sandbox_id: str) -> None:
        _rmtree(self.root.sandbox(sandbox_id).path)
