"""measure.py: one peak-memory reading with one set of labels, and the timer."""
import time

import numpy as np
import pytest

from medcore import measure


def test_peak_memory_on_the_cpu_sees_an_allocation_inside_the_block():
    with measure.PeakMemory("cpu") as mem:
        block = np.ones(64 * 2**20 // 8)  # 64 MiB, touched
        block[::512] += 1
    del block
    assert mem.kind in measure.PEAK_MEMORY_KINDS and mem.peak > 64 * 2**20
    assert mem.read() == {"peak_memory_bytes": mem.peak, "peak_memory_kind": mem.kind}


def test_start_and_read_without_a_block():
    mem = measure.PeakMemory("cpu").start()
    assert mem.read()["peak_memory_kind"] in ("process_rss", "process_rss_lifetime")


@pytest.mark.parametrize("old, new", [("cuda_max_memory_allocated", "cuda_allocator"), ("rss_sampled", "process_rss"),
                                      ("process_peak_rss", "process_rss_lifetime"), ("cuda_allocator", "cuda_allocator"),
                                      (None, None)])
def test_old_labels_read_as_the_three_kinds(old, new):
    assert measure.peak_memory_kind(old) == new


def test_timer_measures_the_block():
    with measure.Timer("cpu") as t:
        time.sleep(0.05)
    assert 0.04 < t.seconds < 1.0
