"""DiffBIR training data: file lists / folders, crops, and the two official degradations.

* ``CodeformerDataset`` (DiffBIR ``diffbir/dataset/codeformer.py``, stage 1 and the v1/v2 stage 2): blur with an
  isotropic or anisotropic Gaussian (``blur_kernel_size`` 41, sigma in ``blur_sigma``), bilinear downsampling by a
  factor drawn from ``downsample_range``, Gaussian noise (sigma/255 from ``noise_range``), JPEG (quality from
  ``jpeg_range``), bilinear resize back to the HQ size. Written here with numpy / torch / Pillow (no OpenCV): the
  blur is a correlation with reflect-101 borders (``cv2.filter2D``'s default), the resizes are bilinear with
  half-pixel centres and no antialiasing (``cv2.INTER_LINEAR``), JPEG goes through Pillow.
* ``RealESRGANDataset`` + ``RealESRGANBatchTransform`` (v2.1 stage 2): USM-sharpened HQ, then restorekit's
  Real-ESRGAN second-order degradation (:mod:`restorekit.operators.realesrgan`, official option names) down by
  ``stage2_scale``, bicubic back to the HQ size, rounded to 8 bits; the training-pair pool (``queue_size``) keeps
  each pair's caption with it.

Inputs: a folder of images (sorted, recursive; a caption is read from ``<image>.txt`` beside an image when it
exists), a ``.txt`` file list (one path per line, the official ``load_file_list``), or a ``.parquet`` / ``.jsonl`` /
``.csv`` table with the official ``file_metas`` keys (``image_path_key``, ``short_prompt_key``,
``long_prompt_key``).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, fields
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from ...errors import ConfigError
from ...training import IMAGE_EXTS

# ----------------------------------------------------------------------------- file lists


def _table_rows(path: Path) -> list[dict]:
    ext = path.suffix.lower()
    if ext == ".parquet":
        try:
            import pyarrow.parquet as pq
        except ImportError:
            raise ConfigError(f"{path}: reading parquet file lists needs pyarrow (pip install pyarrow)") from None
        return pq.read_table(str(path)).to_pylist()
    if ext == ".jsonl":
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    if ext == ".csv":
        import csv

        with open(path, newline="") as f:
            return list(csv.DictReader(f))
    raise ConfigError(f"{path}: file lists are .txt (one path per line), .parquet, .jsonl or .csv")


def load_file_list(source, file_metas: list | None = None) -> list[dict]:
    """``[{"image_path", "short_prompt", "long_prompt"}]`` from a folder, a ``.txt`` list or ``file_metas``."""
    files: list[dict] = []
    if file_metas:
        for meta in file_metas:
            p = Path(meta["file_list"])
            if not p.is_file():
                raise ConfigError(f"file list not found: {p}")
            ip, sk, lk = (meta.get("image_path_key", "image_path"), meta.get("short_prompt_key"),
                          meta.get("long_prompt_key"))
            for row in _table_rows(p):
                if ip not in row:
                    raise ConfigError(f"{p}: no column {ip!r} (image_path_key)")
                short = str(row.get(sk) or "") if sk else ""
                files.append({"image_path": str(row[ip]), "short_prompt": short,
                              "long_prompt": str(row.get(lk) or "") if lk else short})
        return files
    if source is None or source == "":
        raise ConfigError("no training data: give a folder of images or a file list (--data / file_list)")
    p = Path(source)
    if p.is_dir():
        for f in sorted(q for q in p.rglob("*") if q.suffix.lower() in IMAGE_EXTS):
            cap = f.with_suffix(".txt")
            prompt = cap.read_text().strip() if cap.is_file() else ""
            files.append({"image_path": str(f), "short_prompt": prompt, "long_prompt": prompt})
    elif p.is_file() and p.suffix.lower() == ".txt":
        for line in p.read_text().splitlines():
            if line.strip():
                files.append({"image_path": line.strip(), "short_prompt": "", "long_prompt": ""})
    elif p.is_file():
        return load_file_list(None, [{"file_list": str(p), "image_path_key": "image_path",
                                      "short_prompt_key": "short_prompt", "long_prompt_key": "long_prompt"}])
    else:
        raise ConfigError(f"training data not found: {p}")
    if not files:
        raise ConfigError(f"no images ({', '.join(sorted(IMAGE_EXTS))}) listed in {p}")
    return files


# ----------------------------------------------------------------------------- crops


def _halve_while_large(img: Image.Image, size: int) -> Image.Image:
    while min(*img.size) >= 2 * size:
        img = img.resize(tuple(x // 2 for x in img.size), resample=Image.BOX)
    return img


def center_crop(img: Image.Image, size: int) -> np.ndarray:
    """guided-diffusion's centre crop: BOX halving, bicubic resize of the short side to ``size``, centre crop."""
    img = _halve_while_large(img, size)
    s = size / min(*img.size)
    img = img.resize(tuple(round(x * s) for x in img.size), resample=Image.BICUBIC)
    arr = np.array(img)
    y, x = (arr.shape[0] - size) // 2, (arr.shape[1] - size) // 2
    return arr[y:y + size, x:x + size]


