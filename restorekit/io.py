"""Image reading/writing and conversions between PIL, numpy and torch.

Internally every method works on float32 RGB in [0, 1] shaped ``(1, 3, H, W)``.
This module turns whatever a user gives into that, remembers what it was
(:class:`ImageInfo`) and turns results back into the same kind, so that
grayscale stays grayscale, an alpha channel is carried through and 16-bit
files are written back as 16-bit.
"""

from __future__ import annotations

import contextlib
import os
import stat
import sys
import tempfile
import threading
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from .errors import ImageReadError, RestoreKitError, TaskError, first_line

try:  # OpenCV (a dependency of pyiqa) reads 16-bit colour PNG/TIFF; PIL truncates them.
    import cv2
except ImportError:  # pragma: no cover - exercised only without opencv
    cv2 = None

from PIL import Image, UnidentifiedImageError


@dataclass
class ImageInfo:
    """How an input image looked, so the output can look the same."""

    kind: str  # "pil" | "numpy" | "tensor" | "file"
    channels: int  # 1, 3 or 4 as given
    bit_depth: int = 8  # 8 or 16 (files / integer arrays)
    dtype: object = None  # numpy/torch dtype of the input
    alpha: np.ndarray | None = None  # HxW float alpha in [0, 1]
    layout: str = "HWC"  # numpy: HWC or HW; tensor: CHW or NCHW
    pil_mode: str | None = None


#: Float images are [0, 1] data. They are used as given, not clamped: a noisy observation (y = Ax + n) strays
#: outside [0, 1] and the methods' data terms expect it unclipped, as in the official scripts. Values outside
#: this wider range are refused as not being [0, 1] data (0..255 floats, say).
FLOAT_RANGE = (-1.0, 2.0)


def check_float_range(lo: float, hi: float, what: str = "image") -> None:
    """The rule for float input: finite, and within :data:`FLOAT_RANGE` (it is then used unclamped)."""
    if not (np.isfinite(lo) and np.isfinite(hi)):
        raise ImageReadError(f"{what} contains NaN or infinite values")
    if lo < FLOAT_RANGE[0] or hi > FLOAT_RANGE[1]:
        hint = " (it looks like 0..255 data: divide by 255)" if 2 < hi <= 255.5 else ""
        raise ImageReadError(f"float {what} values must be [0, 1] data (noise may stray to "
                             f"{FLOAT_RANGE[0]:g}..{FLOAT_RANGE[1]:g}), got {lo:.4g}..{hi:.4g}{hint}")


def _to_float(arr: np.ndarray) -> tuple[np.ndarray, int]:
    if arr.size == 0:
        raise ImageReadError(f"image is empty (shape {arr.shape})")
    if arr.dtype == np.uint8:
        return arr.astype(np.float32) / 255.0, 8
    if arr.dtype == np.uint16:
        return arr.astype(np.float32) / 65535.0, 16
    if np.issubdtype(arr.dtype, np.integer):
        # other integer types carry no fixed range: their values decide it (0..255 is 8-bit data, 0..65535
        # 16-bit); an unsigned 32/64-bit type above that is full-range data of its type (32-bit TIFF)
        lo, hi = int(arr.min()), int(arr.max())
        if lo < 0:
            raise ImageReadError(f"integer pixel values must not be negative, got {lo}..{hi} ({arr.dtype}); give "
                                 "uint8 / uint16 data or floats in [0, 1]")
        if hi <= 255:
            return arr.astype(np.float32) / 255.0, 8
        if hi <= 65535:
            return arr.astype(np.float32) / 65535.0, 16
        if np.issubdtype(arr.dtype, np.unsignedinteger):
            return (arr.astype(np.float64) / float(np.iinfo(arr.dtype).max)).astype(np.float32), 16
        raise ImageReadError(f"{arr.dtype} pixel values up to {hi} have no known range (above 16-bit's 65535); "
                             "give uint8 / uint16 data or floats in [0, 1]")
    if np.issubdtype(arr.dtype, np.floating):
        f = arr.astype(np.float32)
        check_float_range(float(np.min(f)) if np.isfinite(f).all() else float("nan"), float(np.max(f)))
        return f, 8
    if arr.dtype == bool:
        return arr.astype(np.float32), 8
    raise ImageReadError(f"unsupported pixel type {arr.dtype}")


