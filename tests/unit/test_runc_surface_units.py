"""The pure parts of ps/pause/events/update/features/spec and VM sizing, host and guest side.

The VM tests (tests/vm/test_runc_surface.py, test_vm_sizing.py) drive the
whole path; these pin the conversions and parsers that path relies on: runc's
texts for bad flag values, the stats layout, the ps filter, the sizing rule,
and the agent's reading of cgroup and sysfs files (against fake trees).
"""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path

import pytest

from vmrt.errors import ExistsError, InvalidArgumentError, VmrtError
from vmrt.monitor import sizing, vmspec
from vmrt.runtime import resources, stats
from vmrt.runtime.events import parse_interval
from vmrt.runtime.features import features
from vmrt.runtime.ps import filter_table
from vmrt.runtime.spec import write_spec

AGENT_DIR = Path(__file__).resolve().parents[2] / "guest-agent"
if str(AGENT_DIR) not in sys.path:
    sys.path.insert(0, str(AGENT_DIR))

from vmrt_agent import cgroups, vmsize  # noqa: E402
from vmrt_agent.errors import AgentError  # noqa: E402

# --- update's flags and documents -----------------------------------------------------------


def test_flags_become_an_oci_document_with_only_what_was_given() -> None:
    r = resources.from_flags({"memory": "64m", "cpu_quota": "50000", "cpu_period": "100000",
                              "pids_limit": "7", "cpuset_cpus": "0-1", "cpu_share": None})
    assert r.to_oci() == {"memory": {"limit": 64 << 20},
                          "cpu": {"quota": 50000, "period": 100000, "cpus": "0-1"},
                          "pids": {"limit": 7}}
    assert resources.from_flags({}).is_empty()


@pytest.mark.parametrize(("text", "value"), [
    ("1024", 1024), ("1k", 1024), ("64m", 64 << 20), ("1g", 1 << 30), ("1GiB", 1 << 30),
    ("1.5g", 3 << 29), ("-1", -1)])
def test_memory_sizes_as_runc_reads_them(text: str, value: int) -> None:
    assert resources.ram_in_bytes("memory", text) == value


@pytest.mark.parametrize(("flags", "message"), [
    ({"memory": "abc"}, "invalid value for memory: invalid size: 'abc'"),
    ({"cpu_quota": "abc"},
     'invalid value for cpu-quota: strconv.ParseInt: parsing "abc": invalid syntax'),
    ({"cpu_period": "-5"},
     'invalid value for cpu-period: strconv.ParseUint: parsing "-5": invalid syntax'),
    ({"pids_limit": "x"}, 'invalid value "x" for flag -pids-limit: parse error'),
])
def test_bad_flag_values_use_runcs_words(flags: dict[str, str], message: str) -> None:
    with pytest.raises(InvalidArgumentError) as err:
        resources.from_flags(flags)
    assert str(err.value) == message


def test_resources_document_is_checked_and_unknown_members_ignored() -> None:
    r = resources.from_json_text(json.dumps({
        "memory": {"limit": 1 << 30}, "cpu": {"quota": 200000, "period": 100000},
        "devices": [{"allow": False, "access": "rwm"}], "unified": {"memory.high": "max"}}))
    assert r.to_oci() == {"memory": {"limit": 1 << 30}, "cpu": {"quota": 200000, "period": 100000},
                          "unified": {"memory.high": "max"}}
    assert r.demand() == (2.0, 1024)
    for bad in ("garbage", "[]", '{"memory": {"limit": "1g"}}', '{"cpu": 5}'):
        with pytest.raises(InvalidArgumentError):
            resources.from_json_text(bad)


def test_demand() -> None:
    assert resources.Resources().demand() == (None, None)
    assert resources.Resources(cpu_quota=150000).demand() == (1.5, None)  # default period
    assert resources.Resources(cpu_quota=-1, memory_limit=-1).demand() == (0.0, 0)
    assert resources.Resources(memory_limit=(1 << 20) + 1).demand() == (None, 2)
    assert resources.from_spec({"linux": {}}).demand() == (None, None)


# --- the sizing rule -------------------------------------------------------------------------

LIMITS = vmspec.Bounds(base_vcpus=1, max_vcpus=4, base_mib=512, max_mib=4608)


def test_target_adds_each_containers_limits_to_the_base_and_caps() -> None:
    D = sizing.Demand
    assert sizing.target(LIMITS, []) == (1, 512)
    assert sizing.target(LIMITS, [D(2.0, 1024)]) == (3, 1536)
    assert sizing.target(LIMITS, [D(0.5, 100), D(0.5, 101)]) == (2, 512 + 202)  # 2 MiB blocks
    assert sizing.target(LIMITS, [D(1.1, 0)]) == (3, 512)  # 1.1 CPUs need 2 more vCPUs
    assert sizing.target(LIMITS, [D(10.0, 10**6)]) == (4, 4608)


