"""DiffBIR's option checks without weights (``DiffBIR.check_options_unloaded``): a bad option fails before the
multi-GB files are looked for, with the one-line message that make_config gives once they are loaded."""

import math

import pytest

from restorekit import Restorer, RestoreKitError, TaskError
from restorekit.methods.diffbir import DiffBIR

from .test_diffbir_pipeline import _restorer, light  # noqa: F401  (light: the module's tiny-model fixture)

#: options found by the new-user audit (reported only once all weights were present), and more of the same kind
BAD = [
    (dict(cfg_scale="nan"), "option cfg_scale must be a finite number, got nan"),
    (dict(cfg_scale=float("inf")), "option cfg_scale must be a finite number, got inf"),
    (dict(foo=1), "option 'foo' does not apply to DiffBIR; options are batch_size, captioner, cfg_scale"),
    (dict(sampler="foo"), "DiffBIR option sampler='foo'; choose one of spaced, ddim"),
    (dict(captioner="ram"), "captioner 'ram' (Recognize Anything) has no transformers port"),
    (dict(captioner=""), "captioner '': use 'none', 'llava'"),
    (dict(guidance_scale="nan"), "option g_scale must be a finite number, got nan"),
    (dict(cfg_scale="high"), "option cfg_scale expects a number, got 'high'"),
    (dict(n_samples=1.5), "option n_samples expects a whole number, got 1.5"),
    (dict(n_samples=0), "DiffBIR needs steps, batch_size and n_samples >= 1"),
    (dict(rescale_cfg="maybe"), "option rescale_cfg expects true or false, got 'maybe'"),
    (dict(tiled=2), "option tiled expects true or false, got 2"),
    (dict(noise_aug=1000), "DiffBIR noise_aug is a timestep in [0, 999]"),
    (dict(cldm_tile_size=100), "DiffBIR needs cldm_tile_size a positive multiple of 64"),
    (dict(vae_decoder_tile_size=4), "option vae_decoder_tile_size must be >= 8, got 4"),
    (dict(order=0), "option order must be >= 1, got 0"),
    (dict(start_point_type="middle"), "DiffBIR option start_point_type='middle'; choose one of noise"),
    (dict(color_fix="adain"), "DiffBIR option color_fix='adain'; choose one of wavelet, none"),
    (dict(pos_prompt=["a", "b"]), "option pos_prompt expects text, got ['a', 'b']"),
    (dict(precision="fp64"), "unknown precision 'fp64'; choose fp32, fp16 or bf16"),
    (dict(g_scale=0.1), "restoration guidance (g_scale > 0) is applied by the 'spaced' sampler only, "
                        "not 'edm_dpm++_3m_sde'"),
    (dict(zeta=0.3), "option 'zeta' does not apply to DiffBIR"),
]


def _message(fn, *args, **kw) -> str:
    with pytest.raises(TaskError) as e:
        fn(*args, **kw)
    return str(e.value)


@pytest.mark.parametrize("opts,needle", BAD)
def test_bad_option_fails_without_weights(opts, needle):
    # the test cache is empty (conftest): a weights lookup would raise WeightsError, not TaskError
    msg = _message(DiffBIR.check_options_unloaded, "sr", None, **opts)
    assert msg.startswith(needle) and "\n" not in msg


def test_dpmpp_m2_needs_two_steps_without_weights():
    # the sampler raised this only at the first image, after the 5 GB of weights were loaded
    msg = _message(DiffBIR.check_options_unloaded, "sr", 1, sampler="dpm++_m2")
    assert msg == "DiffBIR's dpm++_m2 sampler needs at least 2 steps (its order)"
    assert DiffBIR.check_options_unloaded("sr", 2, sampler="dpm++_m2") is None
    assert DiffBIR.check_options_unloaded("sr", 1, sampler="ddim") is None


def test_a_valid_option_set_passes_also_as_cli_text():
    assert DiffBIR.check_options_unloaded("sr", 10, cfg_scale=4.5, sampler="edm_euler", captioner="none",
                                          n_samples=2, tiled=True, guidance_scale=0.0, precision="fp16") is None
    # --opt values as the CLI reads them (YAML leaves "1e3", "nan", "inf" as text)
    DiffBIR.check_options_unloaded("sr", None, cfg_scale="1e3", rescale_cfg="yes", tiled="off", n_samples=2.0,
                                   s_tmax="inf", pos_prompt=123, captioner="llava")
    # what the CLI passes for every method: the flags DiffBIR has no use for are None
    DiffBIR.check_options_unloaded("face", 5, lambda_=None, zeta=None, eta=0.5, skip_type=None, noise_level=None,
                                   use_last_x0=None, scale=4)


