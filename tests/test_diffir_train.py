"""DiffIR training recipe: official LR schedules, exact resume, validation, GAN stage, paired / progressive data."""

import math
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from restorekit.methods.diffir.train import stage_options, train_diffir
from restorekit.training import (
    ParamEMA,
    TrainingPairPool,
    progressive_size,
    scheduled_lr,
)
from restorekit.weights import load_state_dict

from .test_diffir import TINY


class _RefMultiStepRestartLR(torch.optim.lr_scheduler.LRScheduler):
    """Transcribed from DiffIR-demotionblur DiffIR/models/lr_scheduler.py L7-L47 (BasicSR MultiStepRestartLR)."""

    def __init__(self, optimizer, milestones, gamma=0.1, restarts=(0,), restart_weights=(1,), last_epoch=-1):
        self.milestones = Counter(milestones)
        self.gamma = gamma
        self.restarts = restarts
        self.restart_weights = restart_weights
        super().__init__(optimizer, last_epoch)

    def get_lr(self):
        if self.last_epoch in self.restarts:
            weight = self.restart_weights[self.restarts.index(self.last_epoch)]
            return [group['initial_lr'] * weight for group in self.optimizer.param_groups]
        if self.last_epoch not in self.milestones:
            return [group['lr'] for group in self.optimizer.param_groups]
        return [group['lr'] * self.gamma ** self.milestones[self.last_epoch] for group in self.optimizer.param_groups]


def _get_position_from_periods(iteration, cumulative_period):
    # lr_scheduler.py L115-L134
    for i, period in enumerate(cumulative_period):
        if iteration <= period:
            return i


class _RefCosineRestart(torch.optim.lr_scheduler.LRScheduler):
    """Transcribed from lr_scheduler.py CosineAnnealingRestartLR (L156-L185) and CosineAnnealingRestartCyclicLR
    (L203-L232): ``eta_mins`` given -> the cyclic variant."""

    def __init__(self, optimizer, periods, restart_weights=(1,), eta_min=0, eta_mins=None, last_epoch=-1):
        self.periods, self.restart_weights, self.eta_min, self.eta_mins = periods, restart_weights, eta_min, eta_mins
        self.cumulative_period = [sum(self.periods[0:i + 1]) for i in range(len(self.periods))]
        super().__init__(optimizer, last_epoch)

    def get_lr(self):
        idx = _get_position_from_periods(self.last_epoch, self.cumulative_period)
        current_weight = self.restart_weights[idx]
        nearest_restart = 0 if idx == 0 else self.cumulative_period[idx - 1]
        current_period = self.periods[idx]
        eta_min = self.eta_mins[idx] if self.eta_mins is not None else self.eta_min
        return [eta_min + current_weight * 0.5 * (base_lr - eta_min) *
                (1 + math.cos(math.pi * ((self.last_epoch - nearest_restart) / current_period)))
                for base_lr in self.base_lrs]


@pytest.mark.parametrize("spec", [
    {"type": "MultiStepLR", "milestones": [5, 9, 9], "gamma": 0.5},
    {"type": "MultiStepRestartLR", "milestones": [3, 8, 14], "gamma": 0.3, "restarts": [0, 10],
     "restart_weights": [1, 0.5]},
    {"type": "CosineAnnealingRestartLR", "periods": [6, 10], "restart_weights": [1, 0.5], "eta_min": 1e-7},
    {"type": "CosineAnnealingRestartCyclicLR", "periods": [7, 9], "restart_weights": [1, 1],
     "eta_mins": [2.85e-4, 1e-6]},
])
def test_schedules_match_basicsr_schedulers(spec):
    opt = torch.optim.Adam([torch.nn.Parameter(torch.zeros(1))], lr=3e-4)
    kw = {k: v for k, v in spec.items() if k != "type"}
    ref = _RefMultiStepRestartLR(opt, **kw) if "milestones" in spec else _RefCosineRestart(opt, **kw)
    # BasicSR's loop: update_learning_rate(current_iter) steps every scheduler when current_iter > 1
    for current_iter in range(1, 17):
        if current_iter > 1:
            opt.step()
            ref.step()
        assert scheduled_lr(3e-4, current_iter - 1, spec) == pytest.approx(opt.param_groups[0]["lr"], rel=1e-12)


