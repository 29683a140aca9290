"""Pieces shared by the training loops: image folders, random crops, EMA, LR schedules and the shared
step loop (:class:`StepLoop`)."""

from __future__ import annotations

import contextlib
from pathlib import Path

import torch
import torch.nn.functional as F

from .errors import ConfigError, RestoreKitError
from .io import finish_atomic_write, read_image
from .limits import LIMITS

IMAGE_EXTS = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp"}


def load_images(data: str | Path, min_size: int, crop_name: str | None = None) -> list[torch.Tensor]:
    """All images under ``data`` as (3,H,W) tensors in [0,1]; small ones are upscaled to ``min_size``.

    ``crop_name`` (the option that set ``min_size``, e.g. ``"crop"``): a :class:`ConfigError` when *every* image's
    shorter side is below ``min_size`` (a crop that fits no training image is a mistake, not a reason to upscale
    the whole data set), before anything is upscaled."""
    root = Path(data)
    if not root.is_dir():
        raise ConfigError(f"training data folder not found: {root}")
    files = sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_EXTS)
    imgs = [torch.from_numpy(read_image(f)[0]).permute(2, 0, 1).contiguous() for f in files]
    if not imgs:
        raise ConfigError(f"no images ({', '.join(sorted(IMAGE_EXTS))}) found under {root}")
    if crop_name is not None:
        big = max(imgs, key=lambda t: min(t.shape[-2:]))
        if min(big.shape[-2:]) < min_size:
            h, w = big.shape[-2:]
            raise ConfigError(f"{crop_name} {min_size} is larger than every training image under {root} (the "
                              f"largest is {w}x{h}); use a {crop_name} of at most {min(h, w)}")
    for i, t in enumerate(imgs):
        if min(t.shape[-2:]) < min_size:
            scale = min_size / min(t.shape[-2:])
            imgs[i] = F.interpolate(t[None], scale_factor=scale, mode="bicubic", align_corners=False)[0].clamp(0, 1)
    return imgs


def _image_files(spec) -> set[Path]:
    """The resolved image files a training-data spec (a folder, an image file, or a dict of them) reads."""
    if isinstance(spec, dict):
        return set().union(*(_image_files(v) for v in spec.values())) if spec else set()
    if not spec or not isinstance(spec, (str, Path)):
        return set()
    root = Path(spec)
    if root.is_dir():
        return {p.resolve() for p in root.rglob("*") if p.suffix.lower() in IMAGE_EXTS and p.is_file()}
    return {root.resolve()} if root.is_file() else set()


#: the largest seed a trainer takes, the restore seed's (limits.LIMITS): torch's generators take [0, 2**64 - 1],
#: numpy's any seed >= 0; the streams are seeded ``seed + rank`` (and ``seed + 1000 + rank``), which stay in range
MAX_SEED = LIMITS["seed"]["hi"]


def check_seed(v, what: str = "seed") -> int:
    """``v`` as a training seed (a whole number in [0, :data:`MAX_SEED`]), or a :class:`ConfigError` naming
    ``what`` (torch's ``manual_seed`` and numpy's ``default_rng`` want non-negative seeds)."""
    from .errors import check_number

    v = check_number(v, what, lo=0, integer=True)
    if v > MAX_SEED:
        raise ConfigError(f"{what} must be at most 2**63 - 1 ({MAX_SEED}), got {v}")
    return v


def latest_state(state_dir) -> Path | None:
    """The ``<iter>.state`` file of the highest iteration in ``state_dir`` (None: none there)."""
    sd = Path(state_dir)
    if not sd.is_dir():
        return None
    states = sorted(sd.glob("*.state"), key=lambda p: int(p.stem) if p.stem.isdigit() else -1)
    return states[-1] if states else None


def check_no_earlier_states(state_dir, resume) -> None:
    """A fresh run (``resume`` unset) that writes training states must not mix them with an earlier run's in
    ``state_dir``: its states would overwrite some of them and leave the later ones, and ``--resume auto``
    would then pick a state of the other run."""
    if resume not in (None, False, ""):
        return
    last = latest_state(state_dir)
    if last is not None:
        raise ConfigError(f"the training-state folder {state_dir} already holds states of an earlier run (latest: "
                          f"{last.name}); continue that run (with its options, --steps included) with --resume "
                          f"auto, or start over: delete {state_dir} or give another --output / --state-dir")


