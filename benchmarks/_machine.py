"""The CPU a figure was measured on: every speed figure records its instruction sets (a figure holds only for CPUs
with the same ones)."""

from __future__ import annotations

from pathlib import Path

# the instruction sets bf16 and int8 speed depends on, in the order they are reported
CPU_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_bf16", "amx_int8", "amx_tile")


def cpu_flags(cpuinfo: str | Path = "/proc/cpuinfo") -> list[str]:
    """Those of ``CPU_FLAGS`` the CPU has, as ``cpuinfo``'s ``flags`` lines name them (empty off Linux)."""
    try:
        text = Path(cpuinfo).read_text(encoding="utf-8", errors="replace")
    except OSError:
        return []
    flags = set()
    for line in text.splitlines():
        if line.startswith("flags"):
            flags.update(line.split(":", 1)[1].split())
    return [f for f in CPU_FLAGS if f in flags]
