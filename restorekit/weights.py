"""Finding, downloading, verifying and loading weights.

Resolution order for a model card: an explicit path, then
``$RESTOREKIT_WEIGHTS`` (a folder of weight files), then the bundled file (demo
models), then the cache (``$RESTOREKIT_CACHE`` or ``~/.cache/restorekit``),
then each download source in turn (Hugging Face Hub via ``huggingface_hub``,
or a plain URL streamed to a ``.part`` file and renamed when complete). A
known SHA-256 is checked after download and for cached files. When nothing
works (no network, say), :class:`WeightsError` names the file, where it
would come from and where to put it.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import tempfile
import urllib.error
import urllib.request
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .errors import WeightsError, first_line

PACKAGE_DATA = Path(__file__).resolve().parent / "data"


@dataclass
class ModelCard:
    """A named set of weights and how to get them."""

    name: str
    method: str
    filename: str
    description: str
    sources: list[str] = field(default_factory=list)  # "hf://repo_id/path" or http(s)/file URLs
    sha256: str | None = None
    bundled: str | None = None  # file name inside restorekit/data
    demo: bool = False
    options: dict = field(default_factory=dict)  # method-specific (network preset, defaults)


def cache_dir() -> Path:
    return Path(os.environ.get("RESTOREKIT_CACHE", Path.home() / ".cache" / "restorekit"))


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while True:
            b = f.read(chunk)
            if not b:
                break
            h.update(b)
    return h.hexdigest()


def _verify(path: Path, sha256: str | None, what: str) -> None:
    if sha256 is None:
        return
    got = sha256_file(path)
    if got != sha256:
        raise WeightsError(f"{what}: checksum mismatch for {path} (expected sha256 {sha256[:12]}..., got "
                           f"{got[:12]}...). The file is corrupt or a different version; delete it and "
                           f"download it again.")


def download_url(url: str, dest: Path, sha256: str | None = None, timeout: float = 30.0) -> Path:
    """Stream ``url`` to ``dest`` atomically (``.part`` then rename) and check its SHA-256."""
    from .io import finish_atomic_write

    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=dest.name + ".", suffix=".part", dir=dest.parent)
    os.close(fd)
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r, open(tmp, "wb") as f:
            shutil.copyfileobj(r, f, length=1 << 20)
        if sha256 is not None:
            got = sha256_file(tmp)
            if got != sha256:
                raise WeightsError(f"download of {url} is corrupt: sha256 {got[:12]}... does not match "
                                   f"the expected {sha256[:12]}...")
        finish_atomic_write(tmp, dest)  # mkstemp made it 0o600: a new file gets 0o666 & ~umask
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return dest


def _download_hf(spec: str, dest_dir: Path) -> Path:
    from huggingface_hub import hf_hub_download

    rest = spec[len("hf://"):]
    parts = rest.split("/")
    repo_id, filename = "/".join(parts[:2]), "/".join(parts[2:])
    return Path(hf_hub_download(repo_id=repo_id, filename=filename, cache_dir=str(dest_dir / "hf")))


_REACH: dict = {}


def _reachable(src: str, timeout: float = 3.0) -> str | None:
    """None if the source's host answers a TCP connect, else why not (checked once per host)."""
    import socket
    from urllib.parse import urlparse

    if src.startswith("hf://"):
        if os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on"):
            return "HF_HUB_OFFLINE is set"
        host, port = "huggingface.co", 443
    else:
        u = urlparse(src)
        if u.scheme == "file":
            return None
        host, port = u.hostname, u.port or (443 if u.scheme == "https" else 80)
    if host not in _REACH:
        try:
            socket.create_connection((host, port), timeout=timeout).close()
            _REACH[host] = None
        except OSError as e:
            _REACH[host] = f"{host} is not reachable ({e.strerror or e})"
    return _REACH[host]


def _source_label(src: str) -> str:
    if src.startswith("hf://"):
        parts = src[5:].split("/")
        return f"https://huggingface.co/{'/'.join(parts[:2])} (file {'/'.join(parts[2:])})"
    return src


