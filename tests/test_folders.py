"""``restorekit run`` on folders, globs and lists; ``restore()`` on lists and batched tensors."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from restorekit import Restorer
from restorekit.cli import main
from restorekit.operators import Blur, gaussian_kernel


def _png(path, hw, seed):
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 256, (*hw, 3), dtype=np.uint8)).save(path)
    return path


@pytest.fixture
def photos(tmp_path):
    root = tmp_path / "photos"
    _png(root / "b.png", (20, 24), 1)
    _png(root / "a.png", (16, 16), 2)
    _png(root / "sub" / "c.png", (18, 14), 3)
    (root / "notes.txt").write_text("not an image")
    return root


def _common(tiny_weights):
    return ["--task", "deblur", "--degrade", "--steps", "2", "--kernel-size", "5", "--weights", str(tiny_weights),
            "--no-progress"]


def test_folder_keeps_layout_seeds_and_skips(tmp_path, photos, tiny_weights, capsys):
    out = tmp_path / "out"
    assert main(["run", "--input", str(photos), "--output", str(out), "--recursive"] + _common(tiny_weights)) == 0
    made = sorted(p.relative_to(out).as_posix() for p in out.rglob("*_deblur.png"))
    assert made == ["a_diffpir_deblur.png", "b_diffpir_deblur.png", "sub/c_diffpir_deblur.png"]
    # image k (sorted: a, b, sub/c) gets seed + k: the same as running it alone with that seed
    alone = tmp_path / "alone.png"
    assert main(["run", "--input", str(photos / "b.png"), "--output", str(alone), "--seed", "1"]
                + _common(tiny_weights)) == 0
    assert np.array_equal(np.asarray(Image.open(alone)), np.asarray(Image.open(out / "b_diffpir_deblur.png")))
    # a second run skips what is done
    capsys.readouterr()
    stamp = (out / "a_diffpir_deblur.png").stat().st_mtime_ns
    assert main(["run", "--input", str(photos), "--output", str(out), "--recursive"] + _common(tiny_weights)) == 0
    assert "3 of 3 images already restored" in capsys.readouterr().err
    assert (out / "a_diffpir_deblur.png").stat().st_mtime_ns == stamp


def test_results_in_the_input_folder_resume_in_place(tmp_path, photos, tiny_weights, capsys):
    """--output equal to the input folder: a rerun finds its own results (and --degrade companions) there; they are
    not inputs, so it skips what is done and redoes a deleted result with the seed it had."""
    args = ["run", "--input", str(photos), "--output", str(photos)] + _common(tiny_weights)
    assert main(args) == 0
    made = sorted(p.name for p in photos.glob("*_diffpir_deblur*.png"))
    assert made == ["a_diffpir_deblur.png", "a_diffpir_deblur_degraded.png", "b_diffpir_deblur.png",
                    "b_diffpir_deblur_degraded.png"]
    b_first = np.asarray(Image.open(photos / "b_diffpir_deblur.png"))
    (photos / "b_diffpir_deblur.png").unlink()
    capsys.readouterr()
    assert main(args) == 0
    err = capsys.readouterr().err
    assert "1 of 2 images already restored" in err and "1 images restored" in err
    assert sorted(p.name for p in photos.glob("*_diffpir_deblur*.png")) == made  # nothing restored twice
    assert np.array_equal(np.asarray(Image.open(photos / "b_diffpir_deblur.png")), b_first)  # same seed (index 1)
    assert main(args) == 0 and "nothing to do" in capsys.readouterr().err


def test_non_recursive_glob_and_list(tmp_path, photos, tiny_weights):
    out1 = tmp_path / "o1"
    assert main(["run", "--input", str(photos), "--output", str(out1)] + _common(tiny_weights)) == 0
    assert sorted(p.name for p in out1.glob("*_deblur.png")) == ["a_diffpir_deblur.png", "b_diffpir_deblur.png"]
    out2 = tmp_path / "o2"
    assert main(["run", "--input", str(photos / "*.png"), "--output", str(out2)] + _common(tiny_weights)) == 0
    assert sorted(p.name for p in out2.glob("*_deblur.png")) == ["a_diffpir_deblur.png", "b_diffpir_deblur.png"]
    lst = photos / "list.txt"
    lst.write_text("# my picks\nsub/c.png\nb.png\n")
    out3 = tmp_path / "o3"
    assert main(["run", "--input", str(lst), "--output", str(out3)] + _common(tiny_weights)) == 0
    assert sorted(p.relative_to(out3).as_posix() for p in out3.rglob("*_deblur.png")) == [
        "b_diffpir_deblur.png", "sub/c_diffpir_deblur.png"]


def test_a_failed_image_is_reported_and_the_rest_written(tmp_path, photos, tiny_weights, capsys):
    (photos / "broken.png").write_bytes(b"not a png")
    out = tmp_path / "out"
    rc = main(["run", "--input", str(photos), "--output", str(out)] + _common(tiny_weights))
    err = capsys.readouterr().err
    assert rc == 2 and "broken.png" in err and "1 of 3 images failed" in err
    assert sorted(p.name for p in out.glob("*_deblur.png")) == ["a_diffpir_deblur.png", "b_diffpir_deblur.png"]


def test_several_inputs_need_a_folder(tmp_path, photos, tiny_weights, capsys):
    (tmp_path / "file.png").write_bytes(b"x")
    rc = main(["run", "--input", str(photos), "--output", str(tmp_path / "file.png")] + _common(tiny_weights))
    assert rc == 2 and "need a folder" in capsys.readouterr().err


def test_restore_list_and_batched_tensor(tiny_weights):
    r = Restorer.from_pretrained(tiny_weights, method="diffpir", device="cpu")
    g = torch.Generator().manual_seed(0)
    ys = torch.rand(3, 3, 16, 16, generator=g)
    op = Blur(gaussian_kernel(5, 1.0))
    batch = r.restore(ys, task="deblur", operator=op, steps=3, seed=5)
    assert batch.shape == (3, 3, 16, 16)
    singles = [r.restore(ys[k:k + 1], task="deblur", operator=op, steps=3, seed=5 + k) for k in range(3)]
    for k in range(3):  # one UNet call on 3 images: equal up to the network's batch-size rounding
        torch.testing.assert_close(batch[k], singles[k][0], atol=1e-5, rtol=0)
    assert not torch.equal(batch[0], batch[1])
    lst = r.restore([ys[0].numpy().transpose(1, 2, 0), ys[1].numpy().transpose(1, 2, 0)], task="deblur",
                    operator=op, steps=3, seed=5)
    assert isinstance(lst, list) and len(lst) == 2 and lst[0].shape == (16, 16, 3)


def test_restore_folder_api_mirrors_the_cli(tmp_path, photos, tiny_weights):
    r = Restorer.from_pretrained(tiny_weights, method="diffpir", device="cpu")
    (photos / "broken.png").write_bytes(b"nope")
    op = lambda x: Blur(gaussian_kernel(5, 1.0))  # noqa: E731
    rep = r.restore_folder(photos, tmp_path / "out", task="deblur", operator=op, steps=2, seed=3, recursive=True)
    assert sorted(p.name for p in rep["written"]) == ["a_diffpir_deblur.png", "b_diffpir_deblur.png",
                                                      "c_diffpir_deblur.png"]
    assert list(rep["failed"]) == [photos / "broken.png"]
    again = r.restore_folder(photos, tmp_path / "out", task="deblur", operator=op, steps=2, seed=3, recursive=True)
    assert len(again["skipped"]) == 3 and not again["written"]
    # image k is restored with seed + k, as alone
    y = torch.from_numpy(np.asarray(Image.open(photos / "b.png")).astype(np.float32) / 255).permute(2, 0, 1)[None]
    alone = r.restore_tensor(y, "deblur", Blur(gaussian_kernel(5, 1.0)), steps=2, seed=3 + 1)
    got = np.asarray(Image.open(tmp_path / "out" / "b_diffpir_deblur.png"))
    assert np.abs(got.astype(int) - np.round(alone[0].permute(1, 2, 0).clamp(0, 1).numpy() * 255)).max() <= 1


def test_two_processes_share_a_folder(tmp_path, photos, tiny_weights):
    """Launched as 2 processes (torchrun; accelerate launch sets the same RANK / WORLD_SIZE), the images are dealt
    to the ranks; together they write every result once, identical to a single-process run."""
    import os
    import socket
    import subprocess
    import sys

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = tmp_path / "multi"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr",
                        "127.0.0.1", "--master_port", str(port), "-m", "restorekit.cli", "run", "--input",
                        str(photos), "--output", str(out), "--recursive"] + _common(tiny_weights),
                       capture_output=True, text=True, timeout=300, env=env)
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stderr.count("restored image written to") == 3  # each image once, over both ranks
    single = tmp_path / "single"
    assert main(["run", "--input", str(photos), "--output", str(single), "--recursive"] + _common(tiny_weights)) == 0
    for p in single.rglob("*_deblur.png"):
        assert np.array_equal(np.asarray(Image.open(p)), np.asarray(Image.open(out / p.relative_to(single))))