def test_param_ema_is_basicsr_model_ema():
    net = torch.nn.Sequential(torch.nn.Linear(3, 3), torch.nn.BatchNorm1d(3))
    ema = ParamEMA(net, 0.9)
    before = {k: v.clone() for k, v in ema.module.state_dict().items()}
    with torch.no_grad():
        for p in net.parameters():
            p.add_(1.0)
        net[1].running_mean.add_(5.0)
    ema.update(net)
    # BasicSR base_model.model_ema: parameters only, ema = decay * ema + (1 - decay) * param
    for k, p in net.named_parameters():
        assert torch.allclose(dict(ema.module.named_parameters())[k], 0.9 * before[k] + 0.1 * p)
    assert torch.equal(ema.module.state_dict()["1.running_mean"], before["1.running_mean"])


def test_training_pair_pool_follows_realesrgan():
    g = torch.Generator().manual_seed(0)
    pool = TrainingPairPool(4)
    batches = [(torch.full((2, 1, 1, 1), float(i)), torch.full((2, 1, 2, 2), float(i))) for i in range(4)]
    out = [pool(lq, gt, g) for lq, gt in batches]
    assert torch.equal(out[0][0], batches[0][0]) and torch.equal(out[1][0], batches[1][0])  # filling: pass-through
    # full: shuffle the queue, hand out its first 2, put the new batch there
    ref = torch.cat([batches[0][0], batches[1][0]])
    idx = torch.randperm(4, generator=torch.Generator().manual_seed(0))
    assert torch.equal(out[2][0], ref.new_tensor([0, 0, 1, 1]).view(4, 1, 1, 1)[idx][:2])
    assert out[2][1].shape == (2, 1, 2, 2) and torch.equal(out[2][1][:, 0, 0, 0], out[2][0][:, 0, 0, 0])
    with pytest.raises(Exception, match="divisible"):
        TrainingPairPool(5)(torch.zeros(2, 1, 1, 1), torch.zeros(2, 1, 1, 1), g)


def test_progressive_patches():
    iters, sizes, bs = [92000, 80000, 38000], [192, 256, 320], [8, 4, 2]
    assert progressive_size(1, iters, sizes, bs) == (192, 8)
    assert progressive_size(92000, iters, sizes, bs) == (192, 8)  # as upstream: current_iter <= groups[j]
    assert progressive_size(92001, iters, sizes, bs) == (256, 4)
    assert progressive_size(10 ** 7, iters, sizes, bs) == (320, 2)