def _split_channels(arr: np.ndarray) -> tuple[np.ndarray, int, np.ndarray | None]:
    """HxW, HxWx1, HxWx2 (gray+alpha), HxWx3, HxWx4 -> (HxWx3 rgb, channels, alpha)."""
    if arr.ndim == 2:
        return np.repeat(arr[..., None], 3, axis=2), 1, None
    if arr.ndim != 3:
        raise ImageReadError(f"expected a 2-D image, got an array of shape {arr.shape}")
    c = arr.shape[2]
    if c == 1:
        return np.repeat(arr, 3, axis=2), 1, None
    if c == 2:
        return np.repeat(arr[..., :1], 3, axis=2), 1, arr[..., 1]
    if c == 3:
        return arr, 3, None
    if c == 4:
        return arr[..., :3], 4, arr[..., 3]
    raise ImageReadError(f"unsupported number of channels: {c}")


# PIL's own decompression-bomb threshold (it warns above it and refuses above twice it)
MAX_READ_PIXELS = Image.MAX_IMAGE_PIXELS or 89_478_485


@contextlib.contextmanager
def _native_stderr_silenced():
    """File descriptor 2 goes to the null device meanwhile: C libraries (libpng's "Not enough image data", OpenCV's
    WARN lines) write there directly, past ``sys.stderr``. Python-level output is not touched."""
    if sys.stderr is not None:
        sys.stderr.flush()
    try:
        saved = os.dup(2)
    except OSError:  # no fd 2 (e.g. a GUI process): nothing to silence
        yield
        return
    null = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(null, 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(null)


#: formats whose extra frames are an animation (GIF, APNG, animated WebP): such a file is refused rather than
#: restored from its first frame. Multi-page TIFFs (often a full image and its thumbnails) give their first page.
_ANIMATED_FORMATS = ("GIF", "PNG", "WEBP")


def _exif_orientation(im) -> int:
    """The EXIF Orientation tag (1-8) of an open PIL image; 1 (as stored) when it has none or it is unreadable."""
    try:
        v = int(im.getexif().get(0x0112, 1))
    except Exception:  # noqa: BLE001  (a damaged EXIF block: the pixels as stored)
        return 1
    return v if 1 <= v <= 8 else 1


def _apply_orientation(arr: np.ndarray, orientation: int) -> np.ndarray:
    """Pixels as stored (HxW or HxWxC) -> as the EXIF Orientation says they display, as PIL's
    ``ImageOps.exif_transpose``: a phone photo taken upright is restored upright (the result carries no EXIF)."""
    if orientation == 1:
        return arr
    op = {2: lambda a: a[:, ::-1], 3: lambda a: a[::-1, ::-1], 4: lambda a: a[::-1],
          5: lambda a: a.swapaxes(0, 1), 6: lambda a: np.rot90(a, -1), 7: lambda a: np.rot90(a, 2).swapaxes(0, 1),
          8: lambda a: np.rot90(a, 1)}[orientation]
    return np.ascontiguousarray(op(arr))


def read_image(path: str | os.PathLike) -> tuple[np.ndarray, ImageInfo]:
    """Read an image file as float32 RGB HxWx3 in [0, 1].

    Grayscale is replicated to RGB, alpha is kept aside in the info, 16-bit
    files keep their precision. Raises :class:`ImageReadError` with the file
    name when the file is missing or cannot be decoded.
    """
    p = Path(path)
    if not p.exists():
        raise ImageReadError(f"input image not found: {p}")
    if p.is_dir():
        raise ImageReadError(f"input is a directory, not an image: {p}")
    arr, fmt, frames, orientation = None, None, 1, 1
    try:  # the header alone: refuse decompression bombs before anything decodes them
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(p) as im:
                fmt, (w, h) = im.format, im.size
                frames = int(getattr(im, "n_frames", 1) or 1)
                orientation = _exif_orientation(im)
    except Image.DecompressionBombError:
        w = h = -1
    except (UnidentifiedImageError, OSError, ValueError):
        w = h = 0
    if frames > 1 and fmt in _ANIMATED_FORMATS:
        raise ImageReadError(f"image {p} is an animation of {frames} frames ({fmt}); restorekit restores single "
                             "images: save the frame you want as its own file")
    if w * h > MAX_READ_PIXELS or w < 0:
        size = f"over {2 * MAX_READ_PIXELS / 1e6:.0f} M" if w < 0 else f"{w}x{h}"
        raise ImageReadError(f"image {p} declares {size} pixels, over the {MAX_READ_PIXELS / 1e6:.0f} MP limit for "
                             "reading (PIL's decompression-bomb limit)")
    if cv2 is not None:
        raw = np.fromfile(str(p), dtype=np.uint8)
        if raw.size:
            with _native_stderr_silenced():  # libpng / OpenCV print their own lines before our one-line error
                try:
                    arr = cv2.imdecode(raw, cv2.IMREAD_UNCHANGED)
                except cv2.error:
                    arr = None
        if arr is None and fmt in ("PNG", "JPEG"):
            # OpenCV reads every PNG and JPEG; one it refuses is damaged (e.g. too little pixel data), and PIL
            # would fill the missing rows with black without a word
            raise ImageReadError(f"cannot read image {p}: the {fmt} file is damaged or truncated")
        if arr is not None:
            if arr.ndim == 3 and arr.shape[2] == 3:
                arr = arr[..., ::-1]
            elif arr.ndim == 3 and arr.shape[2] == 4:
                arr = arr[..., [2, 1, 0, 3]]
            arr = np.ascontiguousarray(arr)
    if arr is None:
        try:
            with Image.open(p) as im:
                im.load()
                if im.mode == "P":
                    im = im.convert("RGBA" if "transparency" in im.info else "RGB")
                elif im.mode in ("CMYK", "YCbCr", "LAB", "HSV"):
                    im = im.convert("RGB")
                arr = np.asarray(im)
        except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError) as e:
            raise ImageReadError(f"cannot read image {p}: not a supported image file ({e})") from None
    if arr.size == 0 or min(arr.shape[:2]) < 1:
        raise ImageReadError(f"image {p} is empty")
    arr = _apply_orientation(arr, orientation)
    try:
        f, depth = _to_float(arr)
        rgb, channels, alpha = _split_channels(f)
    except ImageReadError as e:
        raise ImageReadError(f"image {p}: {e}") from None
    if np.issubdtype(arr.dtype, np.floating):
        depth = 16  # a float file (TIFF) is written back with 16 bits, not 8
    info = ImageInfo(kind="file", channels=channels, bit_depth=depth, dtype=arr.dtype, alpha=alpha)
    return np.ascontiguousarray(np.clip(rgb, 0, 1), dtype=np.float32), info


