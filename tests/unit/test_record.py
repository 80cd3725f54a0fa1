"""vmrt.util.record: the frozen records of the CLI's path behave as frozen dataclasses do."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys

import pytest

from vmrt.state.model import ContainerState, ProcessRef, Status
from vmrt.util.record import asdict, field, fields, record, replace


@record
class Point:
    x: int
    y: int = 0
    tags: dict[str, str] = field(default_factory=dict)
    note: str = field(default="", compare=False)


@record
class Point3(Point):
    z: int = 0


@dataclasses.dataclass(frozen=True)
class Plain:
    a: int
    inner: Point


def test_construction_defaults_and_factories() -> None:
    p = Point(1)
    assert (p.x, p.y, p.tags, p.note) == (1, 0, {}, "")
    assert Point(1).tags is not Point(1).tags  # a fresh dict each time
    assert Point(1, 2) == Point(x=1, y=2)
    assert repr(Point(1, 2)) == "Point(x=1, y=2, tags={}, note='')"


@pytest.mark.parametrize("make", [
    lambda: Point(),  # x is required
    lambda: Point(1, 2, {}, "", 5),  # too many
    lambda: Point(1, x=1),  # twice
    lambda: Point(1, w=3),  # unknown
])
def test_bad_arguments_are_type_errors(make: object) -> None:
    with pytest.raises(TypeError):
        make()  # type: ignore[operator]


def test_frozen_eq_and_hash() -> None:
    p = Point(1, 2, note="a")
    with pytest.raises(AttributeError):
        p.x = 3  # type: ignore[misc]
    assert p == Point(1, 2, note="b")  # note is not compared
    assert p != Point(1, 3) and p != (1, 2)
    assert len({ProcessRef(1, 2), ProcessRef(1, 2), ProcessRef(2, 2)}) == 2
    with pytest.raises(TypeError):  # a dict field is unhashable, as in a frozen dataclass
        hash(p)


def test_inheritance_appends_fields() -> None:
    assert [f.name for f in fields(Point3)] == ["x", "y", "tags", "note", "z"]
    assert Point3(1, z=4).z == 4 and Point3(1) != Point(1)


def test_replace_fields_asdict() -> None:
    p = Point(1, tags={"a": "b"})
    q = replace(p, y=5)
    assert (q.x, q.y, q.tags) == (1, 5, {"a": "b"}) and p.y == 0
    with pytest.raises(TypeError):
        replace(p, w=1)
    assert asdict(Plain(1, p)) == {"a": 1, "inner": {"x": 1, "y": 0, "tags": {"a": "b"},
                                                        "note": ""}}
    assert replace(Plain(1, p), a=2).a == 2  # dataclasses go through dataclasses
    assert [f.name for f in fields(Plain)] == ["a", "inner"]


def test_match_by_position() -> None:
    match Point(1, 2):
        case Point(x, y):
            assert (x, y) == (1, 2)


def test_state_round_trips_through_json() -> None:
    state = ContainerState(id="c", bundle="/b", sandbox="s", role="sandbox",
                           status=Status.CREATED, created="now",
                           annotations={"k": "v"}, shim=ProcessRef(5, 9))
    data = json.loads(json.dumps(state.to_json()))
    assert ContainerState.from_json(data) == state


def test_the_cli_path_imports_no_dataclasses() -> None:
    """What this module is for: `vmrt state`, `create` and `start` never import
    dataclasses (nor inspect, which it pulls in)."""
    code = ("import sys, vmrt.entry, vmrt.runtime.state, vmrt.runtime.create, "
            "vmrt.runtime.start, vmrt.runtime.kill, vmrt.shim.main\n"
            "print(sorted(m for m in ('dataclasses', 'inspect', 'tomllib') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout
    assert out.strip() == "[]"
