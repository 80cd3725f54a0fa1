"""`make bench` / `make bench-quick`: vmrt beside its references, from one run, as ratios.

Every figure is a median over repeated runs (with min and max) and stands
beside a reference measured in the same run on the same machine:

1. boot floor: QEMU with vmrt's argv, launched by hand, until the agent's hello
   (bench/boot.py);
2. pod cold start (`create` + `start` of a sandbox until its program writes to
   stdout) and `vmrt run` of `true`, against the floor; the same start served by
   the warm pool, against the cold start (bench/pods.py);
3. container join in a running pod, beside the guest's own `crun run` of that
   bundle (timed in the guest through `vmrt debug console`) and the host's
   `runc run`;
4. CLI latency: `vmrt state|list|--version` beside `python -c pass` of the same
   interpreter and `runc state` (bench/cli_latency.py);
5. host PSS per idle pod, for 1 and 10 pods, and per extra container
   (bench/memory.py);
6. (full run) scale: the Nth pod's cold start while N-1 idle, and how many idle
   pods still answer `exec` within 2 s (bench/scale.py);
7. churn: pods created and deleted per minute;
8. bench/network.py's stream, when that module is there.

Results: a table on stdout, bench/results/latest.json and latest.png. Every VM
is gone afterwards, also when a section fails (bench/lab.py); a failed section
is reported, the others still run, and the exit status is 1.

    .venv/bin/python bench/run.py --quick|--full [--only SECTION ...]
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import boot  # noqa: E402
import cli_latency  # noqa: E402
import memory  # noqa: E402
import pods  # noqa: E402
import report  # noqa: E402
import scale  # noqa: E402
from lab import REPO, Lab  # noqa: E402
from stats import Figure  # noqa: E402

RESULTS = REPO / "bench" / "results"
SECTIONS = ("boot", "cold", "join", "cli", "memory", "pool", "scale", "churn", "network")
REQUIRED = ("boot_floor_s", "pod_cold_start_s", "container_join_s", "guest_crun_run_s",
            "host_runc_run_s", "cli_state_s", "python_pass_s", "pss_per_idle_pod_mib",
            "warm_pool_start_s")


class Bench:
    def __init__(self, full: bool, only: set[str], settings: dict[str, object]) -> None:
        self.full = full
        self.only = only
        self.runs = 7 if full else 3
        self.cli_runs = 50 if full else 20
        self.figures: dict[str, Figure] = {}
        self.extra: dict[str, Any] = {}
        self.errors: list[str] = []
        self.lab = Lab(settings)
        # debug_console: the guest's own `crun run` is timed through `vmrt debug console`.
        self.root = self.lab.root("r", {"debug_console": True})

    def section(self, name: str, fn: Callable[[], None], *, also: tuple[str, ...] = ()) -> None:
        if self.only and not self.only & {name, *also}:
            return
        print(f"== {name}", flush=True)
        t0 = time.monotonic()
        try:
            fn()
        except Exception as exc:
            traceback.print_exc()
            self.errors.append(f"{name}: {exc}")
        print(f"   ({time.monotonic() - t0:.0f} s)", flush=True)

    # --- sections ---------------------------------------------------------------------

    def boot(self) -> None:
        fig, argv = boot.boot_floor(self.lab.dir, self.root.config, self.runs)
        self.figures["boot_floor"] = fig
        self.extra["boot_floor_argv"] = argv

    def cold(self) -> None:
        self.figures["pod_cold_start"] = pods.cold_start(self.lab, self.root, self.runs)
        self.figures["vmrt_run_true"] = pods.run_true(self.lab, self.root, self.runs)

    def join_and_cli(self) -> None:
        pod = self.lab.new_id("pod")
        self.root.start_until_output(pods.pod_bundle(self.lab), pod)
        try:
            argv = self.extra.get("boot_floor_argv")
            if argv:
                monitor_log = self.root.path / "sandboxes" / pod / "monitor.log"
                self.extra["boot_floor_argv_differences"] = boot.argv_differences(argv, monitor_log)
            if self._wanted("join"):
                self.figures["container_join"] = pods.join(self.lab, self.root, pod, self.runs)
                self.figures["guest_crun_run"] = pods.guest_crun_run(self.lab, self.root, pod,
                                                                     self.runs)
                self.figures["host_runc_run"] = pods.host_runc_run(self.lab, pod, self.runs)
            if self._wanted("cli"):
                self.figures.update(cli_latency.cli_latency(self.lab, self.root, pod,
                                                            self.cli_runs))
            if self._wanted("memory"):
                extra = memory.per_extra_container(self.lab, self.root, pod, 3)
                self.figures["pss_per_extra_container"] = extra
                self.extra["pss_per_extra_container_mib"] = extra.median
        finally:
            self.root.delete(pod)

    def memory(self) -> None:
        root = self.lab.root("m")
        idle: list[str] = []
        try:
            one = memory.idle_pods(self.lab, root, 1, idle)
            self.extra["pss_per_idle_pod_mib"] = one.pop("total")
            self.extra["pss_by_kind_1_pod_mib"] = one
            ten = memory.idle_pods(self.lab, root, 10, idle, cpu=True)
            self.extra["pss_per_idle_pod_10_mib"] = ten.pop("total")
            self.extra["cpu_pct_per_idle_pod"] = ten.pop("cpu_pct")
            self.extra["pss_by_kind_10_pods_mib"] = ten
            # Part of QEMU's: what the monitors left resident of TCG's translation caches.
            self.extra["jit_pss_per_idle_pod_10_mib"] = memory.jit_pss_mib(root.path) / 10
        finally:
            for cid in idle:
                root.delete(cid)

    def pool(self) -> None:
        root = self.lab.root("p", {"pool_size": 1})
        try:
            self.figures["warm_pool_start"] = pods.pool_start(self.lab, root, self.runs)
            self.extra["pss_per_pool_vm_mib"] = memory.pool_vm_pss(root)
        finally:
            root.call("pool", "drain", check=False)

    def scale(self) -> None:
        res = scale.scale(self.lab, self.lab.root("s"), plot_up_to=50, limit=100)
        self.extra["idle_pods_max"] = res.idle_pods_max
        self.extra["scale_stopped_by"] = res.stopped_by
        self.extra["scale_cold_start"] = res.cold_start
        self.extra["scale_exec_worst"] = res.exec_worst

    def churn(self) -> None:
        per_min, cycle = scale.churn(self.lab, self.lab.root("c"), 180.0 if self.full else 30.0)
        self.extra["churn_pods_per_min"] = per_min
        self.figures["churn_cycle"] = cycle

    def network(self) -> None:
        if not (REPO / "bench" / "network.py").is_file():
            print("   bench/network.py is not there: skipped")
            return
        import json

        import network

        argv = [] if self.full else ["--mb", "50", "--runs", "1"]
        code = network.main(argv)
        if code == 2:
            print("   network bench skipped (its lab is not available here)")
            return
        if code != 0:
            raise RuntimeError(f"bench/network.py exited {code}")
        net = json.loads((RESULTS / "network.json").read_text())
        self.extra["network_vm_mib_s"] = net["vmrt"]["median"]
        self.extra["network_veth_mib_s"] = net["veth"]["median"]
        self.extra["network_ratio"] = net["ratio"]

    def _wanted(self, name: str) -> bool:
        return not self.only or name in self.only

    def run(self) -> int:
        self.section("boot", self.boot)
        self.section("cold", self.cold)
        self.section("join", self.join_and_cli, also=("cli", "memory"))
        self.section("memory", self.memory)
        self.section("pool", self.pool)
        if self.full:
            self.section("scale", self.scale)
        self.section("churn", self.churn)
        self.section("network", self.network)
        return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--quick", action="store_true", help="fewer runs, no scale sweep, 30 s churn")
    mode.add_argument("--full", action="store_true", help="the default")
    parser.add_argument("--only", action="append", choices=SECTIONS, default=[],
                        help="run only these sections (repeatable)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="a vmrt config value for every root of the run (repeatable; "
                        "TOML value), to compare configurations")
    args = parser.parse_args(argv)
    import tomllib

    settings = {k: tomllib.loads(f"v = {v}")["v"] for k, _, v in
                (s.partition("=") for s in args.set)}

    def terminate(signum: int, _frame: object) -> None:
        raise SystemExit(128 + signum)  # unwinds into the cleanup below

    signal.signal(signal.SIGTERM, terminate)
    signal.signal(signal.SIGHUP, terminate)
    import compileall

    # What a deployed vmrt runs: bytecode compiled. With PYTHONDONTWRITEBYTECODE set (as in
    # some CI shells), every CLI call would otherwise recompile what changed since the last
    # write and the CLI figures would measure the compiler.
    compileall.compile_dir(REPO / "src", quiet=1)
    bench = Bench(full=not args.quick, only=set(args.only), settings=settings)
    t0 = time.monotonic()
    try:
        bench.run()
    finally:
        leftovers = bench.lab.close()
        if leftovers:
            bench.errors.append("cleanup had to kill: " + "; ".join(leftovers))
    bench.extra["mode"] = "full" if bench.full else "quick"
    bench.extra["settings"] = settings
    detail = {"time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
              "kernel": os.uname().release, "cpus": os.cpu_count(),
              "bench_seconds": round(time.monotonic() - t0),
              "load_average": os.getloadavg(), "errors": bench.errors}
    print(report.write(RESULTS, bench.figures, bench.extra, detail))
    missing = [k for k in REQUIRED if k not in report.flatten(bench.figures, bench.extra)]
    if bench.full and "idle_pods_max" not in bench.extra:
        missing.append("idle_pods_max")
    if args.only:
        missing = []
    for err in bench.errors:
        print(f"ERROR {err}", file=sys.stderr)
    if missing:
        print(f"ERROR missing figures: {', '.join(missing)}", file=sys.stderr)
    print(f"wrote {RESULTS / 'latest.json'} and {RESULTS / 'latest.png'} "
          f"({time.monotonic() - t0:.0f} s)")
    return 1 if bench.errors or missing else 0


if __name__ == "__main__":
    sys.exit(main())