def to_tensor(image) -> tuple[torch.Tensor, ImageInfo]:
    """Any supported image -> (1, 3, H, W) float32 tensor in [0, 1] and its info.

    Accepts PIL images, numpy arrays (HxW, HxWxC; uint8, uint16 or float in
    [0, 1]) and tensors (CxHxW or 1xCxHxW, float in [0, 1]).
    """
    if isinstance(image, (str, os.PathLike)):
        arr, info = read_image(image)
        return torch.from_numpy(arr).permute(2, 0, 1)[None].contiguous(), info
    if isinstance(image, Image.Image):
        mode = image.mode
        im = image
        if mode == "P":
            im = image.convert("RGBA" if "transparency" in image.info else "RGB")
        elif mode not in ("L", "LA", "RGB", "RGBA", "I;16", "I", "F"):
            im = image.convert("RGB")
        arr, depth = _to_float(np.asarray(im))
        rgb, channels, alpha = _split_channels(arr)
        info = ImageInfo(kind="pil", channels=channels, bit_depth=depth, alpha=alpha, pil_mode=im.mode)
        return torch.from_numpy(np.ascontiguousarray(np.clip(rgb, 0, 1))).permute(2, 0, 1)[None].contiguous(), info
    if isinstance(image, np.ndarray):
        arr, depth = _to_float(image)
        rgb, channels, alpha = _split_channels(arr)
        info = ImageInfo(kind="numpy", channels=channels, bit_depth=depth, dtype=image.dtype, alpha=alpha,
                         layout="HW" if image.ndim == 2 else "HWC")
        return torch.from_numpy(np.ascontiguousarray(rgb)).permute(2, 0, 1)[None].contiguous(), info
    if isinstance(image, torch.Tensor):
        t = image.detach()
        layout = "NCHW" if t.ndim == 4 else "CHW"
        if t.ndim == 2:
            t, layout = t[None], "HW"
        if t.ndim == 3:
            t = t[None]
        if t.ndim != 4 or t.shape[0] != 1:
            raise ImageReadError(f"expected a tensor shaped (C,H,W) or (1,C,H,W), got {tuple(image.shape)}")
        if t.numel() == 0:
            raise ImageReadError(f"image tensor is empty (shape {tuple(image.shape)})")
        c = t.shape[1]
        if c not in (1, 3, 4):
            raise ImageReadError(f"unsupported number of channels: {c}")
        if t.is_complex():
            raise ImageReadError(f"unsupported pixel type {t.dtype} (complex values)")
        if not (t.is_floating_point() or t.dtype == torch.bool):
            lo, hi = int(t.min()), int(t.max())
            if not 0 <= lo <= hi <= 1:
                hint = " (divide by 255)" if hi <= 255 and lo >= 0 else ""
                raise ImageReadError(f"a {t.dtype} tensor image must hold floats in [0, 1], got integers "
                                     f"{lo}..{hi}; convert it with .float(){hint}")
        t = t.float()
        if not bool(torch.isfinite(t).all()):
            raise ImageReadError("image tensor contains NaN or infinite values")
        check_float_range(float(t.min()), float(t.max()), "tensor image")
        alpha = None
        if c == 4:
            alpha = t[0, 3].cpu().numpy()
            t = t[:, :3]
        elif c == 1:
            t = t.repeat(1, 3, 1, 1)
        info = ImageInfo(kind="tensor", channels=c, dtype=image.dtype, alpha=alpha, layout=layout)
        return t.contiguous(), info
    raise RestoreKitError(f"unsupported image type {type(image).__name__}; pass a PIL image, numpy array, tensor "
                          f"or path")


