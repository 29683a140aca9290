"""Benchmark sweeps: methods x tasks x datasets x seeds from a YAML file.

Every (dataset image, task, method variant, seed) is one *item*. The clean
image is degraded once per (image, task, seed) with the shared operators, each
method restores it, and the item's record (metrics, seconds, peak memory) is
appended to ``records-<rank>.jsonl`` and flushed to disk before the next item
starts. Restarting the same sweep skips every item already recorded, so an
interrupted sweep resumes without recomputing. With several processes
(``accelerate launch -m restorekit.cli bench ...``) items are dealt round-robin
to the ranks; rank 0 writes the reports once all are done:

* ``results.csv`` -- one row per item
* ``summary.md``  -- mean +- std per dataset / task / method / NFE
* ``grids/*.png`` -- clean | degraded | each method, per image, task and seed
* ``quality_vs_nfe.png`` -- PSNR against network evaluations, per method and task

Example (``benchmarks/configs/demo.yaml``)::

    name: demo
    output: results/demo
    device: cpu
    datasets:
      coffee: {path: examples, crop: 128}
    tasks:
      deblur: {kernel: gaussian, kernel_std: 3.0, noise: 0.05}
      sr: {scale: 4, noise: 0.0}
      inpaint: {mask: random}
    methods:
      - {name: diffpir, method: diffpir, weights: diffpir-demo, steps: [10, 20]}
      - {name: diffir, method: diffir, weights: {sr: diffir-demo-sr, deblur: diffir-demo-deblur}}
    seeds: [0]
    metrics: [psnr, ssim, lpips]
"""

from __future__ import annotations

from .config import Item, dataset_images, expand_items, load_bench_config
from .memory import PeakMemory
from .records import BenchLock, read_records, repair_records
from .reports import write_reports
from .runner import degrade, run_bench

__all__ = ["Item", "dataset_images", "expand_items", "load_bench_config", "PeakMemory", "BenchLock", "read_records",
           "repair_records", "write_reports", "degrade", "run_bench"]
