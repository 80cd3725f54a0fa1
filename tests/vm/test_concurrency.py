"""Many verbs at once: every one succeeds or fails cleanly, state stays whole, nothing
deadlocks (every call below has a deadline), and nothing is given out twice.

The machine has 2 cores and boots VMs under TCG: ten boots at once take a while, so
the VMs get a generous (bounded) boot timeout through a --config file.
"""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from helpers.rootfs import make_spec
from helpers.runtime import Result, Runtime, single_line

pytestmark = pytest.mark.vm

CALL_TIMEOUT_S = 600.0  # one CLI call; a hang is a failure, not a stuck suite
POD_TYPE = "io.kubernetes.cri-o.ContainerType"
POD_SANDBOX = "io.kubernetes.cri-o.SandboxID"


@pytest.fixture
def patient(tmp_path: Path) -> list[str]:
    """Global flags for a config that lets many TCG boots share two cores."""
    cfg = tmp_path / "vmrt.toml"
    cfg.write_text("boot_timeout_s = 300.0\nrequest_timeout_s = 120.0\n")
    return ["--config", str(cfg)]


def _parallel(rt: Runtime, calls: list[list[str]], workers: int) -> list[Result]:
    with ThreadPoolExecutor(max_workers=workers) as pool:
        return list(pool.map(lambda args: rt.run(*args, timeout=CALL_TIMEOUT_S), calls))


def _clean(res: Result) -> bool:
    """Success with nothing printed, or one line on stderr and a non-zero exit."""
    if res.returncode == 0:
        return res.stdout == "" and res.stderr == ""
    return res.stdout == "" and bool(single_line(res.stderr))


def _state_files_whole(rt: Runtime) -> dict[str, dict]:
    out = {}
    for d in sorted((rt.root / "containers").iterdir()):
        out[d.name] = json.loads((d / "state.json").read_text())  # raises if torn
    for d in sorted((rt.root / "sandboxes").iterdir()):
        json.loads((d / "sandbox.json").read_text())
    return out


def test_ten_pods_at_once(runtime: Runtime, bundle, new_id, patient: list[str]) -> None:
    rt = runtime
    ids = [new_id() for _ in range(10)]
    b = bundle(["sleep", "1000"])
    results = _parallel(rt, [[*patient, "create", "--bundle", str(b), cid] for cid in ids], 10)
    assert all(_clean(r) for r in results), "\n".join(map(str, results))
    made = sorted(cid for cid, r in zip(ids, results, strict=True) if r.returncode == 0)
    print(f"{len(made)}/10 pods created at once")
    assert made, "no create succeeded: " + "\n".join(map(str, results))
    states = _state_files_whole(rt)
    assert sorted(states) == made
    assert sorted(rt.list_ids()) == made
    for cid in made:
        assert rt.state(cid)["status"] == "created"
    deletes = _parallel(rt, [["delete", "--force", cid] for cid in made], 10)
    assert all(r.returncode == 0 and r.stderr == "" for r in deletes), deletes
    assert rt.list_ids() == []


def test_fifty_creates_into_one_pod(runtime: Runtime, bundle, new_id,
                                    patient: list[str]) -> None:
    """Every member gets its own hot-plug slot and channel, or a clean refusal once the
    VM's slots run out (8 root ports by default: the infra container holds one)."""
    rt = runtime
    pod = new_id()
    infra = bundle(["sleep", "1000"], annotations={POD_TYPE: "sandbox"})
    rt.ok(*patient, "run", "--detach", "--bundle", str(infra), pod)
    member = bundle(["sleep", "1000"])
    (member / "config.json").write_text(json.dumps(make_spec(
        ["sleep", "1000"], annotations={POD_TYPE: "container", POD_SANDBOX: pod})))
    ids = [f"{pod}-{i:02d}" for i in range(50)]
    results = _parallel(rt, [[*patient, "create", "--bundle", str(member), cid]
                             for cid in ids], 50)
    assert all(_clean(r) for r in results), "\n".join(map(str, results))
    made = sorted(cid for cid, r in zip(ids, results, strict=True) if r.returncode == 0)
    refusals = {r.stderr for r in results if r.returncode != 0}
    print(f"{len(made)}/50 members created; refusals: {refusals}")
    assert made, "no member could join: " + "\n".join(map(str, results))

    states = _state_files_whole(rt)
    assert sorted(states) == sorted([pod, *made])
    channels = [s["channel"] for s in states.values()]
    assert len(set(channels)) == len(channels), f"a channel was given twice: {channels}"
    sandbox = json.loads((rt.root / "sandboxes" / pod / "sandbox.json").read_text())
    slots = [d["slot"] for d in sandbox["devices"]]
    assert len(set(slots)) == len(slots), f"a slot was given twice: {sandbox['devices']}"
    assert sorted(d["owner"] for d in sandbox["devices"] if d["kind"] == "virtiofs") == sorted(
        [pod, *made])
    for cid in made:
        assert rt.state(cid)["status"] == "created"
    res = rt.run("delete", "--force", pod, timeout=CALL_TIMEOUT_S)  # members go first
    assert res.returncode == 0 and res.stderr == "", res
    assert rt.list_ids() == []
