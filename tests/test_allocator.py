"""The allocator setting (shared.config.allocator): applied where glibc is, and harmless where it is not."""

from __future__ import annotations

import platform
import subprocess
import sys
from pathlib import Path

import pytest

from shared.config import allocator

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="glibc only")
def test_a_big_buffer_freed_no_longer_sends_the_next_ones_to_the_heap() -> None:
    # In a fresh interpreter: free a 4 MB buffer (glibc then raises its threshold to 4 MB), then allocate a 1 MB
    # one and see where it lives: on the heap (whose freed chunks stay in RSS) or in a mapping of its own.
    script = """
import sys
sys.path.insert(0, sys.argv[2])
from shared.config.allocator import fix_mmap_threshold
if sys.argv[1] == "fixed":
    assert fix_mmap_threshold()
first = b"\\x01" * (4 << 20)
del first
buffer = b"\\x02" * (1 << 20)
heap = [line.split()[0].split("-") for line in open("/proc/self/maps") if line.rstrip().endswith("[heap]")]
print(any(int(low, 16) <= id(buffer) < int(high, 16) for low, high in heap))
"""
    on_heap = {mode: subprocess.run([sys.executable, "-c", script, mode, str(ROOT)], capture_output=True, text=True,
                                    check=True).stdout.strip() for mode in ("fixed", "dynamic")}
    assert on_heap == {"fixed": "False", "dynamic": "True"}


def test_elsewhere_nothing_is_changed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(allocator.platform, "system", lambda: "Darwin")
    assert allocator.fix_mmap_threshold() is False
