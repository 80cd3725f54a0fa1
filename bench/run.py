"""`make bench` / `make bench-quick`: vmrt beside its references, from one run, as ratios.

Every figure is a median over repeated runs (with min and max) and stands
beside a reference measured in the same run on the same machine:

* boot floor: raw QEMU with the same kernel and initramfs until the agent's
  hello arrives on the virtio-serial port (no vmrt code on that path);
* `vmrt run` of `true`, end to end, and `vmrt create`+`start` of a container;
* CLI latency: `vmrt state` beside `python -c pass` (the same interpreter)
  and `runc state`;
* host runc's `runc run` of the same bundle;
* host PSS of an idle pod (QEMU + monitor + shim + virtiofsd).

Results: a table on stdout, bench/results/latest.json, and a PNG plot.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))
RESULTS = REPO / "bench" / "results"
VMRT = str(Path(sys.executable).with_name("vmrt"))
RUNC = shutil.which("runc") or "/usr/sbin/runc"


def timed(fn: Callable[[], object], runs: int) -> dict[str, float]:
    samples = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - t0)
    return {"median": statistics.median(samples), "min": min(samples), "max": max(samples),
            "runs": runs}


def boot_floor(kernel: str, initrd: str, cmdline: str) -> None:
    """QEMU straight to the agent's first bytes: the floor any runtime stands on."""
    agent_host, agent_vm = socket.socketpair()
    argv = [
        "/usr/bin/qemu-system-x86_64", "-machine", "q35,accel=tcg,memory-backend=mem",
        "-object", "memory-backend-memfd,id=mem,size=512M,share=on", "-m", "512M",
        "-accel", "tcg,thread=single,tb-size=64", "-cpu", "max", "-smp", "1",
        "-nodefaults", "-no-user-config", "-nographic", "-no-reboot",
        "-kernel", kernel, "-initrd", initrd, "-append", cmdline + " vmrt.nonce=00",
        "-device", "virtio-serial-pci,id=vser0",
        "-chardev", f"socket,id=agent,fd={agent_vm.fileno()}",
        "-device", "virtserialport,chardev=agent,name=vmrt.agent,bus=vser0.0",
        "-device", "virtio-rng-pci",
    ]
    proc = subprocess.Popen(argv, pass_fds=[agent_vm.fileno()], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    agent_vm.close()
    try:
        agent_host.settimeout(60)
        if not agent_host.recv(1):
            raise RuntimeError("the guest closed the port before saying hello")
    finally:
        proc.kill()
        proc.wait()
        agent_host.close()


def run_checked(argv: list[str]) -> None:
    subprocess.run(argv, check=True, stdout=subprocess.DEVNULL)


def pss_kib(pids: list[int]) -> int:
    total = 0
    for pid in pids:
        try:
            for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
                if line.startswith("Pss:"):
                    total += int(line.split()[1])
        except OSError:
            continue
    return total


def pod_pids(root: Path) -> list[int]:
    pids = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmd = (proc / "cmdline").read_bytes()
        except OSError:
            continue
        if str(root).encode() in cmd or (b"vmrt.monitor" in cmd and str(root).encode() in cmd):
            pids.append(int(proc.name))
    return pids


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--full", action="store_true")
    opts = parser.parse_args()
    runs = 3 if opts.quick else 7
    from vmrt.config import load
    from vmrt.demo import make_bundle
    from vmrt.image import ensure_image

    image = ensure_image(load())
    cmdline = " ".join(image.cmdline)
    results: dict[str, object] = {"machine": os.uname().release, "runs": runs,
                                  "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    with tempfile.TemporaryDirectory(prefix="vb", dir="/tmp") as tmp:
        tmpdir = Path(tmp)
        bundle = make_bundle(tmpdir / "bundle", ["true"])
        root = tmpdir / "r"
        counter = iter(range(10**6))

        results["boot_floor"] = timed(lambda: boot_floor(image.kernel, image.initrd, cmdline), runs)
        results["vmrt_run_true"] = timed(lambda: run_checked(
            [VMRT, "--root", str(root), "run", "--bundle", str(bundle), f"b{next(counter)}"]), runs)

        def cold_start() -> None:
            cid = f"c{next(counter)}"
            run_checked([VMRT, "--root", str(root), "create", "--bundle", str(bundle), cid])
            run_checked([VMRT, "--root", str(root), "start", cid])
            cold_ids.append(cid)

        cold_ids: list[str] = []
        results["pod_cold_start"] = timed(cold_start, runs)
        for cid in cold_ids:
            run_checked([VMRT, "--root", str(root), "delete", "--force", cid])

        runc_root = tmpdir / "runc"
        results["host_runc_run"] = timed(lambda: run_checked(
            [RUNC, "--root", str(runc_root), "run", "--bundle", str(bundle), f"r{next(counter)}"]),
            runs)

        # CLI latency and memory, against one idle pod.
        idle = make_bundle(tmpdir / "idle", ["sleep", "1000"])
        run_checked([VMRT, "--root", str(root), "run", "-d", "--bundle", str(idle), "idle"])
        try:
            time.sleep(2)  # let the guest settle before reading memory
            results["pss_per_idle_pod_mib"] = pss_kib(pod_pids(root)) / 1024
            cli_runs = runs * 5
            results["cli_state"] = timed(
                lambda: run_checked([VMRT, "--root", str(root), "state", "idle"]), cli_runs)
            results["cli_list"] = timed(
                lambda: run_checked([VMRT, "--root", str(root), "list"]), cli_runs)
            results["cli_version"] = timed(lambda: run_checked([VMRT, "--version"]), cli_runs)
            results["python_pass"] = timed(
                lambda: run_checked([sys.executable, "-c", "pass"]), cli_runs)
            run_checked([RUNC, "--root", str(runc_root), "run", "-d", "--bundle", str(idle),
                         "ridle"])
            results["runc_state"] = timed(
                lambda: run_checked([RUNC, "--root", str(runc_root), "state", "ridle"]), cli_runs)
            subprocess.run([RUNC, "--root", str(runc_root), "delete", "-f", "ridle"], check=False)
        finally:
            subprocess.run([VMRT, "--root", str(root), "delete", "-f", "idle"], check=False)
    report(results)
    return 0


def _m(results: dict[str, object], key: str) -> float:
    value = results[key]
    assert isinstance(value, dict)
    return float(value["median"])


def report(results: dict[str, object]) -> None:
    flat = {
        "boot_floor_s": _m(results, "boot_floor"),
        "vmrt_run_true_s": _m(results, "vmrt_run_true"),
        "pod_cold_start_s": _m(results, "pod_cold_start"),
        "host_runc_run_s": _m(results, "host_runc_run"),
        "cli_state_s": _m(results, "cli_state"),
        "cli_list_s": _m(results, "cli_list"),
        "cli_version_s": _m(results, "cli_version"),
        "python_pass_s": _m(results, "python_pass"),
        "runc_state_s": _m(results, "runc_state"),
        "pss_per_idle_pod_mib": results["pss_per_idle_pod_mib"],
    }
    ratios = {
        "pod_cold_start / boot_floor": flat["pod_cold_start_s"] / flat["boot_floor_s"],
        "vmrt_run_true / boot_floor": flat["vmrt_run_true_s"] / flat["boot_floor_s"],
        "vmrt_run_true / runc_run": flat["vmrt_run_true_s"] / flat["host_runc_run_s"],
        "vmrt_state / python_pass": flat["cli_state_s"] / flat["python_pass_s"],
        "vmrt_state / runc_state": flat["cli_state_s"] / flat["runc_state_s"],
    }
    out = {**flat, "ratios": ratios, "detail": results}
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "latest.json").write_text(json.dumps(out, indent=2))
    print(f"{'figure':32} {'median':>10} {'min':>10} {'max':>10}")
    for key, value in results.items():
        if isinstance(value, dict):
            print(f"{key:32} {value['median']:10.4f} {value['min']:10.4f} {value['max']:10.4f}")
    print(f"{'pss_per_idle_pod_mib':32} {flat['pss_per_idle_pod_mib']:10.1f}")
    for name, ratio in ratios.items():
        print(f"ratio {name:40} {ratio:8.2f}")
    plot(results)


def plot(results: dict[str, object]) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return
    keys = [k for k, v in results.items() if isinstance(v, dict) and "median" in v]
    values = [_m(results, k) for k in keys]
    fig, ax = plt.subplots(figsize=(8, 4))
    ax.barh(keys, values)
    ax.set_xscale("log")
    ax.set_xlabel("seconds (median, log scale)")
    ax.set_title("vmrt beside its references (one run)")
    fig.tight_layout()
    fig.savefig(RESULTS / "latest.png")


if __name__ == "__main__":
    sys.exit(main())