def test_bounds_default_to_the_hosts() -> None:
    from vmrt.config import Config

    b = vmspec.bounds(Config())
    assert b.max_vcpus >= 1 and b.max_mib > 512
    b = vmspec.bounds(Config(vcpus=2, memory_mib=1024, max_vcpus=1, max_memory_mib=600))
    assert (b.max_vcpus, b.max_mib, b.hotplug_mib) == (2, 1024, 0)  # never below the base


# --- stats in runc's shape -------------------------------------------------------------------

RAW = {
    "cpu": {"usage_usec": 1500, "user_usec": 1000, "system_usec": 500, "nr_periods": 3,
            "nr_throttled": 1, "throttled_usec": 7},
    "memory": {"current": 4096, "max": None, "peak": 8192, "swap_current": 0, "swap_max": None,
               "stat": {"file": 100, "anon": 200}, "events": {"max": 2, "oom_kill": 1}},
    "pids": {"current": 3, "max": 10},
    "io": [{"major": 254, "minor": 0, "rbytes": 10, "wbytes": 20, "rios": 1, "wios": 2}],
    "cpuset_cpus": "0-2,5",
    "net": [{"name": "eth0", "rx_bytes": 5, "tx_bytes": 6}],
}


def test_stats_layout_follows_runc() -> None:
    data = stats.to_runc(RAW)
    assert data["cpu"] == {"usage": {"total": 1_500_000, "kernel": 500_000, "user": 1_000_000},
                           "throttling": {"periods": 3, "throttled_periods": 1,
                                          "throttled_time": 7000}}
    assert data["memory"]["usage"] == {"limit": 2**64 - 1, "usage": 4096, "max": 8192,
                                       "failcnt": 2}
    assert data["memory"]["cache"] == 100 and data["memory"]["raw"]["anon"] == 200
    assert data["pids"] == {"current": 3, "limit": 10}
    assert data["blkio"]["ioServiceBytesRecursive"] == [
        {"major": 254, "minor": 0, "op": "Read", "value": 10},
        {"major": 254, "minor": 0, "op": "Write", "value": 20}]
    assert data["cpuset"] == {"cpus": [0, 1, 2, 5]}
    assert data["network_interfaces"][0]["name"] == "eth0"
    assert data["network_interfaces"][0]["tx_bytes"] == 6
    assert stats.oom_kills(RAW) == 1


def test_stats_from_a_hostile_guest_are_zeros_not_crashes() -> None:
    data = stats.to_runc({"cpu": {"usage_usec": -5}, "memory": "x", "pids": {"current": True},
                          "io": [1, {"major": "a"}], "net": [{"name": 3}], "cpuset_cpus": "9-x"})
    assert data["cpu"]["usage"]["total"] == 0
    assert data["network_interfaces"] is None
    assert stats.oom_kills({"memory": {"events": {"oom_kill": "7"}}}) == 0


# --- ps, events, features, spec --------------------------------------------------------------

PS_OUT = """PID   USER     COMMAND
    1 root     /init
   35 root     sleep 1000
   36 root     ps -ef
"""


def test_ps_keeps_the_header_and_the_containers_lines() -> None:
    assert filter_table(PS_OUT, (35,)) == ["PID   USER     COMMAND", "   35 root     sleep 1000"]
    assert filter_table(PS_OUT, ()) == ["PID   USER     COMMAND"]
    with pytest.raises(VmrtError, match="couldn't find PID field in ps output"):
        filter_table("  COMMAND\n  sleep\n", (1,))


@pytest.mark.parametrize(("text", "seconds"), [
    ("5s", 5.0), ("250ms", 0.25), ("1m30s", 90.0), ("1.5s", 1.5), ("100us", 1e-4)])
def test_interval_is_a_go_duration(text: str, seconds: float) -> None:
    assert parse_interval(text) == pytest.approx(seconds)


def test_interval_errors_are_runcs() -> None:
    for text in ("0", "-1s"):
        with pytest.raises(InvalidArgumentError, match="duration interval must be greater than 0"):
            parse_interval(text)
    for text in ("abc", "5", "", "s"):
        with pytest.raises(InvalidArgumentError, match="for flag -interval: parse error"):
            parse_interval(text)


def test_features_say_what_vmrt_drops() -> None:
    doc = features()
    assert doc["hooks"] == []
    assert doc["linux"]["cgroup"] == {"v1": False, "v2": True, "systemd": False,
                                      "systemdUser": False}
    assert not doc["linux"]["apparmor"]["enabled"] and not doc["linux"]["selinux"]["enabled"]
    assert doc["annotations"]["org.opencontainers.runc.checkpoint.enabled"] == "false"