def random_crop(img: Image.Image, size: int, rng: np.random.Generator, min_crop_frac: float = 0.7,
                max_crop_frac: float = 1.0) -> np.ndarray:
    """guided-diffusion's random crop: the short side is resized to a random length in
    [size / max_crop_frac, size / min_crop_frac], then a random ``size`` square is cut."""
    lo, hi = math.ceil(size / max_crop_frac), math.ceil(size / min_crop_frac)
    small = int(rng.integers(lo, hi + 1))
    img = _halve_while_large(img, small)
    s = small / min(*img.size)
    img = img.resize(tuple(round(x * s) for x in img.size), resample=Image.BICUBIC)
    arr = np.array(img)
    y = int(rng.integers(arr.shape[0] - size + 1))
    x = int(rng.integers(arr.shape[1] - size + 1))
    return arr[y:y + size, x:x + size]


def load_hq(path: str, out_size: int, crop_type: str, rng: np.random.Generator) -> np.ndarray:
    """(out_size, out_size, 3) uint8 RGB, as the official ``load_gt_image``."""
    try:
        img = Image.open(path).convert("RGB")
    except OSError as e:
        raise ConfigError(f"cannot read training image {path}: {e}") from None
    if crop_type == "none" or (img.height == out_size and img.width == out_size):
        if img.height != out_size or img.width != out_size:
            raise ConfigError(f"{path} is {img.width}x{img.height}; crop_type none needs {out_size}x{out_size}")
        return np.array(img)
    if crop_type == "center":
        return center_crop(img, out_size)
    return random_crop(img, out_size, rng)


# ----------------------------------------------------------------------------- CodeFormer degradation


@dataclass
class CodeformerOptions:
    """``CodeformerDataset`` parameters under their official names (defaults: configs/train/train_stage1.yaml)."""

    out_size: int = 512
    crop_type: str = "center"
    blur_kernel_size: int = 41
    kernel_list: tuple = ("iso", "aniso")
    kernel_prob: tuple = (0.5, 0.5)
    blur_sigma: tuple = (0.1, 12.0)
    downsample_range: tuple = (1.0, 12.0)
    noise_range: tuple | None = (0.0, 15.0)
    jpeg_range: tuple | None = (30, 100)

    @classmethod
    def from_params(cls, params: dict) -> CodeformerOptions:
        names = {f.name for f in fields(cls)}
        kw = {k: (tuple(v) if isinstance(v, list) else v) for k, v in params.items() if k in names}
        o = cls(**kw)
        if o.crop_type not in ("none", "center", "random"):
            raise ConfigError(f"crop_type must be none, center or random, not {o.crop_type!r}")
        if o.blur_kernel_size % 2 != 1:
            raise ConfigError("blur_kernel_size must be odd")
        if set(o.kernel_list) - {"iso", "aniso"}:
            raise ConfigError(f"CodeformerDataset kernels are iso / aniso, not {sorted(set(o.kernel_list))}")
        return o


