"""Pod network throughput: a TCP stream into a vmrt container, beside the same between two
plain network namespaces over veth, from one run.

The lab is tests/helpers/netlab.py's: a private "host" namespace holding a CNI
bridge (real `bridge` + `host-local` plugins), and two pod namespaces CNI gave
a veth each. One pod's namespace is the VM's (vmrt carries its eth0 into the
guest through a tap and tc redirects); the other serves straight from the
namespace. In both, busybox `nc -l` reads the stream to /dev/null; the client,
in the lab's host namespace, sends `--mb` MiB, half-closes, and the stream
ends when the server has read everything and closed. Median of `--runs`.

    .venv/bin/python bench/network.py [--mb 200] [--runs 3]

Prints both rates and their ratio; writes bench/results/network.json.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import uuid
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))
from helpers import netlab  # noqa: E402
from helpers.netlab import NetLab  # noqa: E402
from helpers.rootfs import build_busybox_rootfs, make_spec, write_bundle  # noqa: E402

RESULTS = REPO / "bench" / "results"
VMRT = str(Path(sys.executable).with_name("vmrt"))
PORT = 5001
SERVER = f"while true; do {{nc}} -l -p {PORT} > /dev/null; done"

#: Runs in the lab's host namespace: connect (retrying until the server listens),
#: stream, half-close, wait for the server's close; print the seconds it took.
CLIENT = """
import socket, sys, time
addr, mib, port = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
deadline = time.monotonic() + 60
while True:
    try:
        s = socket.create_connection((addr, port), timeout=5)
        break
    except OSError:
        if time.monotonic() > deadline:
            raise
        time.sleep(0.2)
s.settimeout(300)
chunk = b"x" * (1 << 20)
t0 = time.perf_counter()
for _ in range(mib):
    s.sendall(chunk)
s.shutdown(socket.SHUT_WR)
assert s.recv(1) == b""
print(time.perf_counter() - t0)
"""


def stream(lab: NetLab, address: str, mib: int, runs: int) -> dict[str, float]:
    rates = []
    for _ in range(runs):
        res = lab.in_host(sys.executable, "-I", "-c", CLIENT, address, str(mib), str(PORT),
                           timeout=600)
        if res.returncode != 0:
            raise RuntimeError(f"stream to {address} failed: {res.stderr.decode()[-800:]}")
        rates.append(mib / float(res.stdout))
    return {"median": statistics.median(rates), "min": min(rates), "max": max(rates),
            "runs": runs, "mib": mib}


def veth_baseline(lab: NetLab, mib: int, runs: int) -> dict[str, float]:
    ns = lab.new_pod_netns()
    cni = lab.cni_add(ns, "baseline")
    server = subprocess.Popen(
        ["nsenter", f"--net={ns}", netlab.BUSYBOX, "sh", "-c",
         SERVER.format(nc=f"{netlab.BUSYBOX} nc")],
        stdin=subprocess.DEVNULL, start_new_session=True)
    try:
        return stream(lab, cni.address, mib, runs)
    finally:
        os.killpg(server.pid, signal.SIGKILL)  # its group: the shell and its nc
        server.wait()


def vm_stream(lab: NetLab, work: Path, mib: int, runs: int) -> dict[str, float]:
    ns = lab.new_pod_netns()
    cni = lab.cni_add(ns, "vm")
    rootfs = build_busybox_rootfs(work / "rootfs")
    spec = make_spec(["sh", "-c", SERVER.format(nc="nc")])
    spec["linux"]["namespaces"] = [n for n in spec["linux"]["namespaces"]
                                   if n["type"] != "network"] + [{"type": "network", "path": ns}]
    bundle = write_bundle(work / "bundle", rootfs, spec)
    root, cid = work / "root", "net" + uuid.uuid4().hex[:8]
    base = [VMRT, "--root", str(root)]
    subprocess.run([*base, "run", "--detach", "--bundle", str(bundle), cid], check=True,
                   stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                   timeout=300)
    try:
        return stream(lab, cni.address, mib, runs)
    finally:
        subprocess.run([*base, "delete", "--force", cid], check=False, timeout=120)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mb", type=int, default=200, help="MiB per stream (default 200)")
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args(argv)
    why = netlab.available()
    if why:
        print(f"network bench skipped: {why}", file=sys.stderr)
        return 2
    work = Path(tempfile.mkdtemp(prefix="vbn", dir="/tmp"))
    try:
        with NetLab(work / "lab", octet=30) as lab:
            veth = veth_baseline(lab, args.mb, args.runs)
            vm = vm_stream(lab, work, args.mb, args.runs)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    ratio = vm["median"] / veth["median"]
    print(f"{'TCP stream, host ns -> pod':40} {'MiB/s median':>12} {'min':>8} {'max':>8}")
    for name, r in (("two namespaces over veth (no VM)", veth),
                    ("vmrt container (tap + tc, virtio-net)", vm)):
        print(f"{name:40} {r['median']:12.1f} {r['min']:8.1f} {r['max']:8.1f}")
    print(f"ratio vmrt / veth: {ratio:.3f}  ({args.mb} MiB per stream, {args.runs} runs)")
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "network.json").write_text(json.dumps(
        {"veth": veth, "vmrt": vm, "ratio": ratio}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
