import pytest

from benchmarks._machine import cpu_flags

CPUINFO = """processor\t: 0
flags\t\t: fpu sse2 avx2 avx512f avx512_vnni amx_tile
processor\t: 1
flags\t\t: fpu sse2 avx2 avx512f avx512_vnni amx_tile
"""


@pytest.mark.parametrize("text, expected", [
    (CPUINFO, ["avx2", "avx512f", "avx512_vnni", "amx_tile"]),
    ("processor\t: 0\nflags\t\t: fpu sse2\n", []),
    ("model name\t: avx2 in a name is not a flag\n", []),
])
def test_cpu_flags_lists_the_known_instruction_sets_in_a_fixed_order(tmp_path, text, expected):
    path = tmp_path / "cpuinfo"
    path.write_text(text, encoding="utf-8")
    assert cpu_flags(path) == expected


def test_cpu_flags_without_cpuinfo_is_empty(tmp_path):
    assert cpu_flags(tmp_path / "missing") == []
