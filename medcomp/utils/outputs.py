"""Checks on an output path made before any work, so that a bad one costs no encode and destroys nothing."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

from medcomp.errors import MedcompError


def _same(a: Path, b: Path) -> bool:
    try:
        return a.exists() and b.exists() and os.path.samefile(a, b)
    except OSError:
        return a.resolve() == b.resolve()


def check_output_path(output: str | os.PathLike, inputs: list[str | os.PathLike], *, force: bool = False,
                      folder_ok: bool = False) -> Path:
    """Refuse, in one line each: an output that is (or resolves to) an input or lies inside an input folder; an
    existing file without ``force``; an existing folder where a file is wanted (``folder_ok``: an empty folder is
    fine, for a DICOM series); a folder that cannot be created or written."""
    out = Path(output)
    for src in map(Path, inputs):
        if out.resolve() == src.resolve() or _same(out, src):
            raise MedcompError(f"{out}: the output is the input file; choose another output path")
        if src.is_dir() and src.resolve() in out.resolve().parents:
            raise MedcompError(f"{out}: the output lies inside the input folder {src}; choose another output path")
    if out.is_dir() or str(output).endswith(os.sep):
        if not folder_ok:
            raise MedcompError(f"{out}: is a folder; give a file path")
        if out.is_dir() and any(out.iterdir()):
            raise MedcompError(f"{out}: folder exists and is not empty; a DICOM series needs a new or empty folder")
    elif out.exists() and not force:
        raise MedcompError(f"{out}: exists; use --force to overwrite it")
    existing = _existing_folder(out)
    if not existing.is_dir():
        raise MedcompError(f"{out}: {existing} is a file, not a folder")
    try:  # a real probe: os.access says yes to root on any folder, and knows nothing of read-only mounts
        fd, probe = tempfile.mkstemp(prefix=".medcomp-probe-", dir=existing)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise MedcompError(f"{out}: folder {existing} is not writable ({exc.strerror})") from exc
    return out


def _existing_folder(out: Path) -> Path:
    """The nearest existing folder the output will be written under (parents are created on writing)."""
    existing = out.resolve() if out.is_dir() else out.resolve().parent
    while not existing.exists():
        existing = existing.parent
    return existing


def check_free_space(output: str | os.PathLike, need_bytes: int) -> None:
    """Refuse an output whose disk has less than ``need_bytes`` free (known once the image's size is)."""
    free = shutil.disk_usage(_existing_folder(Path(output))).free
    if free < need_bytes:
        raise MedcompError(f"{output}: {free / 2**20:.0f} MiB free on the disk, the output needs about "
                           f"{need_bytes / 2**20:.0f} MiB")