def resolve_card(card: ModelCard, download: bool = True) -> Path:
    """Local path of a model card's weights, downloading them if needed and possible."""
    from .io import finish_atomic_write

    env_dir = os.environ.get("RESTOREKIT_WEIGHTS")
    if env_dir:
        p = Path(env_dir) / card.filename
        if p.is_file():
            _verify(p, card.sha256, card.name)
            return p
    if card.bundled:
        p = PACKAGE_DATA / card.bundled
        if p.is_file():
            _verify(p, card.sha256, card.name)
            return p
    cached = cache_dir() / card.filename
    if cached.is_file():
        _verify(cached, card.sha256, card.name)
        return cached
    errors = []
    if download:
        for src in card.sources:
            why = _reachable(src)
            if why:
                errors.append(f"{_source_label(src)}: {why}")
                continue
            try:
                if src.startswith("hf://"):
                    got = _download_hf(src, cache_dir())
                    _verify(got, card.sha256, card.name)
                    cached.parent.mkdir(parents=True, exist_ok=True)
                    tmp = cached.with_suffix(cached.suffix + ".part")
                    shutil.copyfile(got, tmp)
                    finish_atomic_write(tmp, cached)
                    return cached
                return download_url(src, cached, card.sha256)
            except WeightsError:
                raise
            except Exception as e:  # network down, 404, offline mode, ...
                errors.append(f"{_source_label(src)}: {type(e).__name__}: {first_line(e, 200, '')}")
    where = "\n  ".join(_source_label(s) for s in card.sources) or "(no download source known)"
    tried = ("\nDownload attempts failed:\n  " + "\n  ".join(errors)) if errors else ""
    raise WeightsError(
        f"weights for model '{card.name}' not found: need file '{card.filename}'.\n"
        f"Get it from:\n  {where}\n"
        f"and put it at {cached} (or in the folder named by $RESTOREKIT_WEIGHTS), "
        f"or pass its path with --weights / from_pretrained(path).{tried}")


_HARMLESS_BUILTINS = {f"builtins.{t.__name__}": t for t in
                      (int, float, complex, bool, str, bytes, list, dict, tuple, set, frozenset, slice, range)}


class SkippedObject:
    """Stands in for a pickled object of a class restorekit does not load (an OmegaConf ``DictConfig`` in a
    Lightning checkpoint's ``hyper_parameters``, a callback's state, ...). It only records what the pickle
    held; no code of the original class runs and its module is never imported."""

    pickled_name = "?"

    def __new__(cls, *args, **kwargs):
        obj = object.__new__(cls)
        obj.args, obj.state = args, None
        return obj

    def __init__(self, *args, **kwargs):
        pass

    def __setstate__(self, state):
        self.state = state

    def __repr__(self):
        return f"<skipped {self.pickled_name}>"


def _placeholder(name: str):
    if name in _HARMLESS_BUILTINS:
        return _HARMLESS_BUILTINS[name]
    return type(f"Skipped[{name}]", (SkippedObject,), {"pickled_name": name})


_MAGIC = [(b"<!doctype html", "an HTML page (a download or login page, not the file itself)"),
          (b"<html", "an HTML page (a download or login page, not the file itself)"),
          (b"\x89PNG", "a PNG image"), (b"\xff\xd8\xff", "a JPEG image"), (b"\x1f\x8b", "a gzip archive"),
          (b"version https://git-lfs", "a Git LFS pointer (the real file was never downloaded)"),
          (b"{", "a JSON/text file"), (b"PK\x03\x04", "a zip archive")]


def _file_kind(head: bytes) -> str | None:
    low = head.lstrip().lower()
    for magic, what in _MAGIC:
        if low.startswith(magic.lower()):
            return what
    if len(head) >= 9 and 0 < int.from_bytes(head[:8], "little") < 100_000_000 and head[8:9] == b"{":
        return "a safetensors file"
    if head[:1] == b"\x80":
        return "a pickle"
    return None


#: how a legacy (non-zip) torch.save file starts: pickle protocol 2, then the magic number 0x1950a86a20f9469cfc6c
_LEGACY_TORCH_HEAD = b"\x80\x02\x8a\x0a\x6c\xfc\x9c\x46\xf9\x20\x6a\xa8\x50\x19"


