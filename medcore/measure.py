"""Timing and peak memory, measured one way for every command and the benchmark.

Peak memory inside a ``with PeakMemory(device)`` block, labelled by :data:`PEAK_MEMORY_KINDS`:

* ``cuda_allocator`` - the CUDA caching allocator's peak (``torch.cuda.max_memory_allocated``, reset on entry);
* ``process_rss`` - on a CPU, the process's peak resident set size since entry (Linux: ``VmHWM`` after writing 5
  to ``/proc/self/clear_refs``);
* ``process_rss_lifetime`` - where that reset is not possible: the process's peak since it started (``ru_maxrss``).

Older records used other labels for the same three readings; :func:`peak_memory_kind` maps them.
"""
from __future__ import annotations

import resource
import time
from pathlib import Path
from typing import Any

import torch

PEAK_MEMORY_KINDS = ("cuda_allocator", "process_rss", "process_rss_lifetime")
_OLD_KINDS = {"cuda_max_memory_allocated": "cuda_allocator", "rss_sampled": "process_rss",
              "process_peak_rss": "process_rss_lifetime"}


def peak_memory_kind(label: str | None) -> str | None:
    """The label of :data:`PEAK_MEMORY_KINDS` for a record's ``peak_memory_kind``, old labels included."""
    return _OLD_KINDS.get(label, label) if label is not None else None


def synchronize(device: torch.device | str | None = None) -> None:
    """Wait for the GPU (no-op on a CPU) so that a clock read after it covers the queued work."""
    device = torch.device(device) if device is not None else None
    if (device is None and torch.cuda.is_available() and torch.cuda.is_initialized()) or (
            device is not None and device.type == "cuda"):
        torch.cuda.synchronize(device)


class PeakMemory:
    """Peak memory inside a ``with`` block: ``peak`` (bytes) and ``kind`` (one of :data:`PEAK_MEMORY_KINDS`)."""

    def __init__(self, device: torch.device | str | None = None):
        device = torch.device(device) if device is not None else torch.device(
            "cuda" if torch.cuda.is_available() else "cpu")
        self.device, self.peak, self.kind, self._reset = device, 0, None, False

    def __enter__(self) -> "PeakMemory":
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
        else:
            try:
                Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current RSS
                self._reset = True
            except OSError:
                self._reset = False
        return self

    def __exit__(self, *exc) -> None:
        self.read()

    def start(self) -> "PeakMemory":
        """Enter without a ``with`` block (pair it with :meth:`read`)."""
        return self.__enter__()

    def read(self) -> dict[str, Any]:
        """The peak so far (also what leaving the block records), as record fields."""
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            self.peak, self.kind = torch.cuda.max_memory_allocated(self.device), "cuda_allocator"
        elif self._reset:
            status = Path("/proc/self/status").read_text()
            kib = next(int(line.split()[1]) for line in status.splitlines() if line.startswith("VmHWM:"))
            self.peak, self.kind = kib * 1024, "process_rss"
        else:
            self.peak, self.kind = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024, "process_rss_lifetime"
        return {"peak_memory_bytes": int(self.peak), "peak_memory_kind": self.kind}


class Timer:
    """Wall seconds of a ``with`` block (``seconds``), the GPU synchronized on entry and exit."""

    def __init__(self, device: torch.device | str | None = None):
        self.device, self.seconds = device, 0.0

    def __enter__(self) -> "Timer":
        synchronize(self.device)
        self._start = time.perf_counter()
        return self

    def __exit__(self, *exc) -> None:
        synchronize(self.device)
        self.seconds = time.perf_counter() - self._start