def test_spec_writes_runcs_default_once(tmp_path: Path) -> None:
    write_spec(str(tmp_path))
    doc = json.loads((tmp_path / "config.json").read_text())
    assert doc["process"]["args"] == ["sh"] and doc["root"] == {"path": "rootfs", "readonly": True}
    with pytest.raises(ExistsError, match=r"File config\.json exists\. Remove it first"):
        write_spec(str(tmp_path))
    rootless = tmp_path / "rl"
    rootless.mkdir()
    write_spec(str(rootless), is_rootless=True)
    doc = json.loads((rootless / "config.json").read_text())
    assert {"type": "user"} in doc["linux"]["namespaces"]
    assert {"type": "network"} not in doc["linux"]["namespaces"]
    assert doc["linux"]["uidMappings"][0]["size"] == 1
    with pytest.raises(InvalidArgumentError, match="chdir /nonexistent/b: no such file"):
        write_spec("/nonexistent/b")


# --- the agent: cgroup files, sysfs CPUs ----------------------------------------------------


def _cgroup_tree(root: Path) -> Path:
    cg = root / "vmrt" / "c1"
    (cg / "sub").mkdir(parents=True)
    (cg / "cgroup.procs").write_text("35\n36\n")
    (cg / "sub" / "cgroup.procs").write_text("40\n")
    (cg / "cpu.stat").write_text("usage_usec 1500\nuser_usec 1000\nsystem_usec 500\n")
    (cg / "memory.current").write_text("4096\n")
    (cg / "memory.max").write_text("max\n")
    (cg / "memory.events").write_text("low 0\nhigh 0\nmax 2\noom 1\noom_kill 1\n")
    (cg / "pids.current").write_text("3\n")
    (cg / "pids.max").write_text("10\n")
    (cg / "io.stat").write_text("254:0 rbytes=10 wbytes=20 rios=1 wios=2 dbytes=0 dios=0\n")
    return cg


def test_agent_reads_the_containers_cgroup(tmp_path: Path) -> None:
    cg = _cgroup_tree(tmp_path)
    net = tmp_path / "net_dev"
    net.write_text("Inter-|   Receive  |  Transmit\n face |bytes packets ...\n"
                   "    lo: 1 2 0 0 0 0 0 0 1 2 0 0 0 0 0 0\n"
                   "  eth0: 5 6 0 0 0 0 0 0 7 8 0 0 0 0 0 0\n")
    assert cgroups.pids(str(cg)) == [35, 36, 40]
    raw = cgroups.stats(str(cg), str(net))
    assert raw["memory"]["max"] is None and raw["memory"]["current"] == 4096
    assert raw["pids"] == {"current": 3, "max": 10}
    assert raw["io"][0]["wbytes"] == 20
    assert raw["net"] == [{"name": "eth0", "rx_bytes": 5, "rx_packets": 6, "rx_errors": 0,
                           "rx_dropped": 0, "tx_bytes": 7, "tx_packets": 8, "tx_errors": 0,
                           "tx_dropped": 0}]
    assert cgroups.oom_kills(str(cg)) == 1
    assert stats.to_runc(raw)["memory"]["usage"]["failcnt"] == 2


def test_agent_confines_the_cgroup_path(tmp_path: Path) -> None:
    bundle = tmp_path / "bundle"
    bundle.mkdir()
    for path, ok in (("/vmrt/c1", True), ("/../../etc", False), ("vmrt/c1", False)):
        (bundle / "config.json").write_text(json.dumps({"linux": {"cgroupsPath": path}}))
        if ok:
            assert cgroups.container_dir(str(bundle), str(tmp_path)) == str(tmp_path / "vmrt/c1")
        else:
            with pytest.raises(AgentError):
                cgroups.container_dir(str(bundle), str(tmp_path))


def test_agent_onlines_and_offlines_vcpus(tmp_path: Path) -> None:
    (tmp_path / "cpu0").mkdir()  # cpu0 has no "online" file
    for n, state in ((1, "0"), (2, "0")):
        (tmp_path / f"cpu{n}").mkdir()
        (tmp_path / f"cpu{n}" / "online").write_text(state)
    (tmp_path / "cpufreq").mkdir()  # not a CPU
    assert vmsize.online_cpus(str(tmp_path)) == [0]
    assert asyncio.run(vmsize.set_cpus(3, timeout=1, cpu_dir=str(tmp_path))) == 3
    assert asyncio.run(vmsize.set_cpus(2, timeout=1, cpu_dir=str(tmp_path))) == 2
    assert (tmp_path / "cpu2" / "online").read_text() == "0"  # the highest goes first
    # a vCPU that never shows up: the count reached is reported, after the bounded wait
    assert asyncio.run(vmsize.set_cpus(5, timeout=0.1, cpu_dir=str(tmp_path))) == 3
    with pytest.raises(AgentError):
        asyncio.run(vmsize.set_cpus(0, timeout=1, cpu_dir=str(tmp_path)))
