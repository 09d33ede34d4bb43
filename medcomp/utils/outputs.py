"""Checks on an output path made before any work, so that a bad one costs no encode and destroys nothing."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

from medcomp.errors import MedcompError


def _resolved(p: Path) -> Path:
    """``p.resolve()``, with a symbolic link loop as one line (Python 3.11 raises RuntimeError for it)."""
    try:
        return p.resolve()
    except (RuntimeError, OSError) as exc:
        raise MedcompError(f"{p}: symbolic link loop") from exc


def _same(a: Path, b: Path) -> bool:
    try:
        return a.exists() and b.exists() and os.path.samefile(a, b)
    except OSError:
        return _resolved(a) == _resolved(b)


def check_output_path(output: str | os.PathLike, inputs: list[str | os.PathLike], *, force: bool = False,
                      folder_ok: bool = False) -> Path:
    """Refuse, in one line each: an output that is (or resolves to) an input or lies inside an input folder; an
    existing file without ``force``; an existing folder where a file is wanted (``folder_ok``: an empty folder is
    fine, for a DICOM series); a folder that cannot be created or written."""
    out = Path(output)
    _check_name_length(out)  # first: a name too long makes even out.exists() fail
    for src in map(Path, inputs):
        if _resolved(out) == _resolved(src) or _same(out, src):
            raise MedcompError(f"{out}: the output is the input file; choose another output path")
        if src.is_dir() and _resolved(src) in _resolved(out).parents:
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
    existing = _resolved(out) if out.is_dir() else _resolved(out).parent
    while not existing.exists():
        existing = existing.parent
    return existing


def check_free_space(output: str | os.PathLike, need_bytes: int, files: int = 2) -> None:
    """Refuse an output whose disk has less than ``need_bytes`` free, or fewer than ``files`` free inodes (a DICOM
    series is a file a slice); ``need_bytes`` is a bound on what the output takes, known once the image's size is."""
    folder = _existing_folder(Path(output))
    free = shutil.disk_usage(folder).free
    if free < need_bytes:
        raise MedcompError(f"{output}: {free / 2**20:.0f} MiB free on the disk, the output may need up to "
                           f"{need_bytes / 2**20:.0f} MiB")
    stats = os.statvfs(folder)
    if stats.f_files and stats.f_favail < files:  # f_files 0: the file system has no inode limit
        raise MedcompError(f"{output}: {stats.f_favail} free inodes on the disk, the output needs {files} files")


def _check_name_length(out: Path) -> None:
    """Every name of the output path, and the temporary name it is first written under (at most 64 characters of the
    name, 13 more and the format suffix: :func:`medcomp.utils.atomic.atomic_path`), must fit the file system's
    name limit."""
    existing = _existing_folder(out.parent)
    try:
        limit = os.pathconf(existing, "PC_NAME_MAX")
    except (OSError, ValueError):
        limit = 255
    longest = max((len(os.fsencode(p)) for p in out.parts), default=0)
    temporary = len(os.fsencode(out.name[:64])) + 14 + len(os.fsencode(out.suffix)) + 3
    if longest > limit or temporary > limit:
        raise MedcompError(f"{out}: a name is longer than this file system's limit of {limit} bytes; "
                           "choose a shorter name")