def _resize_alpha(alpha: np.ndarray, h: int, w: int) -> np.ndarray:
    if alpha.shape == (h, w):
        return alpha
    t = torch.from_numpy(np.ascontiguousarray(alpha, dtype=np.float32))[None, None]
    return F.interpolate(t, size=(h, w), mode="bicubic", align_corners=False).clamp(0, 1)[0, 0].numpy()


def _to_gray(rgb: np.ndarray) -> np.ndarray:
    # ITU-R BT.601 luma, as PIL's convert("L")
    return rgb[..., 0] * 0.299 + rgb[..., 1] * 0.587 + rgb[..., 2] * 0.114


def to_hwc_float(x: torch.Tensor, info: ImageInfo | None = None) -> np.ndarray:
    """(1,3,H,W) tensor -> HxWxC float32 in [0,1] with the input's channel layout."""
    rgb = x.detach().float().clamp(0, 1)[0].permute(1, 2, 0).cpu().numpy()
    if info is None:
        return rgb
    h, w = rgb.shape[:2]
    if info.channels in (1, 2):
        out = _to_gray(rgb)[..., None]
    else:
        out = rgb
    if info.alpha is not None:
        out = np.concatenate([out, _resize_alpha(info.alpha, h, w)[..., None]], axis=2)
    return out


