"""Pod and container starts, each beside its reference.

"Runs" is seen, not assumed: the program writes `ready` to its stdout, which is
the pipe `create` inherited and the shim feeds from the guest, and the clock
stops when those bytes arrive on the bench's end.
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

from lab import RUNC, SANDBOX, CallError, Lab, Root, member_of, run
from stats import Figure, sampled, timed

READY = ["sh", "-c", "echo ready; exec sleep 1000000"]
ECHO = ["echo", "ready"]
GUEST_PYTHON = "/usr/bin/python3.11"


def pod_bundle(lab: Lab) -> Path:
    return lab.bundle(READY, SANDBOX)


def _starts(lab: Lab, root: Root, bundle: Path, prefix: str, runs: int, note: str, *,
            before: Callable[[], None] | None = None) -> Figure:
    """`runs` samples of `create` + `start` of `bundle` until its program wrote, each
    container deleted after its sample (`before` runs ahead of each, off the clock)."""

    def once() -> float:
        if before is not None:
            before()
        cid = lab.new_id(prefix)
        try:
            return root.start_until_output(bundle, cid)
        finally:
            root.delete(cid)

    return sampled(once, runs, note=note)


def cold_start(lab: Lab, root: Root, runs: int) -> Figure:
    """`create` + `start` of a sandbox (a new pod VM) until its program runs."""
    return _starts(lab, root, pod_bundle(lab), "cold", runs,
                   "create+start of a sandbox until its program wrote to stdout")


def run_true(lab: Lab, root: Root, runs: int) -> Figure:
    bundle = lab.bundle(["true"])
    return timed(lambda: root.call("run", "--bundle", str(bundle), lab.new_id("true")), runs,
                 note="`vmrt run` of `true`, end to end (boot, run, exit, delete)")


def join(lab: Lab, root: Root, pod: str, runs: int) -> Figure:
    """`create` + `start` of a member in a running pod until its program runs."""
    return _starts(lab, root, lab.bundle(ECHO, member_of(pod)), "member", runs,
                   "create+start of a member container until its program wrote")


def host_runc_run(lab: Lab, pod: str, runs: int) -> Figure:
    bundle = lab.bundle(ECHO, member_of(pod))
    runc_root = lab.dir / "runc"

    def once() -> None:
        if run([RUNC, "--root", str(runc_root), "run", "--bundle", str(bundle),
                lab.new_id("runc")], timeout=60) != 0:
            raise CallError("runc run failed")

    return timed(once, runs, note="host `runc run` of the member's bundle, to its exit")


#: Runs in the guest (outside every container, through `vmrt debug console`): copies the
#: bundle the agent wrote for a created member (rootfs on that member's virtio-fs share)
#: and times crun's own `run` of it, to its exit.
_GUEST_SCRIPT = """
import json, os, subprocess, time
src = "/run/vmrt/bundles/{member}/config.json"
times = []
for i in range({runs}):
    d = "/run/vmrt/bench-crun-%d" % i
    os.makedirs(d, exist_ok=True)
    spec = json.load(open(src))
    spec["linux"]["cgroupsPath"] = "/vmrt-bench/%d" % i
    json.dump(spec, open(d + "/config.json", "w"))
    t0 = time.perf_counter()
    p = subprocess.run(["crun", "run", "-b", d, "bench-crun-%d" % i], capture_output=True)
    times.append(time.perf_counter() - t0)
    if p.returncode != 0 or b"ready" not in p.stdout:
        times.append(-1.0)
        print("CRUN-FAIL", p.returncode, p.stderr[-300:])
        break
print("BENCH" + "-TIMES", json.dumps(times))
"""


def guest_crun_run(lab: Lab, root: Root, pod: str, runs: int) -> Figure:
    """The guest's own `crun run` of the member's bundle (needs debug_console = true)."""
    member = lab.new_id("crunref")
    bundle = lab.bundle(ECHO, member_of(pod))
    root.call("create", "--bundle", str(bundle), member)  # its guest bundle and share stay
    try:
        script = _GUEST_SCRIPT.format(member=member, runs=runs)
        line = (f"{GUEST_PYTHON} -I -S -c \"import base64; "
                f"exec(base64.b64decode('{base64.b64encode(script.encode()).decode()}'))\"")
        out = _console(root, pod, [line, "exit"], marker=b"BENCH-TIMES", timeout=60 + 20 * runs)
    finally:
        root.delete(member)
    for text in out.decode(errors="replace").splitlines():
        if text.startswith("BENCH-TIMES"):
            times = [float(t) for t in json.loads(text.split(" ", 1)[1])]
            if any(t < 0 for t in times):
                raise CallError(f"crun run failed in the guest: {out[-600:]!r}")
            return Figure(times, note="guest `crun run` of the same bundle, to its exit")
    raise CallError(f"no timings from the guest console: {out[-600:]!r}")


def _console(root: Root, pod: str, lines: list[str], *, marker: bytes, timeout: float) -> bytes:
    """Type `lines` into `vmrt debug console` on a pty once the guest shell prompts; what
    it printed until `marker` and the end of its line came."""
    import select

    master, slave = os.openpty()
    proc = subprocess.Popen([*root.argv, "debug", "console", pod], stdin=slave, stdout=slave,
                            stderr=slave, start_new_session=True,
                            env={**os.environ, "TERM": "dumb"})
    os.close(slave)
    out = b""
    typed = False
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([master], [], [], 1.0)
            if not ready:
                if proc.poll() is not None:
                    break
                continue
            try:
                chunk = os.read(master, 65536)
            except OSError:  # EIO: the console's side of the pty closed
                break
            if not chunk:
                break
            out += chunk
            if b"\x1b[6n" in chunk:  # busybox's line editor asks where the cursor is
                os.write(master, b"\x1b[1;1R")
            if not typed and b"# " in out:
                os.write(master, ("\n".join(lines) + "\n").encode())
                typed = True
            if marker in out and b"\n" in out.split(marker, 1)[1]:
                break
        return out
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        os.close(master)


def pool_start(lab: Lab, root: Root, runs: int) -> Figure:
    """`create` + `start` of a sandbox served by a full warm pool, until its program runs.

    Before each sample the pool is refilled and its VM has said hello: each start
    claims a booted VM, none waits for a refill."""
    return _starts(lab, root, pod_bundle(lab), "warm", runs,
                   "create+start of a sandbox from a full warm pool",
                   before=lambda: root.call("pool", "fill", "--wait"))


def wait_pool_idle(root: Root, timeout: float = 300.0) -> None:
    """Until the pool has no VM booting (so the next sample does not compete with one)."""
    root.call("pool", "fill", "--wait", timeout=timeout)
    time.sleep(0.5)
