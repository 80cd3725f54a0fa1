"""Tooling runs as tests: ruff, mypy --strict, and the guest's copy of the protocol."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


def test_ruff() -> None:
    proc = subprocess.run([BIN / "ruff", "check", "src", "guest-agent", "tests"], cwd=REPO,
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_mypy() -> None:
    proc = subprocess.run([BIN / "mypy"], cwd=REPO, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_guest_protocol_is_a_verbatim_copy() -> None:
    host = (REPO / "src/vmrt/protocol.py").read_bytes()
    guest = (REPO / "guest-agent/vmrt_agent/protocol.py").read_bytes()
    assert host == guest, "run `make sync-protocol`"


def test_protocol_is_stdlib_only() -> None:
    text = (REPO / "src/vmrt/protocol.py").read_text()
    assert "import vmrt" not in text and "from vmrt" not in text