def from_tensor(x: torch.Tensor, info: ImageInfo):
    """Turn a result back into the kind of object the user passed in."""
    if info.kind == "tensor":
        t = x.detach().clamp(0, 1)
        if info.channels == 1:
            t = torch.from_numpy(_to_gray(t[0].permute(1, 2, 0).cpu().numpy()))[None, None].to(x.device)
        elif info.channels == 4 and info.alpha is not None:
            a = torch.from_numpy(_resize_alpha(info.alpha, t.shape[-2], t.shape[-1]))[None, None].to(t)
            t = torch.cat([t, a], 1)
        if info.layout == "CHW":
            t = t[0]
        elif info.layout == "HW":
            t = t[0, 0]
        if isinstance(info.dtype, torch.dtype) and info.dtype.is_floating_point:
            t = t.to(info.dtype)
        return t
    arr = to_hwc_float(x, info)
    if info.kind == "numpy":
        if info.layout == "HW":
            arr = arr[..., 0]
        dt = np.dtype(info.dtype) if info.dtype is not None else np.dtype(np.float32)
        if dt == np.uint8:
            return np.round(arr * 255).astype(np.uint8)
        if dt == np.uint16:
            return np.round(arr * 65535).astype(np.uint16)
        return arr.astype(dt if np.issubdtype(dt, np.floating) else np.float32)
    # PIL
    if info.bit_depth == 16 and info.channels == 1 and info.alpha is None:
        return Image.fromarray(np.round(arr[..., 0] * 65535).astype(np.uint16))
    u8 = np.round(arr * 255).astype(np.uint8)
    if u8.shape[2] == 1:
        return Image.fromarray(u8[..., 0], mode="L")
    return Image.fromarray(u8)


_umask_lock = threading.Lock()


def current_umask() -> int:
    """The process umask, read without a window in which files would be created too open: from
    ``/proc/self/status`` where Linux shows it, else by setting the strict 0o077 for an instant and restoring."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    with _umask_lock:
        mask = os.umask(0o077)
        os.umask(mask)
    return mask


def new_file_mode() -> int:
    """The permission bits ``open()`` gives a new file: 0o666 minus the umask (0o644 under umask 0o022)."""
    return 0o666 & ~current_umask()


def finish_atomic_write(tmp: str | os.PathLike, path: str | os.PathLike) -> None:
    """Give the finished temporary file ``tmp`` its final permissions and rename it onto ``path`` (atomic on one
    file system).

    Every file restorekit writes atomically (images, weights, training states, records) ends here, so they all
    get the same permissions whatever wrote the temporary file (``tempfile.mkstemp`` and safetensors' writer create
    0o600 files): a new file gets the normal mode for a new file, ``0o666 & ~umask``; a file that is overwritten
    keeps the permission bits it had (a result or weights file made private or shared by hand stays so)."""
    try:
        st = os.stat(path)
        mode = stat.S_IMODE(st.st_mode) if stat.S_ISREG(st.st_mode) else new_file_mode()
    except OSError:
        mode = new_file_mode()
    os.chmod(tmp, mode)
    os.replace(tmp, path)


def _atomic_write(path: Path, writer) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".part" + path.suffix, dir=path.parent)
    os.close(fd)
    try:
        writer(tmp)
        finish_atomic_write(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write bytes so that readers see either the old file or the whole new one."""

    def w(tmp):
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())

    _atomic_write(Path(path), w)


