"""A short soak (bench/soak.py): mixed lifecycle operations with random SIGKILLs of
shims, monitors and QEMUs, then nothing may be left: no process, mount, file, tap or
orphan `vmrt gc` would find, and no state that lied after a fault."""

from __future__ import annotations

import json
import random
import subprocess
import sys
from pathlib import Path

import pytest

from helpers.runtime import Runtime

pytestmark = pytest.mark.vm

SOAK = Path(__file__).resolve().parents[2] / "bench" / "soak.py"


def test_soak_leaks_nothing(runtime: Runtime, tmp_path: Path) -> None:
    seed = random.randrange(1 << 30)
    out = tmp_path / "soak.json"
    proc = subprocess.run(
        [sys.executable, str(SOAK), "--ops", "40", "--seed", str(seed), "--fault-rate", "0.1",
         "--root", str(runtime.root), "--json", str(out)],
        stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=1500, check=False)
    assert out.exists(), proc.stdout + proc.stderr
    result = json.loads(out.read_text())
    report = f"seed {seed}:\n{proc.stdout}\n{proc.stderr}"
    assert result["leaks"] == {"processes": 0, "mounts": 0, "files": 0, "taps": 0,
                               "gc_orphans": 0}, report
    assert result["lies"] == [], report
    assert result["failed"] == {}, report
    assert sum(result["by_op"].values()) == 40
    assert proc.returncode == 0, report