def _images(root, n=3, size=48):
    root.mkdir(exist_ok=True, parents=True)
    rng = np.random.default_rng(0)
    for i in range(n):
        a = np.kron(rng.random((size // 8, size // 8, 3)), np.ones((8, 8, 1)))
        Image.fromarray((a * 255).astype(np.uint8)).save(root / f"{i}.png")
    return root


def _cfg(tmp, **over):
    c = {"task": "sr", "network": TINY.to_dict(), "degradation": "bicubic", "gt_size": 32, "batch_size": 2,
         "seed": 0, "ema_decay": 0.9,
         "stage1": {"total_iter": 6, "optim_g": {"lr": 1e-3, "betas": [0.9, 0.999]},
                    "scheduler": {"type": "CosineAnnealingRestartCyclicLR", "periods": [2, 4],
                                  "restart_weights": [1, 1], "eta_mins": [5e-4, 1e-6]},
                    "output": str(tmp / "s1.safetensors")},
         "stage2": {"total_iter": 6, "encoder_iter": 3, "lr_encoder": 2e-3, "lr_sr": 1e-3, "gamma_encoder": 0.1,
                    "gamma_sr": 0.5, "lr_decay_encoder": 2, "lr_decay_sr": 2, "output": str(tmp / "s2.safetensors")},
         "gan": {"total_iter": 6, "lr_sr": 1e-3, "gamma_sr": 0.5, "lr_decay_sr": 4, "optim_d": {"lr": 1e-3},
                 "scheduler": {"type": "MultiStepLR", "milestones": [3], "gamma": 0.5},
                 "network_d": {"num_in_ch": 3, "num_feat": 4, "skip_connection": True},
                 "gan_opt": {"gan_type": "vanilla", "loss_weight": 0.1}, "l1_gt_usm": True, "gan_gt_usm": True,
                 "output": str(tmp / "gan.safetensors")}}
    c.update(over)
    return c


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """Stage 1 and 2 on tiny data (checkpoints every 3 iterations), reused by the tests below."""
    tmp = tmp_path_factory.mktemp("train")
    data = _images(tmp / "data")
    cfg = _cfg(tmp, save_checkpoint_freq=3)
    i1 = train_diffir(cfg, 1, data=str(data), log=lambda s: None)
    i2 = train_diffir(cfg, 2, data=str(data), log=lambda s: None)
    return tmp, data, cfg, i1, i2


def test_stage_lrs_and_encoder_boundary_as_official(trained):
    tmp, data, cfg, i1, i2 = trained
    sch = cfg["stage1"]["scheduler"]
    assert [r["lr"] for r in i1["history"]] == pytest.approx([scheduled_lr(1e-3, it - 1, sch) for it in range(1, 7)])
    h = i2["history"]
    # DiffIR_S2_model.optimize_parameters: encoder phase while current_iter < encoder_iter
    assert ["l_pix" in r for r in h] == [False, False, True, True, True, True]
    enc = [2e-3 * 0.1 ** (it // 2) for it in (1, 2)]
    joint = [1e-3 * 0.5 ** ((it - 3) // 2) for it in (3, 4, 5, 6)]
    assert [r["lr"] for r in h] == pytest.approx(enc + joint)


@pytest.mark.parametrize("stage", ["1", "2"])
def test_resume_equals_uninterrupted_run(trained, stage):
    tmp, data, cfg, i1, i2 = trained
    full = i1 if stage == "1" else i2
    out = tmp / f"resumed_s{stage}.safetensors"
    sdir = tmp / f"s{stage}_training_states"
    assert (sdir / "3.state").is_file() and (sdir / "6.state").is_file()
    res = train_diffir(cfg, int(stage), data=str(data), output=str(out), resume=str(sdir / "3.state"),
                       state_dir=str(tmp / "unused"), log=lambda s: None)
    assert res["resumed_from"] == 3 and res["history"] == full["history"]
    a, _ = load_state_dict(out)
    b, _ = load_state_dict(tmp / f"s{stage}.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)  # bit-equal on CPU
    if stage == "1":  # "auto": the latest state of the folder (iteration 6: nothing left to do)
        done = train_diffir(cfg, 1, data=str(data), output=str(tmp / "auto.safetensors"), resume="auto",
                            state_dir=str(sdir), log=lambda s: None)
        assert done["resumed_from"] == 6 and done["history"] == full["history"]


def test_mixed_precision_option_runs_under_autocast(trained):
    """``mixed_precision: bf16`` (restorekit option) reaches the shared StepLoop's accelerate autocast: the same
    seed and data give losses close to, but not equal to, the float32 run's."""
    tmp, data, cfg, i1, _ = trained
    cfg = dict(cfg, mixed_precision="bf16", stage1={**cfg["stage1"], "output": str(tmp / "bf16.safetensors")})
    h = train_diffir(cfg, 1, data=str(data), steps=2, state_dir=str(tmp / "bf16_states"), log=lambda s: None)["history"]
    ref = [r["l_pix"] for r in i1["history"][:2]]
    assert [r["l_pix"] for r in h] == pytest.approx(ref, rel=1e-2) and [r["l_pix"] for r in h] != ref


def test_gan_stage_resume_finetune_and_validation(trained):
    tmp, data, cfg, _, _ = trained
    cfg = dict(cfg, degradation="realesrgan", queue_size=4,
               val={"val_freq": 3, "data": str(_images(tmp / "val", n=2, size=32)), "metrics": ["psnr"]})
    full = train_diffir(cfg, "gan", data=str(data), log=lambda s: None)
    h = full["history"]
    assert all(k in h[-1] for k in ("l_g_pix", "l_ipr", "l_g_gan", "l_d_real", "l_d_fake"))
    # DiffIRGANS2Model: lr_sr * gamma_sr ** (current_iter // lr_decay_sr); D: MultiStepLR at step current_iter - 1
    assert [r["lr"] for r in h] == pytest.approx([1e-3 * 0.5 ** (it // 4) for it in range(1, 7)])
    assert [r["lr_d"] for r in h] == pytest.approx([1e-3 * (0.5 if it - 1 >= 3 else 1) for it in range(1, 7)])
    assert [v["iter"] for v in full["validation"]] == [3, 6] and all(v["psnr"] > 5 for v in full["validation"])
    out = tmp / "gan_resumed.safetensors"
    # resume from the iteration-3 state (pool, discriminator, both optimizers and RNGs restored)
    res = train_diffir(cfg, "gan", data=str(data), output=str(out),
                       resume=str(tmp / "gan_training_states" / "3.state"), log=lambda s: None)
    assert res["history"] == h
    a, _ = load_state_dict(out)
    b, _ = load_state_dict(tmp / "gan.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)
    # finetune (V2) starts from the GAN stage's generator and discriminator
    ft = dict(cfg["gan"], d_weights=str(tmp / "gan_net_d.pth"), s2_weights=str(tmp / "gan.safetensors"),
              total_iter=2, output=str(tmp / "ft.safetensors"))
    info = train_diffir(dict(cfg, finetune=ft, val={}), "finetune", data=str(data), log=lambda s: None)
    assert len(info["history"]) == 2 and Path(tmp / "ft.safetensors").is_file()


def test_stage_options_official_names():
    o = stage_options({"stage2": {"total_iter": 10, "encoder_iter": 4, "lr_encoder": 1e-3, "gamma_encoder": 0.1,
                                  "kd_opt": {"type": "KDLoss", "loss_weight": 2, "temperature": 0.15}}}, 2)
    assert o["encoder_iter"] == 4 and o["kd_opt"]["loss_weight"] == 2 and o["ema_decay"] == 0.999
    assert not o["ema_warmup"]
    with pytest.raises(Exception, match="d_weights"):
        stage_options({"finetune": {}}, "finetune")
    with pytest.raises(Exception, match="--stage"):
        stage_options({}, 3)


def test_paired_folders_with_progressive_patches(tmp_path):
    """GoPro-style: blurred/sharp pairs from two folders, patch and batch sizes growing with the iterations."""
    rng = np.random.default_rng(0)
    for sub in ("input", "target"):
        (tmp_path / sub).mkdir()
    for i in range(2):
        a = (rng.random((40, 40, 3)) * 255).astype(np.uint8)
        Image.fromarray(a).save(tmp_path / "target" / f"{i}.png")
        Image.fromarray(np.roll(a, 2, axis=1)).save(tmp_path / "input" / f"{i}.png")
    net = {**TINY.to_dict(), "variant": "deblur"}
    cfg = {"task": "deblur", "network": net, "seed": 0, "gt_sizes": [16, 32], "mini_batch_sizes": [3, 1],
           "iters": [2, 2], "data": {"lq": str(tmp_path / "input"), "gt": str(tmp_path / "target")},
           "stage1": {"total_iter": 4, "output": str(tmp_path / "s1.safetensors")}}
    h = train_diffir(cfg, 1, log=lambda s: None)["history"]
    assert [(r["gt_size"], r["batch"]) for r in h] == [(16, 3), (16, 3), (32, 1), (32, 1)]


CONFIGS = Path(__file__).resolve().parents[1] / "configs" / "diffir"


def _shrink(cfg, tmp, data, vgg):
    """An official config with a tiny network, tiny data and paths under tmp (every other option kept)."""
    import yaml

    cfg = yaml.safe_load(cfg.read_text())
    net = {**TINY.to_dict(), "variant": cfg["task"], "scale": 4 if cfg["task"] == "sr" else 1}
    cfg.update(network=net, gt_size=32, batch_size=2, vgg_weights=str(vgg), data=data,
               val={**cfg.get("val", {}), "data": str(_images(tmp / "val", n=1, size=32))})
    cfg.pop("preset")
    if cfg["task"] == "inpaint":
        cfg.update(gt_size=64, resnet_pl_weights="random")  # LaMa's boxes need 2 x 10 px margin + 30 px
        net["inp_channels"] = 4
        cfg["val"]["data"] = str(_images(tmp / "val", n=1, size=64))
    if "queue_size" in cfg:
        cfg["queue_size"] = 4
    if "gt_sizes" in cfg:
        cfg.update(gt_sizes=[16, 32], mini_batch_sizes=[2, 1])
    for name in ("stage1", "stage2", "gan", "finetune"):
        if name in cfg:
            st = cfg[name] = dict(cfg[name])
            st.update(save_checkpoint_freq=2, val={"val_freq": 2})
            if "discriminator" in st:
                st["discriminator"] = {**st["discriminator"], "ndf": 8}
            if "iters" in st:
                st["iters"] = [1, 2]
            for k in ("output", "s1_weights", "s2_weights", "d_weights"):
                if k in st:
                    st[k] = str(tmp / Path(st[k]).name)
    return cfg


@pytest.mark.parametrize("name,stages", [("realsr_x4", ["1", "2", "gan", "finetune"]), ("srgan_x4", ["gan"]),
                                         ("gopro", ["1", "2"]), ("inpaint_place2", ["1", "2"])])
def test_official_configs_run_every_stage(tmp_path, name, stages, tv_vgg_file):
    if name == "gopro":
        rng = np.random.default_rng(0)
        for sub in ("lq", "gt"):
            (tmp_path / sub).mkdir()
        for i in range(2):
            a = (rng.random((40, 40, 3)) * 255).astype(np.uint8)
            Image.fromarray(a).save(tmp_path / "gt" / f"{i}.png")
            Image.fromarray(a[:, ::-1]).save(tmp_path / "lq" / f"{i}.png")
        data = {"lq": str(tmp_path / "lq"), "gt": str(tmp_path / "gt")}
    else:
        data = str(_images(tmp_path / "data", size=64))
    cfg = _shrink(CONFIGS / f"{name}.yaml", tmp_path, data, tv_vgg_file)
    if stages == ["gan"]:  # the stage-1/2 weights it starts from
        for st in ("1", "2"):
            train_diffir(cfg, st, steps=2, log=lambda s: None)
    for st in stages:
        info = train_diffir(cfg, st, steps=4, log=lambda s: None)
        assert len(info["history"]) == 4 and [v["iter"] for v in info["validation"]] == [2, 4]
        key = {"1": "stage1", "2": "stage2"}.get(st, st)
        states = tmp_path / (Path(cfg[key]["output"]).stem + "_training_states")
        assert (states / "2.state").is_file()


@pytest.fixture(scope="module")
def tv_vgg_file(tmp_path_factory):
    import torchvision

    net = torch.nn.Module()
    net.features = torchvision.models.vgg.make_layers(torchvision.models.vgg.cfgs["E"])
    p = tmp_path_factory.mktemp("vgg") / "vgg19-dcbb9e9d.pth"
    torch.save(net.state_dict(), p)
    return p


def test_warmup_as_basicsr(tmp_path):
    data = _images(tmp_path / "data")
    cfg = _cfg(tmp_path)
    cfg["stage1"] = {"total_iter": 5, "warmup_iter": 3, "optim_g": {"lr": 1e-3},
                     "scheduler": {"type": "MultiStepLR", "milestones": [3], "gamma": 0.5},
                     "output": str(tmp_path / "w.safetensors")}
    h = train_diffir(cfg, 1, data=str(data), log=lambda s: None)["history"]
    # base_model.update_learning_rate: initial_lr / warmup_iter * current_iter while current_iter < warmup_iter
    assert [r["lr"] for r in h] == pytest.approx([1e-3 / 3, 2e-3 / 3, 1e-3, 5e-4, 5e-4])


def test_cli_train_resume(tmp_path):
    import yaml

    from restorekit.cli import main

    data = _images(tmp_path / "data")
    cfg = _cfg(tmp_path, save_checkpoint_freq=2)
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(cfg))
    assert main(["train", "--method", "diffir", "--stage", "1", "--config", str(tmp_path / "c.yaml"),
                 "--data", str(data), "--steps", "6"]) == 0
    assert main(["train", "--method", "diffir", "--stage", "1", "--config", str(tmp_path / "c.yaml"),
                 "--data", str(data), "--steps", "6", "--resume", "auto"]) == 0


def launch_two_cpu_processes(tmp_path, code: str):
    """Runs ``code`` (Python that leaves a trainer's summary in ``info``) under ``accelerate launch --multi_gpu
    --num_processes 2`` on CPUs (gloo); returns the finished process and each process's ``info["history"]``
    (one file per process: prints of two processes may interleave on one pipe)."""
    import json
    import os
    import socket
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[1]
    script = tmp_path / "run.py"
    script.write_text(f"import json, os, sys\nsys.path.insert(0, {str(root)!r})\n{code}\n"
                      f"open({str(tmp_path)!r} + '/history' + os.environ['RANK'] + '.json', 'w')"
                      ".write(json.dumps(info['history']))\n")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    r = subprocess.run([sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
                        "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
                        "--main_process_port", str(port), str(script)], capture_output=True, text=True,
                       timeout=300, env=env, check=False)
    assert r.returncode == 0, r.stderr[-2000:]
    return r, [json.loads((tmp_path / f"history{rank}.json").read_text()) for rank in (0, 1)]


@pytest.mark.slow
def test_stage1_under_accelerate_launch_with_two_cpu_processes(tmp_path):
    """``accelerate launch --multi_gpu --num_processes 2`` on CPUs through the shared StepLoop: each process
    draws its own batch (different losses), keeps its random streams in its own state file (``2.rng1``), and
    only the main process writes the output."""
    import json

    data = _images(tmp_path / "data")
    cfg = _cfg(tmp_path, save_checkpoint_freq=2)
    cfg["stage1"] = {**cfg["stage1"], "total_iter": 4}
    (tmp_path / "cfg.json").write_text(json.dumps(cfg))
    r, hist = launch_two_cpu_processes(tmp_path, "\n".join([
        "import restorekit.methods.diffir.train as M",
        "orig = M._save",
        "def save(*a, **k):",
        "    print('SAVED', flush=True)",
        "    orig(*a, **k)",
        "M._save = save",
        f"info = M.train_diffir(json.load(open({str(tmp_path / 'cfg.json')!r})), 1, data={str(data)!r}, log=print)"]))
    assert len(hist[0]) == len(hist[1]) == 4
    assert all(a["l_pix"] != b["l_pix"] for a, b in zip(*hist))  # each process its own crops (seed + rank)
    assert r.stdout.count("SAVED") == 1
    states = tmp_path / "s1_training_states"
    assert {p.name for p in states.iterdir()} == {"2.state", "2.rng1", "4.state", "4.rng1"}
    a, _ = load_state_dict(tmp_path / "s1.safetensors")
    from restorekit.nets.diffir import DiffIRS1

    assert set(a) == set(DiffIRS1(TINY).state_dict())