def overwrite_note(paths, log) -> None:
    """``note: P exists and will be overwritten`` (as ``restorekit run`` says) for each existing file of ``paths``."""
    for p in paths:
        if Path(p).is_file():
            log(f"note: {p} exists and will be overwritten")


def check_training_output(output, data=(), inputs=(), also=(), state_dir=None, name: str = "--output",
                          resume=None) -> Path:
    """Refuse, before any training work, a weights ``output`` that would destroy an input or cannot be written.

    ``output`` (and each path in ``also``, other files the run writes) must not be an existing folder nor a name
    ending with a path separator, must not have an image suffix (a trainer writes weights, never an image), must
    not resolve to an image of the training data (``data``: folders, image files or dicts of them, as
    ``load_images`` / ``load_pairs`` read) nor to one of ``inputs`` (``{label: path}``: weights, config, resume
    state), and must be writable. ``state_dir``: the folder of training states, when the run writes them (it must
    be a folder, or creatable, and writable; a fresh run, ``resume`` unset, must not find states of an earlier run
    there: :func:`check_no_earlier_states`). ``name``: how the messages call the output (the flag or config entry
    that set it)."""
    import os

    from .files import check_writable

    seps = tuple(s for s in (os.sep, os.altsep, "/") if s)
    for p in [output, *also]:
        if isinstance(p, (str, os.PathLike)) and os.fspath(p).endswith(seps):
            q = Path(p)
            raise ConfigError(f"{name} {os.fspath(p)} is a folder; give a weights file name such as "
                              f"{q / 'model.safetensors'}")
    out = Path(output)
    data_files: set[Path] = set()
    for d in data:
        data_files |= _image_files(d)
    ins = {Path(p).resolve(): label for label, p in dict(inputs).items()
           if isinstance(p, (str, Path)) and str(p) and Path(p).is_file()}
    for p in [out, *(Path(a) for a in also)]:
        if p.is_dir():
            raise ConfigError(f"{name} {p} is a folder; give a weights file name such as {p / 'model.safetensors'}")
        if p.suffix.lower() in IMAGE_EXTS:
            raise ConfigError(f"{name} {p} has an image suffix ({p.suffix}); training writes weights, not an image: "
                              f"use a .safetensors name")
        r = p.resolve()
        if r in data_files:
            raise ConfigError(f"{name} {p} is a file of the training data; refusing to overwrite it (choose another "
                              f"output)")
        if r in ins:
            raise ConfigError(f"{name} {p} is the {ins[r]}; refusing to overwrite an input (choose another output)")
        try:
            check_writable(p)
        except RestoreKitError as e:
            raise ConfigError(f"{name}: {e}") from None
    if state_dir is not None:
        sd = Path(state_dir)
        if sd.exists() and not sd.is_dir():
            raise ConfigError(f"the training-state folder {sd} is a file, not a folder")
        check_writable(sd / "1.state")
        check_no_earlier_states(sd, resume)
    return out


_OOM = (getattr(torch, "OutOfMemoryError", None) or torch.cuda.OutOfMemoryError,)


def is_out_of_memory(e: BaseException) -> bool:
    """Whether ``e`` is torch running out of (CPU or GPU) memory."""
    if isinstance(e, _OOM):
        return True
    msg = str(e).lower()
    return isinstance(e, RuntimeError) and ("can't allocate memory" in msg or "out of memory" in msg)


@contextlib.contextmanager
def out_of_memory_as_error(what: str, advice: str):
    """Turn an out-of-memory error inside the block into a one-line :class:`ConfigError`:
    ``out of memory while training with <what>; <advice>``."""
    oom = False
    try:
        yield
    except RuntimeError as e:
        if not is_out_of_memory(e):
            raise
        oom = True
    if oom:  # outside the handler, so that the failed step's tensors can go
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        raise ConfigError(f"out of memory while training with {what}; {advice}")


