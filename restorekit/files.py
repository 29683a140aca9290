"""Which images to restore and where their results go: files, folders, globs and lists.

Shared by ``restorekit run`` and :func:`restorekit.restore_folder`. Everything here runs before any model is
loaded, so that a wrong path, an unwritable folder or an output that would overwrite an input is reported at
once, with nothing written.
"""

from __future__ import annotations

import glob
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

from .errors import ConfigError, RestoreKitError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")
LIST_SUFFIXES = (".txt", ".lst", ".list")


@dataclass
class Job:
    """One input image, its path relative to the input root, and where its result goes."""

    input: Path
    rel: Path
    output: Path | None = None
    index: int = 0  # position in the sorted input list: image k is restored with seed + k


def _is_image(p: Path) -> bool:
    return p.suffix.lower() in IMAGE_SUFFIXES


def collect_inputs(spec: str | os.PathLike, recursive: bool = False) -> tuple[list[Job], bool]:
    """``spec`` -> (jobs in sorted order, whether it named a single image).

    A folder gives its images (sorted; sub-folders with ``recursive``), a ``.txt``/``.lst`` file lists one path
    per line (relative to the list's folder; ``#`` starts a comment), a pattern with ``*``, ``?`` or ``[`` is a
    glob, anything else is one image file.
    """
    text = str(spec)
    p = Path(text)
    if p.is_dir():
        it = p.rglob("*") if recursive else p.iterdir()
        files = sorted(f for f in it if f.is_file() and _is_image(f) and not f.name.startswith("."))
        if not files:
            raise RestoreKitError(f"no images ({' '.join(IMAGE_SUFFIXES)}) in folder {p}"
                                  + ("" if recursive else " (use --recursive for sub-folders)"))
        return [Job(f, f.relative_to(p), index=k) for k, f in enumerate(files)], False
    if p.is_file() and p.suffix.lower() in LIST_SUFFIXES:
        try:
            lines = p.read_text(encoding="utf-8").splitlines()
        except (OSError, UnicodeDecodeError) as e:
            raise RestoreKitError(f"cannot read the list of images {p}: {e}") from None
        jobs, seen = [], set()
        for n, line in enumerate(lines, 1):
            line = line.split("#", 1)[0].strip()
            if not line:
                continue
            f = Path(line) if Path(line).is_absolute() else p.parent / line
            if not f.is_file():
                raise RestoreKitError(f"{p}, line {n}: no such image file: {f}")
            try:
                rel = f.resolve().relative_to(p.parent.resolve())
            except ValueError:
                rel = Path(f.name)
            if rel in seen:
                raise RestoreKitError(f"{p}, line {n}: {f} is listed twice (or collides with another entry)")
            seen.add(rel)
            jobs.append(Job(f, rel))
        if not jobs:
            raise RestoreKitError(f"the list {p} names no images")
        jobs.sort(key=lambda j: str(j.rel))
        for k, j in enumerate(jobs):
            j.index = k
        return jobs, False
    if p.exists():
        return [Job(p, Path(p.name))], True
    if any(c in text for c in "*?["):
        files = sorted(Path(f) for f in glob.glob(text, recursive=True) if Path(f).is_file() and _is_image(Path(f)))
        if not files:
            raise RestoreKitError(f"no image files match {text!r}")
        root = Path(os.path.commonpath([str(f.parent) for f in files]))
        return [Job(f, f.relative_to(root), index=k) for k, f in enumerate(files)], False
    raise RestoreKitError(f"input not found: {p}")


def read_text_file(path: str | os.PathLike, what: str) -> str:
    """A UTF-8 text file's content, or a one-line :class:`ConfigError` naming ``what`` (missing, a folder, not
    text: an image given as a config)."""
    p = Path(path)
    try:
        return p.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise ConfigError(f"cannot read {what} {p}: not a UTF-8 text file (byte 0x{e.object[e.start]:02x} at "
                          f"offset {e.start})") from None
    except OSError as e:
        raise ConfigError(f"cannot read {what} {p}: {e.strerror or e}") from None


def read_yaml_mapping(path: str | os.PathLike, what: str) -> dict:
    """A YAML file that must hold a mapping (empty file: ``{}``), or a one-line :class:`ConfigError`."""
    import yaml

    try:
        data = yaml.safe_load(read_text_file(path, what)) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"cannot read {what} {path}: {e}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{what} {path} must be a mapping of keys to values, not a {type(data).__name__}")
    return data


def means_folder(out: str | os.PathLike) -> bool:
    """A trailing slash, an existing folder or a name without a suffix means a folder."""
    text = str(out)
    p = Path(text)
    return text.endswith(("/", os.sep)) or p.is_dir() or p.suffix == ""


