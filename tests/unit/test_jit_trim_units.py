"""The pure parts of trimming QEMU's translation cache (monitor/jit_trim.py); the VM test
is tests/vm/test_jit_trim.py."""

from __future__ import annotations

from vmrt.monitor.jit_trim import BLOCK, MARGIN, JitStats, dead_range, jit_mapping, parse_info_jit

INFO_JIT = """Translation buffer state:
gen code size       22981347/67103744
TB count            40840
TB avg target size  17 max=1580 bytes

Statistics:
TB flush count      1
TB invalidate count 7272
[TCG profiler not compiled]
"""

MAPS = """\
7fb08ffff000-7fb0affff000 rw-s 00000000 00:01 17867                      /memfd:memory-backend-memfd (deleted)
7fb0b0000000-7fb0b4000000 r-xs 00000000 00:01 17866                      /memfd:tcg-jit (deleted)
7fb0b4000000-7fb0b7fff000 rw-s 00000000 00:01 17866                      /memfd:tcg-jit (deleted)
7fb0b7fff000-7fb0b8000000 ---s 03fff000 00:01 17866                      /memfd:tcg-jit (deleted)
"""


def test_info_jit_is_parsed() -> None:
    assert parse_info_jit(INFO_JIT) == JitStats(22981347, 67103744, 1)
    assert parse_info_jit("gen code size 1/2\n") is None  # no flush count: not trusted
    assert parse_info_jit("") is None


def test_the_writable_view_of_the_buffer_is_found() -> None:
    assert jit_mapping(MAPS) == (0x7fb0b4000000, 0x7fb0b7fff000)
    assert jit_mapping(MAPS.replace("tcg-jit", "other")) is None


def test_only_whole_blocks_past_the_fill_level_and_margin_are_released() -> None:
    size = 64 << 20
    offset, length = dead_range(23 << 20, size)
    assert offset % BLOCK == 0 and offset >= (23 << 20) + MARGIN
    assert offset + length <= size and length % BLOCK == 0
    assert dead_range(size - (3 << 20), size) is None  # too little to stop the vCPU for
    assert dead_range(size, size) is None


def test_steady_requests_put_the_trim_off_only_so_long(monkeypatch) -> None:
    """A manager polling `state` more often than QUIET_S must not starve the trim: it runs
    LATEST_S after the first request it waits on. (Scheduling only: the spawned trim is
    recorded, not run; tests/vm/test_jit_trim.py runs the real one.)"""
    import asyncio

    from vmrt.monitor import jit_trim

    monkeypatch.setattr(jit_trim, "QUIET_S", 0.05)
    monkeypatch.setattr(jit_trim, "LATEST_S", 0.2)
    fired: list[float] = []

    def spawn(coro) -> None:  # type: ignore[no-untyped-def]
        fired.append(asyncio.get_running_loop().time())
        coro.close()

    async def scenario() -> float:
        trimmer = jit_trim.JitTrimmer(qmp=None, qemu_pid=lambda: 0,  # type: ignore[arg-type]
                                      lock=asyncio.Lock(), spawn=spawn, log=None)  # type: ignore[arg-type]
        start = asyncio.get_running_loop().time()
        for _ in range(25):  # a request every 20 ms for half a second
            trimmer.poke()
            await asyncio.sleep(0.02)
        await asyncio.sleep(0.1)  # then quiet
        return start

    start = asyncio.run(scenario())
    assert len(fired) >= 2, "steady requests starved the trim"
    assert 0.15 <= fired[0] - start <= 0.35
