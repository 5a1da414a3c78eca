"""The allocator side of the fast path: freed memory kept during training, handed back after."""

from __future__ import annotations

import sys

import pytest
import torch

from imgclass import runtime


def _rss_mib() -> float:
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("VmRSS")) / 1024


@pytest.mark.skipif(not sys.platform.startswith("linux") or runtime._glibc_function("mallopt")
                    is None, reason="the allocator settings are glibc's (Linux)")
def test_freed_memory_stays_until_released():
    runtime.configure()
    assert runtime._keep_freed_memory()
    big = torch.ones(64 * 2**20)  # 256 MiB, from the heap (no mmap) under the setting
    grown = _rss_mib()
    del big
    kept = _rss_mib()
    assert kept > grown - 32, "freed memory was handed back at once: the setting is not in effect"
    runtime.release_freed_memory()
    assert _rss_mib() < kept - 200
