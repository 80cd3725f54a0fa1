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