def _diagnose(p: Path) -> str:
    """Why ``p`` cannot be read, as precisely as its bytes allow."""
    import json
    import zipfile

    size = p.stat().st_size
    if size == 0:
        return "the file is empty (0 bytes; an interrupted download?)"
    with open(p, "rb") as f:
        head = f.read(64)
    kind = _file_kind(head)
    if p.suffix == ".safetensors" or kind == "a safetensors file":
        if kind not in (None, "a safetensors file"):
            return f"it is not a safetensors file: it looks like {kind}"
        if size < 8:
            return f"the file is truncated ({size} bytes, shorter than a safetensors header)"
        n = int.from_bytes(head[:8], "little")
        if n > size - 8:
            return (f"the file is truncated or not a safetensors file: its header claims {n} bytes but only "
                    f"{size - 8} follow")
        with open(p, "rb") as f:
            f.seek(8)
            raw = f.read(n)
        try:
            header = json.loads(raw)
        except ValueError:
            return "it is not a safetensors file (its header is not JSON)"
        end = max((int(v["data_offsets"][1]) for k, v in header.items()
                   if k != "__metadata__" and isinstance(v, dict) and "data_offsets" in v), default=0)
        if 8 + n + end > size:
            return (f"the file is truncated: its tensors need {8 + n + end} bytes but the file has {size} "
                    f"(an interrupted download?)")
        return "its safetensors data is corrupt"
    if head.startswith((b"PK\x03\x04", b"PK\x05\x06")):
        try:
            with zipfile.ZipFile(p) as z:
                names = z.namelist()
                bad = z.testzip()
        except zipfile.BadZipFile:
            return ("the file is truncated or corrupt: it starts as a zip archive (PyTorch's format) but its "
                    "central directory is missing (an interrupted download?)")
        except Exception as e:  # zlib errors, bad headers
            return f"the zip archive is corrupt ({type(e).__name__}: {e})"
        if not any(n.endswith("data.pkl") for n in names):
            return "it is a zip archive but not a PyTorch checkpoint (no data.pkl inside)"
        if bad is not None:
            return f"the file is corrupt: member {bad} fails its CRC check"
        return "its PyTorch pickle data is corrupt"
    if kind == "a pickle":
        if not head.startswith(_LEGACY_TORCH_HEAD):
            return ("it is a plain pickle, not a PyTorch checkpoint (torch.save writes a zip archive, or a legacy "
                    "file that starts with torch's magic number); restorekit never unpickles arbitrary objects: "
                    "re-save the tensors with torch.save or safetensors")
        return "the file is truncated or corrupt (a legacy PyTorch file that ends early or is malformed)"
    if kind is not None:
        return f"it is not a checkpoint: it looks like {kind}"
    return ("the file is corrupt or not a checkpoint (its bytes are neither a PyTorch .pt/.pth/.ckpt nor a "
            "safetensors file)")


