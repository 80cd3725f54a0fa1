"""`make soak`: mixed lifecycle operations with random faults, then count what leaked.

    .venv/bin/python bench/soak.py [--ops 1000] [--seed N] [--fault-rate 0.06]
                                   [--max-vms 3] [--root DIR] [--json FILE]

Operations, drawn at random among those that apply to the current model: create,
start, kill, delete --force, run (foreground, output checked), run --detach, a pod
(its sandbox container) and members joining it, exec (output checked), and now and
then a fault: SIGKILL of a container's shim, its VM's monitor or its QEMU. A
container hit by a fault must read `stopped` within a bound (a "lie" otherwise)
and is only deleted afterwards.

At the end every container left is deleted with `delete --force`, and the leaks are
counted: vmrt processes of the root (found by their argv, see runtime/procscan.py)
and any process naming the root, mounts under it, files left in it, tap devices
that appeared on the host, and what `vmrt gc --dry-run` still finds. Exit status 1
if anything leaked, a state lied, or an operation failed unexpectedly.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

from helpers.rootfs import build_busybox_rootfs, make_spec, write_bundle  # noqa: E402
from vmrt.runtime import procscan  # noqa: E402

VMRT = str(Path(sys.executable).with_name("vmrt"))
CALL_TIMEOUT_S = 300.0
STOP_BOUND_S = 15.0
POD_TYPE = "io.kubernetes.cri-o.ContainerType"
POD_SANDBOX = "io.kubernetes.cri-o.SandboxID"
MAX_MEMBERS = 2


@dataclass
class Entry:
    kind: str  # "standalone" | "sandbox" | "member"
    status: str  # "created" | "running" | "stopped"
    pod: str  # the sandbox id (its own for standalone and sandbox)
    faulted: bool = False


@dataclass
class Tally:
    ops: collections.Counter[str] = field(default_factory=collections.Counter)
    failed: collections.Counter[str] = field(default_factory=collections.Counter)
    faults: collections.Counter[str] = field(default_factory=collections.Counter)
    errors: list[str] = field(default_factory=list)
    lies: list[str] = field(default_factory=list)


class Soak:
    def __init__(self, root: Path, work: Path, rng: random.Random, fault_rate: float,
                 max_vms: int, verbose: bool) -> None:
        self.root, self.work, self.rng = root, work, rng
        self.fault_rate, self.max_vms, self.verbose = fault_rate, max_vms, verbose
        self.model: dict[str, Entry] = {}
        self.tally = Tally()
        self.seq = 0
        cfg = work / "vmrt.toml"
        cfg.write_text("boot_timeout_s = 120.0\nrequest_timeout_s = 60.0\n")
        self.globals = ["--root", str(root), "--config", str(cfg)]
        rootfs = build_busybox_rootfs(work / "busybox")
        self.bundles = {
            "sleep": write_bundle(work / "b-sleep", rootfs, make_spec(["sleep", "100000"])),
            "echo": write_bundle(work / "b-echo", rootfs, make_spec(["echo", "soak-output"])),
            "pod": write_bundle(work / "b-pod", rootfs, make_spec(
                ["sleep", "100000"], annotations={POD_TYPE: "sandbox"})),
        }

    # --- calls ---------------------------------------------------------------------

    def vmrt(self, *args: str) -> tuple[int, str, str]:
        """One CLI call, its stdio in files: a container inherits them and may outlive it."""
        with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
            try:
                rc = subprocess.run([VMRT, *self.globals, *args], stdin=subprocess.DEVNULL,
                                    stdout=out, stderr=err, timeout=CALL_TIMEOUT_S,
                                    check=False).returncode
            except subprocess.TimeoutExpired:
                rc = -1
                err.write(f"timed out after {CALL_TIMEOUT_S:g}s".encode())
            out.seek(0)
            err.seek(0)
            return rc, out.read().decode(errors="replace"), err.read().decode(errors="replace")

    def call(self, op: str, *args: str, expect_out: str | None = None) -> bool:
        rc, out, err = self.vmrt(*args)
        ok = rc == 0 and (expect_out is None or out == expect_out)
        if not ok:
            self.tally.failed[op] += 1
            self.tally.errors.append(f"{op} {' '.join(args)}: rc={rc} out={out!r} err={err.strip()!r}")
        if self.verbose:
            print(f"  {op:<8} {'ok' if ok else 'FAILED'} {' '.join(args[-1:])}", flush=True)
        return ok

    def new_id(self, prefix: str) -> str:
        self.seq += 1
        return f"{prefix}{self.seq}"

    def vms(self) -> int:
        return len({e.pod for e in self.model.values()})

    def status(self, cid: str) -> str | None:
        rc, out, _ = self.vmrt("state", cid)
        return json.loads(out)["status"] if rc == 0 else None

    def wait_stopped(self, cid: str) -> bool:
        deadline = time.monotonic() + STOP_BOUND_S
        while time.monotonic() < deadline:
            if self.status(cid) in ("stopped", None):
                return True
            time.sleep(0.1)
        return False

    # --- operations ----------------------------------------------------------------

    def choices(self) -> list[tuple[str, float]]:
        m = self.model
        can_boot = self.vms() < self.max_vms
        ready = [c for c, e in m.items() if not e.faulted]
        out: list[tuple[str, float]] = []
        if can_boot:
            out += [("create", 2), ("run", 1), ("run_detach", 2), ("pod", 1.5)]
        if any(e.kind == "sandbox" and e.status == "running" and not e.faulted
               and sum(1 for x in m.values() if x.pod == c and x.kind == "member") < MAX_MEMBERS
               for c, e in m.items()):
            out.append(("join", 3))
        if any(m[c].status == "created" for c in ready):
            out.append(("start", 3))
        if any(m[c].status == "running" for c in ready):
            out += [("exec", 3), ("kill", 1.5)]
        if m:
            out.append(("delete", 1 + len(m) / 2))
        return out

    def step(self) -> None:
        targets = any(e.status in ("created", "running") and not e.faulted
                      for e in self.model.values())
        if targets and self.rng.random() < self.fault_rate:
            op = "fault"
        else:
            ops = self.choices()
            op = self.rng.choices([o for o, _ in ops], [w for _, w in ops])[0]
        self.tally.ops[op] += 1
        getattr(self, f"op_{op}")()

    def pick(self, pred: Any) -> str:
        return self.rng.choice(sorted(c for c, e in self.model.items() if pred(e)))

    def op_create(self) -> None:
        cid = self.new_id("c")
        if self.call("create", "create", "--bundle", str(self.bundles["sleep"]), cid):
            self.model[cid] = Entry("standalone", "created", cid)

    def op_run(self) -> None:
        self.call("run", "run", "--bundle", str(self.bundles["echo"]), self.new_id("r"),
                  expect_out="soak-output\n")

    def op_run_detach(self) -> None:
        cid = self.new_id("d")
        if self.call("run_detach", "run", "--detach", "--bundle", str(self.bundles["sleep"]),
                     cid):
            self.model[cid] = Entry("standalone", "running", cid)

    def op_pod(self) -> None:
        cid = self.new_id("p")
        if self.call("pod", "run", "--detach", "--bundle", str(self.bundles["pod"]), cid):
            self.model[cid] = Entry("sandbox", "running", cid)

    def op_join(self) -> None:
        pod = self.pick(lambda e: e.kind == "sandbox" and e.status == "running" and not e.faulted
                        and sum(1 for x in self.model.values()
                                if x.pod == e.pod and x.kind == "member") < MAX_MEMBERS)
        bundle = self.work / f"b-member-{pod}"
        if not bundle.exists():
            write_bundle(bundle, None, make_spec(
                ["sleep", "100000"], rootfs=str(self.bundles["sleep"] / "rootfs"),
                annotations={POD_TYPE: "container", POD_SANDBOX: pod}))
        cid = self.new_id(f"{pod}m")
        if self.call("join", "create", "--bundle", str(bundle), cid):
            self.model[cid] = Entry("member", "created", pod)

    def op_start(self) -> None:
        cid = self.pick(lambda e: e.status == "created" and not e.faulted)
        if self.call("start", "start", cid):
            self.model[cid].status = "running"

    def op_exec(self) -> None:
        cid = self.pick(lambda e: e.status == "running" and not e.faulted)
        self.call("exec", "exec", cid, "echo", "soak-exec", expect_out="soak-exec\n")

    def op_kill(self) -> None:
        cid = self.pick(lambda e: e.status == "running" and not e.faulted)
        if self.call("kill", "kill", cid, "KILL"):
            if not self.wait_stopped(cid):
                self.tally.lies.append(f"{cid} still not stopped {STOP_BOUND_S:g}s after KILL")
            self.model[cid].status = "stopped"

    def op_delete(self) -> None:
        cid = self.pick(lambda e: True)
        self.call("delete", "delete", "--force", cid)
        gone = [cid] + ([c for c, e in self.model.items() if e.pod == cid]
                        if self.model[cid].kind == "sandbox" else [])
        for c in gone:
            self.model.pop(c, None)

    def op_fault(self) -> None:
        cid = self.pick(lambda e: e.status in ("created", "running") and not e.faulted)
        entry = self.model[cid]
        victim = self.rng.choice(["shim", "monitor", "qemu"])
        self.tally.faults[victim] += 1
        try:
            if victim == "shim":
                pid = json.loads(self.vmrt("state", cid)[1])["pid"]
            else:
                sb = json.loads((self.root / "sandboxes" / entry.pod / "sandbox.json").read_text())
                pid = sb[victim]["pid"]
            os.kill(pid, signal.SIGKILL)
        except (OSError, ValueError, KeyError, TypeError) as exc:
            self.tally.errors.append(f"fault {victim} of {cid}: {exc!r}")
            return
        hit = [cid] if victim == "shim" else [c for c, e in self.model.items() if e.pod == entry.pod]
        for c in hit:
            self.model[c].faulted = True
            if self.model[c].status != "stopped" and not self.wait_stopped(c):
                self.tally.lies.append(f"{c} not stopped {STOP_BOUND_S:g}s after its {victim} died")
            self.model[c].status = "stopped"

    # --- the end -------------------------------------------------------------------

    def finish(self) -> None:
        for cid in self.vmrt("list", "-q")[1].split():
            self.call("cleanup", "delete", "--force", cid)
        self.model.clear()


def _taps() -> set[str]:
    with contextlib.suppress(OSError):
        return {p.name for p in Path("/sys/class/net").iterdir() if (p / "tun_flags").exists()}
    return set()


def count_leaks(root: Path, taps_before: set[str]) -> dict[str, Any]:
    me = os.getpid()
    marker = str(root)
    procs = {p.pid: str(p) for p in procscan.scan(root)}
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == me:
            continue
        with contextlib.suppress(OSError):
            argv = Path(f"/proc/{entry}/cmdline").read_bytes().replace(b"\0", b" ").decode(
                errors="replace")
            stat = Path(f"/proc/{entry}/stat").read_text()
            if marker in argv and stat[stat.rfind(")") + 2] not in "ZX":
                procs.setdefault(int(entry), argv[:120])
    with open("/proc/self/mountinfo") as f:
        mounts = [ln.split()[4] for ln in f if (ln.split()[4] + "/").startswith(marker + "/")]
    files = sorted(str(p.relative_to(root)) for p in root.rglob("*")
                   if str(p.relative_to(root)) not in ("containers", "sandboxes"))
    gc = subprocess.run([VMRT, "--root", str(root), "gc", "--dry-run"], capture_output=True,
                        text=True, timeout=CALL_TIMEOUT_S, check=False)
    rc, out, err = gc.returncode, gc.stdout, gc.stderr
    return {
        "processes": sorted(procs.values()),
        "mounts": mounts,
        "files": files,
        "taps": sorted(_taps() - taps_before),
        "gc_orphans": [ln for ln in out.splitlines() if ln.strip()] + ([err] if rc else []),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--ops", type=int, default=1000)
    ap.add_argument("--seed", type=int, default=None)
    ap.add_argument("--fault-rate", type=float, default=0.06,
                    help="about this share of operations is a fault")
    ap.add_argument("--max-vms", type=int, default=3, help="VMs alive at once (2 cores, TCG)")
    ap.add_argument("--root", type=Path, default=None, help="default: a fresh dir under /tmp")
    ap.add_argument("--json", type=Path, default=None, help="write the result here too")
    ap.add_argument("-v", "--verbose", action="store_true")
    args = ap.parse_args(argv)
    seed = args.seed if args.seed is not None else random.randrange(1 << 30)
    work = Path(tempfile.mkdtemp(prefix="vs", dir="/tmp"))
    root = (args.root or work / "root").resolve()
    taps_before = _taps()
    soak = Soak(root, work, random.Random(seed), args.fault_rate, args.max_vms, args.verbose)
    t0 = time.monotonic()
    try:
        for i in range(args.ops):
            soak.step()
            if not args.verbose and (i + 1) % 50 == 0:
                print(f"{i + 1} operations, {time.monotonic() - t0:.0f}s", flush=True)
    finally:
        soak.finish()
    elapsed = time.monotonic() - t0
    leaks = count_leaks(root, taps_before)
    t = soak.tally
    result = {
        "ops": args.ops, "seed": seed, "seconds": round(elapsed, 1),
        "by_op": dict(t.ops), "failed": dict(t.failed), "faults": dict(t.faults),
        "errors": t.errors, "lies": t.lies,
        "leaks": {k: len(v) for k, v in leaks.items()}, "leaked": leaks,
    }
    print(f"{args.ops} operations in {elapsed:.0f}s (seed {seed}): {dict(t.ops)}")
    print(f"faults injected: {dict(t.faults)}")
    print(f"failed operations: {sum(t.failed.values())} {dict(t.failed)}")
    for e in t.errors[:20]:
        print(f"  {e}")
    print(f"states that lied after a fault: {len(t.lies)}")
    for name, items in leaks.items():
        print(f"leaked {name}: {len(items)}")
        for item in items[:10]:
            print(f"  {item}")
    if args.json:
        args.json.write_text(json.dumps(result, indent=1))
    bad = any(leaks.values()) or t.lies or t.failed
    if not bad:  # else kept for a look: bundles (and the root, unless --root was given)
        shutil.rmtree(work, ignore_errors=True)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