def test_the_version_is_the_one_from_pretrained_would_load():
    # guidance needs the 'spaced' sampler: v2's default, not v2.1's
    DiffBIR.check_options_unloaded("sr", model="diffbir-v2", g_scale=0.1)
    assert "not 'edm_dpm++_3m_sde'" in _message(DiffBIR.check_options_unloaded, "sr", model="diffbir-v2.1",
                                                 g_scale=0.1)
    assert _message(DiffBIR.check_options_unloaded, "unaligned_face", model="diffbir-v1") == \
        "DiffBIR v1 does not do task 'unaligned_face'; use v2 or v2.1"
    assert _message(DiffBIR.check_options_unloaded, "sr", model="diffbir-v2", version="v1") == \
        "model 'diffbir-v2' is DiffBIR v2, not v1"
    assert _message(DiffBIR.check_options_unloaded, "sr", version="v3").endswith("is DiffBIR v2.1, not v3")
    assert "does not do task 'deblur'" in _message(DiffBIR.check_options_unloaded, "deblur")
    # a trained folder's base version is unknown here: the default-sampler check waits, the rest still runs
    DiffBIR.check_options_unloaded("sr", model="out/", version="custom", g_scale=0.1)
    assert "not 'ddim'" in _message(DiffBIR.check_options_unloaded, "sr", version="custom", g_scale=0.1,
                                    sampler="ddim")
    assert "finite" in _message(DiffBIR.check_options_unloaded, "sr", version="custom", cfg_scale="nan")


def test_base_hook_checks_nothing():
    assert Restorer.check_options_unloaded("deblur", 3, anything=1) is None


def test_cli_text_messages_match_the_cli_coercion():
    """The CLI reads --opt values by the option's default once the model is loaded (cli._coerce): the unloaded
    check refuses the same text with the same line."""
    from restorekit.cli import _coerce

    for key, text, default in [("cfg_scale", "nan", 6.0), ("n_samples", "1.5", 1), ("rescale_cfg", "maybe", False),
                               ("cfg_scale", "high", 6.0)]:
        with pytest.raises(RestoreKitError) as e:
            _coerce(key, text, default)
        assert _message(DiffBIR.check_options_unloaded, "sr", **{key: text}) == str(e.value)


@pytest.fixture(scope="module")
def loaded(light):  # noqa: F811
    return _restorer(light, version="v2.1")


@pytest.mark.parametrize("opts,needle", BAD)
def test_make_config_gives_the_same_message(loaded, opts, needle):
    assert (_message(loaded.make_config, "sr", None, **opts)
            == _message(DiffBIR.check_options_unloaded, "sr", None, version="v2.1", **opts))


def test_make_config_reads_text_and_keeps_defaults(loaded):
    s = loaded.make_config("sr", None, cfg_scale="1e3", tiled="off", s_tmax="inf", guidance_scale="0.5",
                           sampler="spaced")
    assert s.cfg_scale == 1000.0 and s.cldm_tiled is False and math.isinf(s.s_tmax)
    assert s.g_scale == 0.5 and s.guidance is True
    d = loaded.make_config("sr")
    assert (d.sampler, d.steps, d.cfg_scale, d.captioner) == ("edm_dpm++_3m_sde", 10, 6.0, "none")


@pytest.mark.parametrize("opt,needle", [("cfg_scale=nan", "cfg_scale must be a finite number"), ("foo=1", "foo"),
                                        ("sampler=foo", "foo"), ("captioner=ram", "ram")])
def test_the_cli_refuses_a_bad_option_before_naming_missing_weights(tmp_path, capsys, monkeypatch, opt, needle):
    import numpy as np
    from PIL import Image

    from restorekit.cli import main

    monkeypatch.setenv("RESTOREKIT_CACHE", str(tmp_path / "cache"))
    img = tmp_path / "x.png"
    Image.fromarray(np.zeros((16, 16, 3), np.uint8)).save(img)
    rc = main(["run", "--method", "diffbir", "--task", "sr", "--input", str(img), "--output", str(tmp_path / "o"),
               "--opt", opt])
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1 and needle in err and "needs" not in err, err
