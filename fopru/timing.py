"""Per-stage timing of a request: device events on GPU, a monotonic clock on CPU."""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager

import torch


class PhaseTimer:
    """Accumulates seconds per named phase; nested phases are fine, a phase may run several times."""

    def __init__(self, device: torch.device | str) -> None:
        self.cuda = torch.device(device).type == "cuda"
        self._events: dict[str, list[tuple[torch.cuda.Event, torch.cuda.Event]]] = defaultdict(list)
        self._seconds: dict[str, float] = defaultdict(float)
        self.counts: dict[str, int] = defaultdict(int)

    @contextmanager
    def phase(self, name: str) -> Iterator[None]:
        """Time the body as ``name``."""
        self.counts[name] += 1
        if self.cuda:
            start, stop = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            yield
            stop.record()
            self._events[name].append((start, stop))
            return
        began = time.perf_counter()
        yield
        self._seconds[name] += time.perf_counter() - began

    def seconds(self) -> dict[str, float]:
        """Total seconds per phase (waits for the device)."""
        if self.cuda:
            torch.cuda.synchronize()
            for name, pairs in self._events.items():
                self._seconds[name] += sum(start.elapsed_time(stop) for start, stop in pairs) / 1000
            self._events.clear()
        return dict(self._seconds)