def save_image(path: str | os.PathLike, x, info: ImageInfo | None = None) -> Path:
    """Save a (1,3,H,W) tensor or HxWxC float array atomically.

    With ``info`` the file keeps the input's channels (gray/RGB, alpha) and
    bit depth (16-bit stays 16-bit where the format allows it).
    """
    path = Path(path)
    ext = path.suffix.lower()
    if ext not in (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp"):
        raise RestoreKitError(f"cannot write {path}: use one of .png .jpg .jpeg .bmp .tif .tiff .webp")
    arr = to_hwc_float(x, info) if isinstance(x, torch.Tensor) else np.asarray(x, dtype=np.float32)
    if arr.ndim == 2:
        arr = arr[..., None]
    sixteen = info is not None and info.bit_depth == 16 and ext in (".png", ".tif", ".tiff")
    if ext in (".jpg", ".jpeg") and arr.shape[2] in (2, 4):
        arr = arr[..., :-1]  # JPEG has no alpha channel
    if sixteen:
        data = np.round(np.clip(arr, 0, 1) * 65535).astype(np.uint16)
    else:
        data = np.round(np.clip(arr, 0, 1) * 255).astype(np.uint8)

    def writer(tmp):
        if sixteen and cv2 is not None:
            d = data
            if d.shape[2] == 3:
                d = d[..., ::-1]
            elif d.shape[2] == 4:
                d = d[..., [2, 1, 0, 3]]
            elif d.shape[2] == 1:
                d = d[..., 0]
            ok, buf = cv2.imencode(ext, np.ascontiguousarray(d))
            if not ok:
                raise RestoreKitError(f"could not encode {path}")
            buf.tofile(tmp)
            return
        d = data if data.dtype == np.uint8 else (data // 257).astype(np.uint8)
        if d.shape[2] == 1:
            im = Image.fromarray(d[..., 0], mode="L")
        elif d.shape[2] == 2:
            im = Image.fromarray(d, mode="LA")
        else:
            im = Image.fromarray(d)
        fmt = {".jpg": "JPEG", ".jpeg": "JPEG", ".png": "PNG", ".bmp": "BMP", ".tif": "TIFF", ".tiff": "TIFF",
               ".webp": "WEBP"}[ext]
        im.save(tmp, format=fmt, **({"quality": 95} if fmt == "JPEG" else {}))

    _atomic_write(path, writer)
    return path


def pad_to_multiple(x: torch.Tensor, multiple: int, mode: str = "reflect") -> tuple[torch.Tensor, tuple[int, int]]:
    """Pad bottom/right so H and W are multiples of ``multiple``; returns the original (H, W).

    Reflect padding falls back to replicate where the pad is not smaller than the image."""
    h, w = x.shape[-2:]
    ph, pw = (-h) % multiple, (-w) % multiple
    if ph == 0 and pw == 0:
        return x, (h, w)
    if mode == "reflect" and (ph >= h or pw >= w):
        mode = "replicate"  # reflect needs the pad smaller than the image
    return F.pad(x, (0, pw, 0, ph), mode=mode), (h, w)


def _numeric_npy(p: Path) -> np.ndarray:
    try:
        a = np.load(p, allow_pickle=False)
    except ValueError as e:
        why = "it holds pickled Python objects, not a numeric array" if "pickle" in str(e) else first_line(e)
        raise TaskError(f"cannot read {p}: {why}") from None
    except (OSError, EOFError) as e:
        raise TaskError(f"cannot read {p}: {first_line(e)}") from None
    if not isinstance(a, np.ndarray) or np.iscomplexobj(a) or not (np.issubdtype(a.dtype, np.number)
                                                                     or a.dtype == bool):
        raise TaskError(f"cannot read {p}: a {getattr(a, 'dtype', type(a).__name__)} array, not real numbers")
    return a


def _mat_arrays(p: Path) -> list:
    """Every array of a MATLAB file's ``kernels`` variable (else its first variable): a cell array, a 2-D array
    or an (h, w, N) stack. v7.3 (HDF5) files read transposed (column-major)."""
    try:
        import h5py

        with h5py.File(p, "r") as f:
            var = f["kernels"] if "kernels" in f else f[next(k for k in f if not k.startswith("#"))]
            if var.dtype == object:
                return [np.array(f[r]).T for r in var[()].T.ravel()]
            a = np.array(var).T
            return [a] if a.ndim == 2 else [a[..., i] for i in range(a.shape[-1])]
    except (OSError, ImportError):  # not HDF5: MATLAB v5
        pass
    from scipy.io import loadmat

    m = loadmat(p)
    var = m["kernels"] if "kernels" in m else m[next(k for k in m if not k.startswith("__"))]
    if var.dtype == object:
        return [var.ravel()[i] for i in range(var.size)]
    return [var] if var.ndim == 2 else [var[..., i] for i in range(var.shape[-1])]


def read_kernels(path: str | os.PathLike) -> list[np.ndarray]:
    """Every blur kernel in a file, each a 2-D float64 array normalised to sum 1: a ``.npy`` (one kernel, or an
    (N, h, w) stack), a ``.mat`` (a cell array or stack, as DiffPIR's and Levin et al.'s kernel sets), or an image
    (the channel mean is the kernel). Anything else, or a kernel that is not 2-D, finite, non-negative with a positive
    sum, is a one-line :class:`TaskError`."""
    from .files import IMAGE_SUFFIXES

    p = Path(path)
    if not p.is_file():
        raise TaskError(f"kernel file not found: {p}")
    suffix = p.suffix.lower()
    if suffix == ".npy":
        a = np.squeeze(_numeric_npy(p)).astype(np.float64)
        arrs = [a] if a.ndim != 3 else list(a)
    elif suffix == ".mat":
        try:
            arrs = _mat_arrays(p)
        except (ValueError, TypeError, KeyError, StopIteration, NotImplementedError, OSError) as e:
            raise TaskError(f"cannot read kernels from {p}: {first_line(e)}") from None
    elif suffix in IMAGE_SUFFIXES:
        arrs = [read_image(p)[0].mean(axis=2)]
    else:
        raise TaskError(f"kernel file {p}: use a .npy, a .mat or an image ({' '.join(IMAGE_SUFFIXES)})")
    out = []
    for a in arrs:
        try:
            a = np.asarray(a, dtype=np.float64)
        except (TypeError, ValueError):
            raise TaskError(f"kernel file {p}: its kernels must be arrays of real numbers") from None
        if a.ndim != 2 or not np.all(np.isfinite(a)) or (a < 0).any() or a.sum() <= 0:
            raise TaskError(f"kernel {p} must be a 2-D non-negative array with a positive sum (got shape {a.shape})")
        out.append(a / a.sum())
    if not out:
        raise TaskError(f"kernel file {p} holds no kernels")
    return out


def read_kernel(path: str | os.PathLike) -> torch.Tensor:
    """The one blur kernel of a file (see :func:`read_kernels`) as a (kh, kw) float32 tensor with sum 1."""
    ks = read_kernels(path)
    if len(ks) > 1:
        raise TaskError(f"kernel file {path} holds {len(ks)} kernels; save the one to use as a .npy")
    return torch.from_numpy(ks[0]).float()


def read_mask_array(path: str | os.PathLike) -> np.ndarray:
    """An inpainting mask file as a 2-D float32 array of 0/1 (1 = known pixel): an image (white = known: channel
    mean > 0.5) or a ``.npy`` ((h, w), (h, w, 1|3) or (1|3, h, w); values > 0.5 are known)."""
    from .files import IMAGE_SUFFIXES

    p = Path(path)
    if not p.is_file():
        raise ImageReadError(f"mask file not found: {p}")
    suffix = p.suffix.lower()
    if suffix == ".npy":
        a = _numeric_npy(p).astype(np.float32)
        if a.ndim == 3:
            a = a[..., 0] if a.shape[-1] in (1, 3) else a[0]
    elif suffix in IMAGE_SUFFIXES:
        a = read_image(p)[0].mean(axis=2)
    else:
        raise TaskError(f"mask file {p}: use an image (white = known pixels) or a .npy")
    if a.ndim != 2 or not np.all(np.isfinite(a)):
        raise TaskError(f"mask file {p}: expected a 2-D mask of finite values, got shape {a.shape}")
    return (a > 0.5).astype(np.float32)


def read_mask(path: str | os.PathLike, h: int, w: int) -> torch.Tensor:
    """An inpainting mask file (:func:`read_mask_array`) -> (1, 1, h, w) float32 tensor of 0/1; a mask of another
    size than ``h`` x ``w`` is a :class:`TaskError`."""
    m = read_mask_array(path)
    if m.shape != (h, w):
        raise TaskError(f"mask {path} is {m.shape[1]}x{m.shape[0]} but the image is {w}x{h}")
    return torch.from_numpy(m)[None, None]