@contextlib.contextmanager
def quiet_torch_load():
    """``torch.load`` without its 'Detected pickle protocol N' warning, which it gives before failing on a plain
    pickle: the one-line error that follows says what the file is."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Detected pickle protocol", category=UserWarning)
        yield


def explain_load_failure(p: Path, e: BaseException, what: str = "a checkpoint") -> str:
    """Why loading ``p`` raised ``e``, in one line: :func:`_diagnose`'s reading of the file's bytes, then torch's
    own first line in brackets (except its advice to retry with ``weights_only=False``, which does not apply)."""
    try:
        why = _diagnose(p)
    except Exception:  # noqa: BLE001
        why = f"the file is corrupt, truncated or not {what}"
    detail = first_line(e, 160, "")
    if "Weights only load failed" in detail or "failed finding central directory" in detail:
        detail = ""
    return why + (f" [{type(e).__name__}: {detail}]" if detail else "")


def _torch_load_safe(p: Path) -> tuple[object, list[str]]:
    """``torch.load(weights_only=True)``; objects of classes outside torch's allow-list (OmegaConf configs,
    Lightning callback states, ...) load as inert :class:`SkippedObject` placeholders. Returns (object,
    names of the skipped classes). Never unpickles with ``weights_only=False``."""
    import pickle
    import re
    import zipfile

    names: list[str] = []
    if zipfile.is_zipfile(p):
        try:
            names = sorted(torch.serialization.get_unsafe_globals_in_checkpoint(str(p)))
        except Exception:
            names = []
    for _ in range(64):
        with torch.serialization.safe_globals([(_placeholder(n), n) for n in names]), quiet_torch_load():
            try:
                return torch.load(str(p), map_location="cpu", weights_only=True), \
                    [n for n in names if n not in _HARMLESS_BUILTINS]
            except pickle.UnpicklingError as e:
                m = re.search(r"GLOBAL (\S+) was not an allowed global", str(e))
                if m is None:
                    b = re.search(r"GLOBAL (\S+) whose module \S+ is blocked", str(e))
                    if b:
                        raise WeightsError(f"refusing to load {p}: its pickle references {b.group(1)} (an "
                                           f"operating-system function; a checkpoint never needs one)") from None
                    raise
                name = m.group(1) if "." in m.group(1) else f"builtins.{m.group(1)}"
                if name in names:
                    raise
                names.append(name)  # legacy (non-zip) files: found one at a time
    raise WeightsError(f"{p}: too many unknown pickled classes")


def load_state_dict(path: str | os.PathLike) -> tuple[dict, dict]:
    """Load a checkpoint (.safetensors, .pt/.pth/.ckpt) -> (state_dict, metadata).

    Unwraps common containers (``params_ema``, ``state_dict``, ``params``,
    ``model``). PyTorch files are read with ``weights_only=True``; pickled
    objects of other classes (e.g. the OmegaConf ``DictConfig`` in a Lightning
    checkpoint's ``hyper_parameters``) become inert placeholders, listed in
    ``metadata["skipped_objects"]``, and may not appear in the state dict.
    Raises :class:`WeightsError` naming the file and saying whether it is
    empty, truncated, corrupt or not a checkpoint at all.
    """
    p = Path(path)
    if not p.is_file():
        raise WeightsError(f"weights file {p} is a folder, not a checkpoint file" if p.is_dir()
                           else f"weights file not found: {p}")
    meta: dict = {}
    try:
        if p.suffix == ".safetensors":
            from safetensors import safe_open

            sd = {}
            with safe_open(str(p), framework="pt") as f:
                meta = dict(f.metadata() or {})
                for k in f.keys():
                    sd[k] = f.get_tensor(k)
        else:
            obj, skipped = _torch_load_safe(p)
            if skipped:
                meta["skipped_objects"] = ", ".join(skipped)
            sd = obj
            if isinstance(obj, dict):
                for key in ("params_ema", "state_dict", "params", "model"):
                    if key in obj and isinstance(obj[key], dict):
                        sd = obj[key]
                        break
    except WeightsError:
        raise
    except Exception as e:
        raise WeightsError(f"cannot load weights from {p}: {explain_load_failure(p, e)}") from None
    if not isinstance(sd, dict):
        raise WeightsError(f"{p} does not contain a state dict of tensors (it holds a {type(sd).__name__})")
    bad = [k for k, v in sd.items() if not isinstance(v, torch.Tensor)]
    if bad:
        raise WeightsError(f"{p} does not contain a state dict of tensors: {len(bad)} entries are not tensors, "
                           f"e.g. {bad[:3]} ({', '.join(sorted({repr(sd[k])[:60] for k in bad[:3]}))})")
    return sd, meta


def load_strict(module: torch.nn.Module, state_dict: dict, source: str, assign: bool = False) -> None:
    """``load_state_dict(strict=True)`` with a readable error (counts and examples); ``assign``: the file's tensors
    become the parameters (a module built on the meta device)."""
    own = module.state_dict()
    missing = [k for k in own if k not in state_dict]
    unexpected = [k for k in state_dict if k not in own]
    shape = [f"{k}: file {tuple(state_dict[k].shape)} vs model {tuple(own[k].shape)}"
             for k in own if k in state_dict and tuple(state_dict[k].shape) != tuple(own[k].shape)]
    if missing or unexpected or shape:
        msg = []
        if missing:
            msg.append(f"{len(missing)} missing keys, e.g. {missing[:3]}")
        if unexpected:
            msg.append(f"{len(unexpected)} unexpected keys, e.g. {unexpected[:3]}")
        if shape:
            msg.append(f"{len(shape)} shape mismatches, e.g. {shape[:2]}")
        raise WeightsError(f"weights in {source} do not fit the network: " + "; ".join(msg))
    module.load_state_dict(state_dict, strict=True, assign=assign)
