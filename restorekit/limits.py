"""The range of every numeric restore option, in one table: the CLI's flags, the Python API's options, benchmark
configs and the web UI all check against it, so a value one of them takes the others take too."""
from __future__ import annotations

from .errors import ConfigError, check_api_number

#: option name (the Python API's) -> the limits of :func:`restorekit.errors.check_number`
LIMITS: dict[str, dict] = {
    # sampling
    "scale": dict(lo=1, hi=16, integer=True),
    "steps": dict(lo=1, hi=1000, integer=True),
    "seed": dict(lo=0, hi=2**63 - 1, integer=True),
    "noise_level": dict(lo=0, hi=1),  # the sigma of the observation noise, images on [0, 1]
    "lambda_": dict(lo=0, lo_open=True),
    "zeta": dict(lo=0, hi=1),
    "eta": dict(lo=0),
    "max_megapixels": dict(lo=0, lo_open=True),
    "batch_size": dict(lo=1, hi=4096, integer=True),
    # synthetic degradations (run --degrade, benchmark tasks, the UI)
    "kernel_std": dict(lo=0, hi=100, lo_open=True),
    "kernel_size": dict(lo=1, hi=255, integer=True),
    "motion_intensity": dict(lo=0, hi=1),
    "sr_kernel_std": dict(lo=0, hi=100, lo_open=True),
    "mask_prob": dict(lo=0, hi=1, hi_open=True),
    "box_size": dict(lo=1, integer=True),
}


#: degradation settings (benchmark task keys, the web UI's fields, run's --degrade flags) -> their option above
DEGRADATION = {"noise": "noise_level", "kernel_std": "kernel_std", "sr_kernel_std": "sr_kernel_std",
               "kernel_size": "kernel_size", "motion_intensity": "motion_intensity", "scale": "scale",
               "mask_prob": "mask_prob", "box_size": "box_size"}


def check_option(value, name: str, what: str | None = None, *, error: type = ConfigError, **override):
    """``value`` as option ``name`` takes it (a whole number where it counts), or ``error`` naming ``what`` (a CLI
    flag, a config entry; the option's name by default). ``override`` narrows a limit for one method (DiffPIR's
    steps stop at its schedule's length)."""
    return check_api_number(value, what or name, error=error, **{**LIMITS[name], **override})
