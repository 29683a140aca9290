"""One table of option ranges (restorekit.limits) for the CLI's flags, the Python API, benchmark configs and the web
UI: a value one front end refuses, the others refuse too, and narrowing the table narrows all of them (a copy of a
range left in one front end would make the last test fail)."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from restorekit import Restorer
from restorekit.bench.config import check_degradation
from restorekit.cli import main
from restorekit.errors import RestoreKitError
from restorekit.limits import LIMITS
from restorekit.operators import Blur, gaussian_kernel
from restorekit.ui import core


@pytest.fixture(scope="module")
def p(tiny_weights):
    return Restorer.from_pretrained(str(tiny_weights), method="diffpir", device="cpu")


@pytest.fixture
def png(tmp_path):
    path = tmp_path / "x.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (24, 24, 3), dtype=np.uint8)).save(path)
    return path


def _cli(capsys, png, tiny_weights, *flags):
    out = png.with_name("out.png")
    rc = main(["run", "--task", "deblur", "--degrade", "--input", str(png), "--output", str(out), "--weights",
               str(tiny_weights), "--no-progress", *flags])
    err = capsys.readouterr().err
    assert not out.exists()
    return rc, err


def _api(p, **opts):
    u8 = np.random.default_rng(0).integers(0, 256, (24, 24, 3), dtype=np.uint8)
    return p.restore(u8, task="deblur", operator=Blur(gaussian_kernel(5, 1.0)), **{"steps": 2, **opts})


#: (option, CLI flag, a value outside its range)
OUTSIDE = [("zeta", "--zeta", 1.5), ("noise_level", "--noise", 2.0), ("lambda_", "--lambda", 0.0),
           ("eta", "--eta", -0.5), ("steps", "--steps", 1001), ("seed", "--seed", -1)]


@pytest.mark.parametrize("name,flag,bad", OUTSIDE)
def test_cli_and_api_refuse_the_same_values(capsys, p, png, tiny_weights, name, flag, bad):
    rc, err = _cli(capsys, png, tiny_weights, flag, str(bad))
    assert rc == 2 and f"error: {flag} must be" in err, err
    with pytest.raises(RestoreKitError, match=f"{name} must be"):
        _api(p, **{name: bad})


@pytest.mark.parametrize("key,bad", [("noise", 2.0), ("mask_prob", 1.0), ("scale", 17), ("kernel_size", 257),
                                     ("kernel_std", 0), ("box_size", 0), ("sr_kernel_std", 101)])
def test_bench_config_and_ui_refuse_what_the_cli_refuses(key, bad):
    with pytest.raises(RestoreKitError, match=f"x: {key} must be"):
        check_degradation({"task": "deblur", key: bad}, "x")
    if key != "sr_kernel_std":  # the UI has no SR blur kernel
        with pytest.raises(RestoreKitError, match=f"{key} must be"):
            core.Degradation(**{key: bad}).check("sr")


def test_narrowing_the_table_narrows_every_front_end(monkeypatch, capsys, p, png, tiny_weights):
    monkeypatch.setitem(LIMITS, "zeta", dict(lo=0, hi=0.5))
    monkeypatch.setitem(LIMITS, "noise_level", dict(lo=0, hi=0.1))
    rc, err = _cli(capsys, png, tiny_weights, "--zeta", "0.7")
    assert rc == 2 and "--zeta must be in [0, 0.5], got 0.7" in err, err
    with pytest.raises(RestoreKitError, match=r"zeta must be in \[0, 0.5\]"):
        _api(p, zeta=0.7)
    with pytest.raises(RestoreKitError, match=r"x: noise must be in \[0, 0.1\]"):
        check_degradation({"task": "deblur", "noise": 0.2}, "x")
    with pytest.raises(RestoreKitError, match=r"noise must be in \[0, 0.1\]"):
        core.Degradation(noise=0.2).check("deblur")
    c = Restorer.from_pretrained(method="classical", device="cpu")
    with pytest.raises(RestoreKitError, match=r"noise_level must be in \[0, 0.1\]"):
        c.restore(np.zeros((16, 16, 3), np.uint8), task="deblur", operator=Blur(gaussian_kernel(5, 1.0)),
                  noise_level=0.2)


def test_values_inside_the_range_still_run(p):
    out = _api(p, zeta=LIMITS["zeta"]["hi"], eta=0.0, noise_level=0.0, seed=LIMITS["seed"]["hi"])
    assert np.isfinite(np.asarray(out, dtype=np.float64)).all()