def gaussian_kernel2d(size: int, sx: float, sy: float, theta: float) -> np.ndarray:
    """Normalised bivariate Gaussian on a ``size`` x ``size`` grid centred at 0, covariance
    R(theta) diag(sx^2, sy^2) R(theta)^T."""
    from ...operators.realesrgan import anisotropic_kernel

    return anisotropic_kernel(size, sx, sy, theta, "gaussian")


def draw_codeformer_params(o: CodeformerOptions, rng: np.random.Generator) -> dict:
    """The random choices of one CodeFormer degradation (in the official order)."""
    p = np.asarray(o.kernel_prob, dtype=np.float64)
    kind = str(o.kernel_list[int(rng.choice(len(o.kernel_list), p=p / p.sum()))])
    sx = float(rng.uniform(*o.blur_sigma))
    if kind == "aniso":
        sy, theta = float(rng.uniform(*o.blur_sigma)), float(rng.uniform(-math.pi, math.pi))
    else:
        sy, theta = sx, 0.0
    out = {"kernel": kind, "sigma_x": sx, "sigma_y": sy, "theta": theta,
           "scale": float(rng.uniform(*o.downsample_range))}
    out["noise"] = float(rng.uniform(*o.noise_range)) if o.noise_range is not None else None
    out["jpeg"] = int(rng.uniform(*o.jpeg_range)) if o.jpeg_range is not None else None
    return out


def filter2d_reflect101(x: torch.Tensor, k: np.ndarray) -> torch.Tensor:
    """``cv2.filter2D(img, -1, k)`` (correlation, BORDER_REFLECT_101) of (N, C, H, W)."""
    p = k.shape[0] // 2
    arr = x.detach().cpu().numpy()
    arr = np.pad(arr, ((0, 0), (0, 0), (p, p), (p, p)), mode="reflect")  # numpy 'reflect' = reflect-101
    xt = torch.from_numpy(arr).to(x)
    kt = torch.from_numpy(np.ascontiguousarray(k)).to(x)[None, None].repeat(x.shape[1], 1, 1, 1)
    return F.conv2d(xt, kt, groups=x.shape[1])


def resize_linear(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """``cv2.resize(..., INTER_LINEAR)``: bilinear, half-pixel centres, no antialiasing; ``size`` is (h, w)."""
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=False)