def random_crops(imgs: list[torch.Tensor], batch: int, size: int, g: torch.Generator,
                 rescale: tuple[float, float] = (0.5, 1.0)) -> torch.Tensor:
    """``batch`` random crops (random rescale, flip, 90-degree rotation), in [0, 1]."""
    out = []
    for _ in range(batch):
        img = imgs[int(torch.randint(len(imgs), (1,), generator=g))]
        s = float(torch.empty(1).uniform_(rescale[0], rescale[1], generator=g))
        h, w = img.shape[-2:]
        if min(h, w) * s >= size and s != 1.0:
            img = F.interpolate(img[None], scale_factor=s, mode="bilinear", antialias=True, align_corners=False)[0]
        h, w = img.shape[-2:]
        top = int(torch.randint(h - size + 1, (1,), generator=g))
        left = int(torch.randint(w - size + 1, (1,), generator=g))
        crop = img[:, top:top + size, left:left + size]
        if torch.rand(1, generator=g) < 0.5:
            crop = crop.flip(-1)
        crop = torch.rot90(crop, int(torch.randint(4, (1,), generator=g)), dims=(-2, -1))
        out.append(crop)
    return torch.stack(out).clamp(0, 1)


class ParamEMA:
    """BasicSR's ``model_ema``: a copy of the network whose *parameters* follow
    ``ema = decay * ema + (1 - decay) * param`` every step (constant decay; buffers stay as copied).
    ``warmup=True`` uses restorekit's earlier ramp ``min(decay, (1 + n) / (10 + n))`` instead."""

    def __init__(self, module: torch.nn.Module, decay: float = 0.999, warmup: bool = False):
        import copy

        self.decay, self.warmup, self.n = float(decay), bool(warmup), 0
        self.module = copy.deepcopy(module).eval()
        for p in self.module.parameters():
            p.requires_grad_(False)

    @torch.no_grad()
    def update(self, module: torch.nn.Module) -> None:
        self.n += 1
        d = min(self.decay, (1 + self.n) / (10 + self.n)) if self.warmup else self.decay
        src = dict(module.named_parameters())
        for k, p in self.module.named_parameters():
            p.mul_(d).add_(src[k].detach().to(p), alpha=1 - d)

    @property
    def state(self) -> dict:
        return {k: v.detach().cpu() for k, v in self.module.state_dict().items()}

    def state_dict(self) -> dict:
        return {"n": self.n, "module": self.module.state_dict()}

    def load_state_dict(self, sd: dict) -> None:
        self.n = int(sd["n"])
        self.module.load_state_dict(sd["module"], strict=True)


# ---------------------------------------------------------------------------
# learning-rate schedules (closed forms of BasicSR's schedulers; ``t`` = the scheduler's last_epoch, which
# BasicSR's loop has at current_iter - 1)
# ---------------------------------------------------------------------------


def _position(t: int, cumulative: list[int]) -> int:
    for i, c in enumerate(cumulative):
        if t <= c:
            return i
    return len(cumulative) - 1