def plan_outputs(jobs: list[Job], output: str | os.PathLike, single: bool, method: str, task: str) -> bool:
    """Fill ``job.output``; returns True when ``output`` is a folder.

    In a folder, result names are ``<stem>_<method>_<task>.png`` under the input's relative sub-folder. When the
    output folder is (or lies in) the input folder, the run's own results from an earlier run (and their
    ``--degrade`` companions, :func:`degraded_name`) are not inputs: they are dropped from ``jobs`` (in place, the
    others re-numbered), so that the run resumes where it stopped, with the same seeds.
    """
    text = str(output)
    out = Path(text)
    folder = (not single) or means_folder(text)
    if folder:
        if out.exists() and not out.is_dir():
            raise RestoreKitError(f"output {out} is a file, but {'several inputs' if not single else 'a folder'} "
                                  f"need a folder there")
        for j in jobs:
            j.output = out / j.rel.parent / f"{j.rel.stem}_{method}_{task}.png"
        if not single:
            own = {q.resolve() for j in jobs for q in (j.output, degraded_name(j.output))}
            jobs[:] = [j for j in jobs if j.input.resolve() not in own]
            for k, j in enumerate(jobs):
                j.index = k
    else:
        if out.suffix.lower() not in IMAGE_SUFFIXES:
            raise RestoreKitError(f"cannot write {out}: use one of {' '.join(IMAGE_SUFFIXES)}, or a folder")
        jobs[0].output = out
    names = {}
    for j in jobs:
        if j.output in names:
            raise RestoreKitError(f"{j.input} and {names[j.output]} would both be written to {j.output}")
        names[j.output] = j.input
    return folder


def degraded_name(output: Path) -> Path:
    """Where ``--degrade`` puts the degraded input beside the result ``output``."""
    return output.with_name(output.stem + "_degraded.png")


def _nearest_existing(p: Path) -> Path:
    p = p.absolute()
    while not p.exists():
        if p.parent == p:
            break
        p = p.parent
    return p


def check_writable(path: Path) -> None:
    """Fail now, with nothing written, if ``path`` cannot be created (read-only folder, a file in the way)."""
    anchor = _nearest_existing(path.parent)
    if not anchor.is_dir():
        raise RestoreKitError(f"cannot write {path}: {anchor} is a file, not a folder")
    try:
        fd, tmp = tempfile.mkstemp(prefix=".restorekit-probe-", dir=anchor)
        os.close(fd)
        os.unlink(tmp)
    except OSError as e:
        raise RestoreKitError(f"cannot write {path}: folder {anchor} is not writable ({e.strerror})") from None
    if path.exists() and path.is_dir():
        raise RestoreKitError(f"cannot write {path}: a folder of that name exists")


def check_not_inputs(paths: list[Path], inputs: list[Path], overwrite: bool) -> None:
    """An output that is one of the inputs is refused unless ``overwrite``."""
    ins = {p.resolve() for p in inputs}
    for p in paths:
        if p.resolve() in ins and not overwrite:
            raise RestoreKitError(f"output {p} is an input image; refusing to overwrite it (pass --overwrite "
                                  f"to replace it, or choose another --output)")


def image_size(path: str | os.PathLike) -> tuple[int, int] | None:
    """(height, width) of an image file from its header, as it displays (an EXIF orientation of 5-8 swaps them, as
    :func:`restorekit.io.read_image` does), or ``None`` when it cannot be told (then the image is read and
    restored on its own, and a broken file is reported as usual)."""
    try:
        from PIL import Image

        from .io import _exif_orientation

        with Image.open(path) as im:
            w, h = im.size
            if _exif_orientation(im) >= 5:
                w, h = h, w
        return int(h), int(w)
    except Exception:  # noqa: BLE001 - any unreadable header just means "do not batch this one"
        return None


def batches_by_size(items, batch_size: int, size_of):
    """Yield batches of at most ``batch_size`` items that share ``size_of(item)``, keeping the input order inside
    each batch. A batch is yielded as soon as it is full; the incomplete ones at the end, in the order of their
    first item. An item whose size is ``None`` is yielded alone, at once."""
    if int(batch_size) < 1:
        raise RestoreKitError(f"batch size must be >= 1, got {batch_size}")
    open_: dict = {}
    for it in items:
        key = size_of(it)
        if key is None:
            yield [it]
            continue
        group = open_.setdefault(key, [])
        group.append(it)
        if len(group) >= batch_size:
            yield open_.pop(key)
    yield from open_.values()