def codeformer_degrade(hq: torch.Tensor, o: CodeformerOptions, rng: np.random.Generator,
                       params: dict | None = None) -> torch.Tensor:
    """LQ image of the HQ (1, 3, H, W) in [0, 1], same size (the official ``__getitem__`` pipeline)."""
    from ...operators.realesrgan import jpeg

    p = params or draw_codeformer_params(o, rng)
    h, w = hq.shape[-2:]
    k = gaussian_kernel2d(o.blur_kernel_size, p["sigma_x"], p["sigma_y"], p["theta"])
    x = filter2d_reflect101(hq, k)
    x = resize_linear(x, (max(1, int(h // p["scale"])), max(1, int(w // p["scale"]))))
    if p["noise"] is not None:
        n = rng.standard_normal(x.shape).astype(np.float32) * p["noise"] / 255.0
        x = (x + torch.from_numpy(n).to(x)).clamp(0, 1)
    if p["jpeg"] is not None:
        x = jpeg(x.clamp(0, 1), p["jpeg"])
    return resize_linear(x, (h, w))


# ----------------------------------------------------------------------------- datasets


class CodeformerDataset:
    """HQ/LQ pairs with the CodeFormer degradation; ``sample(i, rng)`` -> (hq [0,1] (3,S,S), lq [0,1], prompt).
    The prompt is emptied with probability 0.5, as upstream."""

    def __init__(self, files: list[dict], opts: CodeformerOptions):
        self.files, self.o = files, opts

    def __len__(self) -> int:
        return len(self.files)

    def sample(self, index: int, rng: np.random.Generator):
        f = self.files[index]
        hq = torch.from_numpy(load_hq(f["image_path"], self.o.out_size, self.o.crop_type, rng)).permute(2, 0, 1)
        hq = hq.float()[None] / 255.0
        prompt = f["short_prompt"]
        if rng.uniform() < 0.5:
            prompt = ""
        lq = codeformer_degrade(hq, self.o, rng)
        return hq[0], lq[0], prompt


@dataclass
class RealESRGANOptions:
    """``RealESRGANDataset`` / ``RealESRGANBatchTransform`` parameters (configs/train/train_stage2_v2.1.yaml)."""

    out_size: int = 512
    crop_type: str = "none"
    use_hflip: bool = False
    use_rot: bool = False
    p_long_prompt: float = 0.2
    p_empty_prompt: float = 0.2
    use_sharpener: bool = True
    queue_size: int = 256
    stage2_scale: float = 4


class RealESRGANDataset:
    """HQ crops and captions; the degradation happens per batch (:class:`RealESRGANBatchTransform`)."""

    def __init__(self, files: list[dict], opts: RealESRGANOptions):
        self.files, self.o = files, opts

    def __len__(self) -> int:
        return len(self.files)

    def sample(self, index: int, rng: np.random.Generator):
        f = self.files[index]
        prompt = f["long_prompt"] if rng.uniform() < self.o.p_long_prompt else f["short_prompt"]
        hq = load_hq(f["image_path"], self.o.out_size, self.o.crop_type, rng)
        if rng.uniform() < self.o.p_empty_prompt:
            prompt = ""
        t = torch.from_numpy(np.ascontiguousarray(hq)).permute(2, 0, 1).float() / 255.0
        if self.o.use_hflip and rng.uniform() < 0.5:
            t = t.flip(-1)
        if self.o.use_rot:
            if rng.uniform() < 0.5:
                t = t.flip(-2)
            if rng.uniform() < 0.5:
                t = t.transpose(-2, -1)
        return t, None, prompt


class CaptionedPairPool:
    """Real-ESRGAN's training-pair pool with the captions kept beside their pairs (``_dequeue_and_enqueue``)."""

    def __init__(self, size: int):
        self.size, self.ptr = int(size), 0
        self.lq = self.gt = None
        self.txt: list = []

    def __call__(self, lq, gt, txt, g: torch.Generator):
        b = lq.shape[0]
        if self.lq is None:
            if self.size % b:
                raise ConfigError(f"queue size {self.size} should be divisible by batch size {b}")
            self.lq = torch.zeros(self.size, *lq.shape[1:], dtype=lq.dtype)
            self.gt = torch.zeros(self.size, *gt.shape[1:], dtype=gt.dtype)
            self.txt = [None] * self.size
        lq, gt = lq.cpu(), gt.cpu()
        if self.ptr == self.size:
            idx = torch.randperm(self.size, generator=g)
            self.lq, self.gt = self.lq[idx], self.gt[idx]
            self.txt = [self.txt[int(j)] for j in idx]
            out = self.lq[:b].clone(), self.gt[:b].clone(), list(self.txt[:b])
            self.lq[:b], self.gt[:b] = lq, gt
            self.txt[:b] = list(txt)
            return out
        self.lq[self.ptr:self.ptr + b], self.gt[self.ptr:self.ptr + b] = lq, gt
        self.txt[self.ptr:self.ptr + b] = list(txt)
        self.ptr += b
        return lq, gt, list(txt)

    def state_dict(self) -> dict:
        return {"ptr": self.ptr, "lq": self.lq, "gt": self.gt, "txt": json.dumps(self.txt)}

    def load_state_dict(self, sd: dict) -> None:
        self.ptr, self.lq, self.gt, self.txt = int(sd["ptr"]), sd["lq"], sd["gt"], json.loads(sd["txt"])


class RealESRGANBatchTransform:
    """USM sharpening, second-order degradation down by ``stage2_scale``, bicubic back, 8-bit rounding, pool."""

    def __init__(self, params: dict, opts: RealESRGANOptions):
        from ..diffir.train import degradation_config

        self.o = opts
        self.deg = degradation_config(params)
        self.pool = CaptionedPairPool(opts.queue_size) if opts.queue_size else None
        self.usm = None
        if opts.use_sharpener:
            from ...nets.gan import USMSharp

            self.usm = USMSharp()

    @torch.no_grad()
    def __call__(self, hq: torch.Tensor, txt: list[str], rng: np.random.Generator, g: torch.Generator):
        from ...operators.realesrgan import second_order_degrade

        if self.usm is not None:
            hq = self.usm.to(hq.device)(hq).clamp(0, 1)
        h, w = hq.shape[-2:]
        sf = self.o.stage2_scale
        if isinstance(sf, (list, tuple)):
            sf = float(rng.uniform(*sf))
        lq = second_order_degrade(hq.cpu(), max(1, round(sf)), seed=int(rng.integers(2 ** 31)), cfg=self.deg)
        if lq.shape[-2:] != (h, w):
            lq = F.interpolate(lq, size=(h, w), mode="bicubic", align_corners=False)
        lq = (lq * 255.0).round().clamp(0, 255) / 255.0
        lq = lq.to(hq.device)
        if self.pool is not None:
            lq, hq, txt = self.pool(lq, hq, txt, g)
        return hq, lq, txt

    def state_dict(self) -> dict:
        return self.pool.state_dict() if self.pool is not None else {}

    def load_state_dict(self, sd: dict) -> None:
        if self.pool is not None and sd:
            self.pool.load_state_dict(sd)


def build_dataset(ds_cfg: dict, batch_transform_cfg: dict | None, data=None):
    """(dataset, batch transform or None) from the official ``dataset.train`` / ``batch_transform`` entries;
    ``data`` (a folder or file list) replaces ``file_list`` / ``file_metas``."""
    target = str(ds_cfg.get("target", "diffbir.dataset.codeformer.CodeformerDataset")).rsplit(".", 1)[-1]
    params = dict(ds_cfg.get("params") or {})
    if target == "CodeformerDataset":
        files = load_file_list(data if data is not None else params.get("file_list"))
        return CodeformerDataset(files, CodeformerOptions.from_params(params)), None
    if target == "RealESRGANDataset":
        metas = [dict(m) for m in params.get("file_metas") or []]
        if data is not None:  # a table given as --data is read with the config's column names
            is_table = Path(data).suffix.lower() in (".parquet", ".jsonl", ".csv")
            metas = [{**(metas[0] if metas else {}), "file_list": str(data)}] if is_table else None
        elif not any(m.get("file_list") for m in metas):
            metas = None
        files = load_file_list(data, metas)
        bt = dict((batch_transform_cfg or {}).get("params") or {})
        names = {f.name for f in fields(RealESRGANOptions)}
        o = RealESRGANOptions(**{k: v for k, v in {**params, **bt}.items() if k in names})
        if o.crop_type not in ("none", "center", "random"):
            raise ConfigError(f"crop_type must be none, center or random, not {o.crop_type!r}")
        return RealESRGANDataset(files, o), RealESRGANBatchTransform({**params, **bt}, o)
    raise ConfigError(f"unknown DiffBIR dataset {ds_cfg.get('target')!r} (CodeformerDataset, RealESRGANDataset)")