def scheduled_lr(base_lr: float, t: int, scheduler: dict | None) -> float:
    """Learning rate at scheduler step ``t`` for a BasicSR ``scheduler`` option dict.

    MultiStepLR / MultiStepRestartLR (milestones, gamma, restarts, restart_weights),
    CosineAnnealingRestartLR (periods, restart_weights, eta_min) and CosineAnnealingRestartCyclicLR
    (periods, restart_weights, eta_mins); ``None`` or type ``constant``: no schedule."""
    import math

    if not scheduler:
        return base_lr
    sch = dict(scheduler)
    kind = sch.get("type", "MultiStepLR")
    if kind == "constant":
        return base_lr
    if kind in ("MultiStepLR", "MultiStepRestartLR"):
        restarts = list(sch.get("restarts", [0]))
        weights = list(sch.get("restart_weights", [1] * len(restarts)))
        past = [(r, w) for r, w in zip(restarts, weights) if r <= t]
        r, w = past[-1] if past else (0, 1)
        n = sum(1 for m in sch.get("milestones", []) if r < m <= t)
        return base_lr * w * float(sch.get("gamma", 0.1)) ** n
    if kind in ("CosineAnnealingRestartLR", "CosineAnnealingRestartCyclicLR"):
        periods = list(sch["periods"])
        weights = list(sch.get("restart_weights", [1] * len(periods)))
        cum = [sum(periods[: i + 1]) for i in range(len(periods))]
        i = _position(t, cum)
        eta = (sch.get("eta_mins") or [sch.get("eta_min", 0)] * len(periods))[i] \
            if kind.endswith("CyclicLR") else sch.get("eta_min", 0)
        start = 0 if i == 0 else cum[i - 1]
        return eta + weights[i] * 0.5 * (base_lr - eta) * (1 + math.cos(math.pi * (t - start) / periods[i]))
    raise ConfigError(f"unknown scheduler type {kind!r} (MultiStepLR, MultiStepRestartLR, CosineAnnealingRestartLR, "
                      f"CosineAnnealingRestartCyclicLR)")


def progressive_size(it: int, iters: list[int], gt_sizes: list[int], batch_sizes: list[int]) -> tuple[int, int]:
    """(patch size, batch size) at iteration ``it`` of progressive training (Restormer / DiffIR GoPro)."""
    cum = [sum(iters[: i + 1]) for i in range(len(iters))]
    j = next((i for i, c in enumerate(cum) if it <= c), len(cum) - 1)
    return int(gt_sizes[j]), int(batch_sizes[j])


class TrainingPairPool:
    """Real-ESRGAN's training-pair pool (``_dequeue_and_enqueue``): fill a queue of ``size`` pairs; once full,
    shuffle it, hand out the first ``b`` pairs and put the new batch in their place."""

    def __init__(self, size: int):
        self.size, self.ptr = int(size), 0
        self.lq = self.gt = None

    def __call__(self, lq: torch.Tensor, gt: torch.Tensor, g: torch.Generator):
        b = lq.shape[0]
        if self.lq is None:
            if self.size % b:
                raise ConfigError(f"queue size {self.size} should be divisible by batch size {b}")
            self.lq = torch.zeros(self.size, *lq.shape[1:], dtype=lq.dtype, device=lq.device)
            self.gt = torch.zeros(self.size, *gt.shape[1:], dtype=gt.dtype, device=gt.device)
        if self.ptr == self.size:
            idx = torch.randperm(self.size, generator=g).to(self.lq.device)
            self.lq, self.gt = self.lq[idx], self.gt[idx]
            out_lq, out_gt = self.lq[:b].clone(), self.gt[:b].clone()
            self.lq[:b], self.gt[:b] = lq, gt
            return out_lq, out_gt
        self.lq[self.ptr:self.ptr + b], self.gt[self.ptr:self.ptr + b] = lq, gt
        self.ptr += b
        return lq, gt

    def state_dict(self) -> dict:
        return {"ptr": self.ptr, "lq": self.lq, "gt": self.gt}

    def load_state_dict(self, sd: dict) -> None:
        self.ptr, self.lq, self.gt = int(sd["ptr"]), sd["lq"], sd["gt"]


