"""Peak memory of a block of work: RSS sampled on the CPU, the allocator's peak on CUDA."""

from __future__ import annotations

import threading
import time

import psutil
import torch


class PeakMemory:
    """Context manager: ``peak_mb`` = highest RSS (or CUDA allocation) above the start, in MiB.

    RSS is sampled every ``interval`` seconds by a thread, so a spike shorter than that can
    be missed; training steps here last tens of milliseconds, far longer than 2 ms.
    """

    def __init__(self, device: str | torch.device = "cpu", interval: float = 0.002):
        self.device = torch.device(device)
        self.interval = interval
        self.peak_mb = 0.0
        self._stop = threading.Event()

    def __enter__(self) -> PeakMemory:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self._base = torch.cuda.memory_allocated(self.device)
            return self
        self._proc = psutil.Process()
        self._base = self._peak = self._proc.memory_info().rss
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.is_set():
            self._peak = max(self._peak, self._proc.memory_info().rss)
            time.sleep(self.interval)

    def __exit__(self, *exc) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            peak = torch.cuda.max_memory_allocated(self.device)
        else:
            self._stop.set()
            self._thread.join()
            peak = max(self._peak, self._proc.memory_info().rss)
        self.peak_mb = (peak - self._base) / 2**20
