"""The bench's output: a table on stdout, bench/results/latest.json, bench/results/latest.png."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from stats import Figure

#: (key in latest.json, figure name, its reference's figure name or "", label)
TIME_ROWS: tuple[tuple[str, str, str, str], ...] = (
    ("boot_floor_s", "boot_floor", "", "boot floor: raw QEMU -> agent hello"),
    ("pod_cold_start_s", "pod_cold_start", "boot_floor", "pod cold start (create+start)"),
    ("vmrt_run_true_s", "vmrt_run_true", "boot_floor", "vmrt run true (end to end)"),
    ("warm_pool_start_s", "warm_pool_start", "pod_cold_start", "pod start from the warm pool"),
    ("container_join_s", "container_join", "guest_crun_run", "container join (create+start)"),
    ("guest_crun_run_s", "guest_crun_run", "", "  guest: crun run of that bundle"),
    ("host_runc_run_s", "host_runc_run", "", "  host: runc run of that bundle"),
    ("cli_state_s", "cli_state", "python_pass", "vmrt state"),
    ("cli_list_s", "cli_list", "python_pass", "vmrt list"),
    ("cli_version_s", "cli_version", "python_pass", "vmrt --version"),
    ("python_pass_s", "python_pass", "", "  python3 -c pass (same interpreter)"),
    ("runc_state_s", "runc_state", "", "  runc state"),
    ("churn_cycle_s", "churn_cycle", "", "churn: one run -d + delete -f"),
)


def flatten(figures: dict[str, Figure], extra: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, name, _, _ in TIME_ROWS:
        if name in figures:
            out[key] = figures[name].median
    out.update(extra)
    return out


def ratios(figures: dict[str, Figure]) -> dict[str, float]:
    def m(name: str) -> float:
        return figures[name].median if name in figures else math.nan

    return {
        "pod_cold_start / boot_floor": m("pod_cold_start") / m("boot_floor"),
        "vmrt_run_true / boot_floor": m("vmrt_run_true") / m("boot_floor"),
        "warm_pool_start / pod_cold_start": m("warm_pool_start") / m("pod_cold_start"),
        "container_join - guest_crun_run (s)": m("container_join") - m("guest_crun_run"),
        "container_join / host_runc_run": m("container_join") / m("host_runc_run"),
        "cli_state / python_pass": m("cli_state") / m("python_pass"),
        "cli_state / runc_state": m("cli_state") / m("runc_state"),
    }


def table(figures: dict[str, Figure], flat: dict[str, Any], rat: dict[str, float]) -> str:
    lines = [f"{'figure':44} {'median':>9} {'min':>9} {'max':>9} {'runs':>5}  ratio to reference"]
    for _, name, ref, label in TIME_ROWS:
        fig = figures.get(name)
        if fig is None:
            continue
        ratio = ""
        if ref and ref in figures:
            ratio = f"{fig.median / figures[ref].median:6.2f}x {ref}"
        lines.append(f"{label:44} {_fmt(fig.median)} {_fmt(fig.min)} {_fmt(fig.max)} "
                     f"{len(fig.samples):5d}  {ratio}")
    lines.append("")
    for key, value in flat.items():
        if isinstance(value, dict | list):
            continue
        if key.endswith("_mib") or key in ("idle_pods_max", "churn_pods_per_min",
                                            "cpu_pct_per_idle_pod"):
            lines.append(f"{key:44} {value:9.1f}" if isinstance(value, float)
                         else f"{key:44} {value!s:>9}")
    for key in ("pss_by_kind_1_pod_mib", "pss_by_kind_10_pods_mib"):
        if key in flat:
            parts = ", ".join(f"{k} {v:.1f}" for k, v in flat[key].items())
            lines.append(f"  {key}: {parts}")
    if "scale_stopped_by" in flat:
        lines.append(f"  scale stopped by: {flat['scale_stopped_by']}")
    lines.append("")
    for name, value in rat.items():
        if not math.isnan(value):
            lines.append(f"ratio {name:48} {value:8.3f}")
    return "\n".join(lines)


def _fmt(seconds: float) -> str:
    return f"{seconds * 1000:7.1f}ms" if seconds < 1 else f"{seconds:8.3f}s"


def write(results: Path, figures: dict[str, Figure], extra: dict[str, Any],
          detail: dict[str, Any]) -> str:
    flat = flatten(figures, extra)
    rat = ratios(figures)
    doc = {**flat, "ratios": {k: v for k, v in rat.items() if not math.isnan(v)},
           "figures": {k: f.to_json() for k, f in figures.items()}, "detail": detail}
    results.mkdir(parents=True, exist_ok=True)
    (results / "latest.json").write_text(json.dumps(doc, indent=1, default=str) + "\n")
    plot(results / "latest.png", figures, extra)
    return table(figures, flat, rat)


def plot(path: Path, figures: dict[str, Figure], extra: dict[str, Any]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    scale = extra.get("scale_cold_start")
    panels = 3 if scale else 2
    fig, axes = plt.subplots(1, panels, figsize=(6 * panels, 5))
    ax = axes[0]
    rows = [(label.strip(), figures[name]) for _, name, _, label in TIME_ROWS if name in figures]
    names = [r[0] for r in rows][::-1]
    med = [r[1].median for r in rows][::-1]
    lo = [r[1].median - r[1].min for r in rows][::-1]
    hi = [r[1].max - r[1].median for r in rows][::-1]
    ax.barh(names, med, xerr=[lo, hi], color="#4c72b0", ecolor="#333333", capsize=2)
    ax.set_xscale("log")
    ax.set_xlabel("seconds (median, min-max bars; log scale)")
    ax.set_title("vmrt beside its references, one run")
    ax.tick_params(axis="y", labelsize=7)

    ax = axes[1]
    kinds = ["qemu", "monitor", "shim", "virtiofsd"]
    cols = [("1 pod", extra.get("pss_by_kind_1_pod_mib", {})),
            ("10 pods", extra.get("pss_by_kind_10_pods_mib", {}))]
    bottom = [0.0] * len(cols)
    for kind in kinds:
        vals = [float(c[1].get(kind, 0.0)) for c in cols]
        ax.bar([c[0] for c in cols], vals, bottom=bottom, label=kind)
        bottom = [b + v for b, v in zip(bottom, vals, strict=True)]
    ax.set_ylabel("host PSS per idle pod (MiB)")
    ax.set_title("memory per idle pod")
    ax.legend()

    if scale:
        ax = axes[2]
        ax.plot([n for n, _ in scale], [t for _, t in scale], marker=".")
        ax.set_xlabel("N (N-1 pods idle)")
        ax.set_ylabel("cold start of pod N (s)")
        ax.set_title("scale")
        ax.set_ylim(bottom=0)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
