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
* ``summary.md``  -- one table per dataset / task (its degradation and metric convention in the heading), a row per
  method / NFE: mean +- std over seeds of the mean over images; classical baselines beside the diffusion methods
* ``grids/*.png`` -- input | each method (largest NFE) | ground truth, and a zoomed crop of each below
* ``quality_vs_nfe.png``, ``psnr_vs_seconds.png`` -- PSNR against network evaluations / seconds per image
* ``report.html`` -- all of it in one static page (summary table sortable by column, filter by dataset / task)

Tasks are labelled (``deblur_levin: {task: deblur, kernel_file: ..., kernel_index: by_image}``) and carry their
metric convention (``eval: {y_channel: true, border: 4}``); see :mod:`restorekit.bench.config`. Besides the
registered methods, ``deepinv-diffpir`` and ``deepinv-dps`` run deepinv's samplers on the same prior weights
(:mod:`restorekit.bench.peers`; skipped when deepinv is not installed).

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
      - {name: bicubic, method: classical, options: {algorithm: bicubic}, tasks: [sr]}
    seeds: [0]
    metrics: [psnr, ssim, lpips]
"""

from __future__ import annotations

from .config import Item, dataset_images, expand_items, load_bench_config
from .memory import PeakMemory
from .peers import PEERS, get_bench_method
from .records import BenchLock, read_records, repair_records
from .reports import write_reports
from .runner import degrade, rebuild_reports, run_bench

__all__ = ["Item", "dataset_images", "expand_items", "load_bench_config", "PeakMemory", "BenchLock", "read_records",
           "repair_records", "write_reports", "degrade", "rebuild_reports", "run_bench", "PEERS", "get_bench_method"]
