"""CLI latency: vmrt's short verbs beside the bare interpreter it runs under and runc."""

from __future__ import annotations

import subprocess
import sys

from lab import RUNC, CallError, Lab, Root, run
from stats import Figure, timed


def _quiet(argv: list[str]) -> None:
    if run(argv, timeout=60) != 0:
        raise CallError(f"{' '.join(argv)} failed")


def interpreter() -> str:
    """The interpreter vmrt's console script runs under (its #! line)."""
    from lab import VMRT

    with open(VMRT, "rb") as f:
        first = f.readline().decode().strip()
    return first[2:].split()[0] if first.startswith("#!") else sys.executable


def cli_latency(lab: Lab, root: Root, container: str, runs: int) -> dict[str, Figure]:
    """`container`: a running container of `root` (and a runc container of the same bundle)."""
    figures: dict[str, Figure] = {}
    python = interpreter()
    figures["python_pass"] = timed(lambda: _quiet([python, "-c", "pass"]), runs,
                                   note=f"{python} -c pass")
    figures["cli_state"] = timed(lambda: _quiet([*root.argv, "state", container]), runs)
    figures["cli_list"] = timed(lambda: _quiet([*root.argv, "list"]), runs)
    figures["cli_version"] = timed(lambda: _quiet([*root.argv, "--version"]), runs)
    runc_root = str(lab.dir / "runc")
    bundle = lab.bundle(["sleep", "1000000"])
    _quiet([RUNC, "--root", runc_root, "run", "-d", "--bundle", str(bundle), "runc-idle"])
    try:
        figures["runc_state"] = timed(lambda: _quiet([RUNC, "--root", runc_root, "state",
                                                      "runc-idle"]), runs)
    finally:
        subprocess.run([RUNC, "--root", runc_root, "delete", "-f", "runc-idle"],
                       capture_output=True, check=False, timeout=60)
    return figures
