"""Write-then-rename, so a crash or a bad input never leaves a half-written output behind."""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path

from medcomp.errors import MedcompError


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike):
    """Yield a temporary path beside ``path`` (same suffixes, so format libraries still recognise it);
    rename it onto ``path`` only when the block finishes without an exception."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # the format's suffix only (.nii.gz is two), and a cut name: the temporary name stays within any name limit
    # that the output's own name fits
    suffix = "".join(path.suffixes[-2:]) if path.name.lower().endswith(".nii.gz") else path.suffix
    with _named(path):
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name[:64]}.", suffix=f".tmp{suffix}", dir=path.parent)
        os.close(fd)
    try:
        with _named(path):
            yield Path(tmp)
            os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; outputs get the user's usual permissions
            os.replace(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)


@contextlib.contextmanager
def atomic_folder(path: str | os.PathLike):
    """The folder form of :func:`atomic_path`: yield a temporary folder beside ``path``, rename it onto ``path`` (new,
    or an empty folder) only when the block finishes; otherwise remove it with what was written into it."""
    import shutil

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with _named(path):
        tmp = Path(tempfile.mkdtemp(prefix=f".{path.name[:64]}.", suffix=".tmp", dir=path.parent))
    try:
        with _named(path):
            yield tmp
            os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp makes 0700
            if path.exists():
                path.rmdir()  # only an empty folder can be replaced
            os.replace(tmp, path)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


@contextlib.contextmanager
def _named(path: Path):
    """A write that fails (disk or inode table full, quota, read-only mount, name too long) is one line naming the
    output the user asked for, not the temporary file."""
    try:
        yield
    except OSError as exc:
        raise MedcompError(f"{path}: cannot write ({exc.strerror or exc or type(exc).__name__})") from exc


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    with atomic_path(path) as tmp:
        Path(tmp).write_bytes(data)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))