def load_pairs(lq_dir: str | Path, gt_dir: str | Path) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Paired images (e.g. GoPro blur/sharp) matched by file name (relative path) in two folders."""
    lq_root, gt_root = Path(lq_dir), Path(gt_dir)
    for r in (lq_root, gt_root):
        if not r.is_dir():
            raise ConfigError(f"training data folder not found: {r}")
    gts = {p.relative_to(gt_root): p for p in sorted(gt_root.rglob("*")) if p.suffix.lower() in IMAGE_EXTS}
    lqs = {p.relative_to(lq_root): p for p in sorted(lq_root.rglob("*")) if p.suffix.lower() in IMAGE_EXTS}
    if not gts:
        raise ConfigError(f"no images found under {gt_root}")
    missing = sorted(set(gts) - set(lqs))
    if missing:
        raise ConfigError(f"{len(missing)} ground-truth images have no input image of the same name in {lq_root}, "
                          f"e.g. {missing[0]}")
    out = []
    for rel, gp in gts.items():
        g_arr, _ = read_image(gp)
        l_arr, _ = read_image(lqs[rel])
        out.append((torch.from_numpy(l_arr).permute(2, 0, 1).contiguous(),
                    torch.from_numpy(g_arr).permute(2, 0, 1).contiguous()))
    return out


def paired_random_crops(pairs, batch: int, gt_size: int, scale: int, g: torch.Generator,
                        flip: bool = True, rot: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """Aligned random crops (GT ``gt_size``, LQ ``gt_size // scale``) with the same flip / rotation."""
    lqs, gts = [], []
    ls = gt_size // scale
    for _ in range(batch):
        lq, gt = pairs[int(torch.randint(len(pairs), (1,), generator=g))]
        h, w = lq.shape[-2:]
        if gt.shape[-2:] != (h * scale, w * scale):
            raise ConfigError(f"paired images do not fit scale {scale}: input {tuple(lq.shape[-2:])}, "
                              f"ground truth {tuple(gt.shape[-2:])}")
        if h < ls or w < ls:
            raise ConfigError(f"paired image {h}x{w} is smaller than the patch {ls}")
        top = int(torch.randint(h - ls + 1, (1,), generator=g))
        left = int(torch.randint(w - ls + 1, (1,), generator=g))
        a = lq[:, top:top + ls, left:left + ls]
        b = gt[:, top * scale:top * scale + gt_size, left * scale:left * scale + gt_size]
        if flip and torch.rand(1, generator=g) < 0.5:
            a, b = a.flip(-1), b.flip(-1)
        if rot:
            k = int(torch.randint(4, (1,), generator=g))
            a, b = torch.rot90(a, k, dims=(-2, -1)), torch.rot90(b, k, dims=(-2, -1))
        lqs.append(a)
        gts.append(b)
    return torch.stack(lqs), torch.stack(gts)


# ---------------------------------------------------------------------------
# a shared step loop: accelerate, per-rank random streams, exact resume, periodic states and hooks
# ---------------------------------------------------------------------------


def rng_state(rng, g: torch.Generator) -> dict:
    """numpy Generator, torch Generator, torch's global and Python's ``random`` states (for an exact resume)."""
    import random

    py = random.getstate()
    return {"numpy": rng.bit_generator.state, "torch_gen": g.get_state(), "torch": torch.get_rng_state(),
            "python": list(py[1]), "python_version": py[0], "python_gauss": py[2]}


def set_rng_state(st: dict, rng, g: torch.Generator) -> None:
    import random

    rng.bit_generator.state = st["numpy"]
    g.set_state(st["torch_gen"])
    torch.set_rng_state(st["torch"])
    random.setstate((st["python_version"], tuple(st["python"]), st["python_gauss"]))


def find_resume(resume, state_dir: str | Path) -> Path | None:
    """``resume``: None (fresh start), an ``<iter>.state`` file, a folder of them, or ``"auto"`` (the latest in
    ``state_dir``; none there: a fresh start)."""
    if resume in (None, False, ""):
        return None
    if str(resume) == "auto":
        return latest_state(state_dir)
    p = Path(resume)
    if p.is_dir():
        return find_resume("auto", p)
    if not p.is_file():
        raise ConfigError(f"--resume: training state not found: {p}")
    return p


#: what every training state written by :meth:`StepLoop.save` holds
_STATE_KEYS = ("iter", "meta", "rng", "local", "objects", "history")


def load_training_state(path: str | Path, keys=_STATE_KEYS) -> dict:
    """A training state file (``torch.load``, ``weights_only``) as its dict, or a one-line :class:`ConfigError`
    naming the file when it is empty, truncated, corrupt or not a restorekit training state (``keys``: what it
    must hold)."""
    path = Path(path)
    from .weights import quiet_torch_load

    try:
        with quiet_torch_load():
            st = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises IndexError, EOFError, RuntimeError, UnpicklingError, ... on bad bytes
        from .weights import explain_load_failure

        raise ConfigError(f"--resume: cannot load the training state {path}: "
                          f"{explain_load_failure(path, e, 'a training state')}") from None
    missing = [k for k in keys if not isinstance(st, dict) or k not in st]
    if missing:
        what = f"a {type(st).__name__}" if not isinstance(st, dict) else f"no {', '.join(missing)}"
        raise ConfigError(f"--resume: {path} is not a restorekit training state (it holds {what}; states are the "
                          f"<iteration>.state files a run writes with save_every / --save-every)")
    return st


def _write_via_part(path: str | Path, write) -> None:
    """``write(tmp)`` to ``path``'s ``.part`` file, renamed onto ``path`` when complete with the permissions of
    :func:`restorekit.io.finish_atomic_write` (a new file gets 0o666 & ~umask, an overwritten one keeps its mode)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".part")
    write(tmp)
    finish_atomic_write(tmp, path)


def save_atomic(obj, path: str | Path) -> None:
    """``torch.save`` to ``path`` atomically (:func:`_write_via_part`)."""
    _write_via_part(path, lambda tmp: torch.save(obj, tmp))


def save_safetensors_atomic(tensors: dict, path: str | Path, metadata: dict | None = None) -> None:
    """``safetensors.torch.save_file`` to ``path`` atomically (:func:`_write_via_part`): safetensors creates its file
    with mode 0o600, the result gets 0o644 under the usual umask 0o022."""
    from safetensors.torch import save_file

    _write_via_part(path, lambda tmp: save_file(tensors, str(tmp), metadata=metadata))


class RandomStream:
    """A ``torch.Generator`` (any device) as an object with ``state_dict`` / ``load_state_dict``, for
    :class:`StepLoop`'s ``local`` objects."""

    def __init__(self, gen: torch.Generator):
        self.gen = gen

    def state_dict(self) -> dict:
        return {"state": self.gen.get_state()}

    def load_state_dict(self, sd: dict) -> None:
        self.gen.set_state(sd["state"])


def _load_object(obj, sd, path: Path, name: str) -> None:
    """``obj.load_state_dict(sd)``; a state that does not fit (another network, a damaged file) is a one-line
    :class:`ConfigError` naming the state file and the object."""
    try:
        obj.load_state_dict(sd)
    except (KeyError, TypeError, ValueError, RuntimeError, IndexError, AttributeError) as e:
        from .errors import first_line

        raise ConfigError(f"--resume: the {name} state in {path} does not fit this run ({type(e).__name__}: "
                          f"{first_line(e, 160, 'no detail')})") from None


def _plain(v):
    """A history value as a JSON number: ints stay ints, tensors and other numbers become floats."""
    if isinstance(v, int) and not isinstance(v, bool):
        return v
    return float(v.item()) if torch.is_tensor(v) else float(v)


class StepLoop:
    """The loop every restorekit trainer shares: an ``accelerate.Accelerator`` (one CPU, one GPU or several;
    ``mixed_precision`` "no" | "fp16" | "bf16", or None: as ``accelerate launch`` says), random streams seeded
    ``seed + rank`` (``self.rng`` numpy, ``self.g`` torch), exact ``--resume`` (the objects in ``state`` plus every
    random stream, the iteration and the history), a training state every ``save_every`` iterations, hooks every
    N iterations, a log line every ``log_every`` iterations (the mean of each value since the last line) and
    ``time_limit`` (seconds: the run stops after the iteration that passes it, all processes together, and writes
    a training state there when states are on; ``self.last`` is the last iteration run).

    ``run(step, state, hooks)``: ``step(it) -> dict`` of numbers or one-element tensors (the losses of iteration
    ``it``, counted from 1; tensors become numbers when a line is logged, a state saved or the run ends, not
    every step); ``hooks``: ``[(every, fn(it))]``, called on every process after the step (``fn`` may return
    a dict, kept in ``self.val_history``). ``state`` holds what all processes share (network, optimizer),
    ``local`` what each process has of its own (its data stream, a training-pair pool): each process saves its
    own. ``step`` may lower ``self.total`` (a time budget); the lowered length is saved in the state."""

    def __init__(self, total: int, state_dir: str | Path, seed: int = 0, save_every: int = 0, mixed_precision="no",
                 split_batches: bool = False, log=print, log_every: int = 0, tag: str = "train",
                 find_unused_parameters: bool = False, time_limit: float | None = None, log_skip=()):
        import random

        from accelerate import Accelerator, DistributedDataParallelKwargs

        handlers = [DistributedDataParallelKwargs(find_unused_parameters=True)] if find_unused_parameters else []
        # None: accelerate's own choice (``accelerate launch --mixed_precision``, else no)
        mp = {"fp32": "no", False: "no"}.get(mixed_precision, mixed_precision)
        if mp not in (None, "no", "fp16", "bf16"):
            raise ConfigError(f"mixed_precision must be no, fp16 or bf16, not {mixed_precision!r}")
        from accelerate.state import AcceleratorState

        # a second run in the same process may ask for another precision: AcceleratorState keeps the first one
        # (the process group, in PartialState, is kept)
        AcceleratorState._reset_state(reset_partial_state=False)
        # without CUDA, cpu=True makes accelerate treat a torchrun / accelerate-launched group as MULTI_CPU
        self.acc = Accelerator(mixed_precision=mp, kwargs_handlers=handlers, cpu=not torch.cuda.is_available())
        self.rank, self.world = self.acc.process_index, self.acc.num_processes
        self.total, self.state_dir = int(total), Path(state_dir)
        self.save_every, self.log, self.tag = int(save_every or 0), log, tag
        self.log_every = int(log_every or max(1, self.total // 10))
        self.time_limit = None if time_limit is None else float(time_limit)
        self.log_skip = set(log_skip)
        self.split_batches = split_batches
        seed = check_seed(seed)
        torch.manual_seed(seed + self.rank)
        random.seed(seed + self.rank)
        import numpy as np

        self.rng = np.random.default_rng(seed + self.rank)
        self.g = torch.Generator().manual_seed(seed + self.rank)
        self.start, self.last, self.history, self.val_history = 0, 0, [], []
        self._plain_upto = 0
        self.meta: dict = {}

    @property
    def device(self):
        return self.acc.device

    @property
    def is_main(self) -> bool:
        return self.acc.is_main_process

    def per_process(self, batch: int) -> int:
        """The share of a total ``batch`` one process draws (accelerate's ``split_batches``)."""
        if batch % self.world:
            raise ConfigError(f"batch size {batch} is not divisible by the {self.world} processes")
        return batch // self.world

    def agree(self, value: float, op=max) -> float:
        """``op`` (max or min) of ``value`` over all processes (``value`` itself in a single-process run)."""
        if self.world == 1:
            return value
        vals = self.acc.gather(torch.tensor([float(value)], device=self.device))
        return float(op(vals.tolist()))

    def _flush(self) -> None:
        for rec in self.history[self._plain_upto:]:
            for k, v in rec.items():
                rec[k] = _plain(v)
        self._plain_upto = len(self.history)

    def resume(self, resume, state: dict, meta: dict | None = None, local: dict | None = None) -> int:
        """Load a training state into the objects of ``state`` (name -> object with ``load_state_dict``);
        ``meta`` must equal what was saved. Returns the iteration to continue after."""
        import json

        self.meta = dict(meta or {})
        path = find_resume(resume, self.state_dir)
        if path is None:
            if self.save_every:  # a fresh run writing states beside an earlier run's (a trainer checks it earlier)
                check_no_earlier_states(self.state_dir, resume)
            return 0
        st = load_training_state(path)
        try:
            saved = json.loads(st["meta"])
        except (TypeError, ValueError):
            raise ConfigError(f"--resume: {path} is not a restorekit training state (its meta is not JSON)") from None
        if not isinstance(saved, dict) or not isinstance(st["objects"], dict):
            raise ConfigError(f"--resume: {path} is not a restorekit training state (malformed meta or objects)")
        if saved != json.loads(json.dumps(self.meta)):
            diff = sorted(k for k in set(saved) | set(self.meta) if saved.get(k) != self.meta.get(k))
            raise ConfigError(f"{path} is a training state of another run (differs in: {', '.join(diff)})")
        missing = sorted(set(state) - set(st["objects"]))
        if missing:
            raise ConfigError(f"{path} has no state for {', '.join(missing)}")
        for k, obj in state.items():
            _load_object(obj, st["objects"][k], path, k)
        own = st
        if self.rank:
            rank_file = path.with_name(f"{path.stem}.rng{self.rank}")
            if not rank_file.is_file():
                raise ConfigError(f"{path}: no state of process {self.rank} ({rank_file.name}); resume with the same "
                                  f"number of processes")
            own = load_training_state(rank_file, keys=("rng", "local"))
        for k, obj in (local or {}).items():
            if not isinstance(own["local"], dict) or k not in own["local"]:
                raise ConfigError(f"{path} has no state for {k}")
            _load_object(obj, own["local"][k], path, k)
        try:
            set_rng_state(own["rng"], self.rng, self.g)
        except (KeyError, TypeError, ValueError, RuntimeError) as e:
            from .errors import first_line

            raise ConfigError(f"--resume: {path} has unusable random states ({type(e).__name__}: "
                              f"{first_line(e, 160, '')})") from None
        self.start = self.last = int(st["iter"])
        self.total = int(st.get("total", self.total))
        self.history = json.loads(st["history"])
        self._plain_upto = len(self.history)
        self.val_history = json.loads(st.get("validation", "[]"))
        self.log(f"{self.tag}: resumed from {path} at iteration {self.start}")
        return self.start

    def save(self, it: int, state: dict, local: dict | None = None) -> Path:
        import json

        path = self.state_dir / f"{it}.state"
        own = {"rng": rng_state(self.rng, self.g), "local": {k: v.state_dict() for k, v in (local or {}).items()}}
        if not self.is_main:  # the other processes keep their random streams and local objects
            save_atomic(own, self.state_dir / f"{it}.rng{self.rank}")
            return path
        self._flush()
        st = {"iter": it, "total": self.total, "meta": json.dumps(self.meta), **own,
              "objects": {k: v.state_dict() for k, v in state.items()}, "history": json.dumps(self.history),
              "validation": json.dumps(self.val_history)}
        save_atomic(st, path)
        return path

    def run(self, step, state: dict, hooks=(), local: dict | None = None, on_save=None) -> list[dict]:
        """Iterations ``start + 1 .. total``; ``on_save(it)`` runs on every process after each training state."""
        import time

        import numpy as np

        def save(it):
            self.acc.wait_for_everyone()
            self.save(it, state, local)
            if on_save is not None:
                on_save(it)

        t0 = time.time()
        it = self.start
        while it < self.total:
            it += 1
            rec = step(it)
            self.history.append({k: v.detach() if torch.is_tensor(v) else v for k, v in rec.items()})
            self.last = it
            if it % self.log_every == 0:
                self._flush()
            if it % self.log_every == 0 and self.is_main:
                recent = self.history[-self.log_every:]
                keys = sorted({k for r in recent for k in r} - self.log_skip)
                msg = " ".join(f"{k} {np.mean([r[k] for r in recent if k in r]):.6g}" for k in keys)
                self.log(f"{self.tag} iter {it}/{self.total} {msg} ({time.time() - t0:.0f}s)")
            for every, fn in hooks:
                if every and it % int(every) == 0:
                    out = fn(it)
                    if out:
                        self.val_history.append({"iter": it, **out})
            saved = self.save_every and it % self.save_every == 0
            if saved:
                save(it)
            if self.time_limit is not None and it < self.total \
                    and self.agree(float(time.time() - t0 > self.time_limit)):
                if self.is_main:
                    self.log(f"{self.tag}: time limit {self.time_limit:g}s reached at iteration {it}/{self.total}")
                if self.save_every and not saved:
                    save(it)
                break
        self._flush()
        self.acc.wait_for_everyone()
        return self.history
