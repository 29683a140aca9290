"""Peak memory of a block of work, on CUDA or (as RSS) on the CPU."""

from __future__ import annotations

import threading
import time

import torch


class PeakMemory:
    """Peak memory of a block: CUDA max allocated, or peak RSS above the start (sampled every 5 ms)."""

    def __init__(self, device: torch.device):
        self.device = device
        self.peak_mib = 0.0

    def __enter__(self):
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self.base = torch.cuda.memory_allocated(self.device)
            return self
        import psutil

        self.proc = psutil.Process()
        self.base = self.proc.memory_info().rss
        self.top = self.base
        self.stop = threading.Event()

        def watch():
            while not self.stop.is_set():
                self.top = max(self.top, self.proc.memory_info().rss)
                time.sleep(0.005)

        self.thread = threading.Thread(target=watch, daemon=True)
        self.thread.start()
        return self

    def __exit__(self, *exc):
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            self.peak_mib = (torch.cuda.max_memory_allocated(self.device) - self.base) / 2 ** 20
        else:
            self.stop.set()
            self.thread.join()
            self.top = max(self.top, self.proc.memory_info().rss)
            self.peak_mib = (self.top - self.base) / 2 ** 20
        return False


