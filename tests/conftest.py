import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parent.parent
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")
os.environ.setdefault("HYDRA_FULL_ERROR", "1")


from medcomp.bench import shared_data  # noqa: E402  (after the environment above: it imports the codecs)


def pytest_collection_modifyitems(config, items):
    """``gpu`` tests run where CUDA is; elsewhere they are skipped, saying why."""
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs CUDA (run by make gpu-check on a GPU machine)")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture
def shared():
    p = shared_data()
    if p is None:
        pytest.skip("../shared/data is not present on this machine")
    return p


def smooth_volume(shape=(12, 40, 36), dtype=np.int16, lo=-1000, hi=1500, seed=0) -> np.ndarray:
    """A CT-like test volume: smooth structures plus mild noise, in HU-like stored units."""
    rng = np.random.default_rng(seed)
    grids = np.meshgrid(*[np.linspace(-1, 1, n) for n in shape], indexing="ij")
    r2 = sum(g**2 for g in grids)
    v = np.exp(-3 * r2) + 0.3 * np.sin(4 * grids[-1]) * np.cos(3 * grids[-2]) + 0.02 * rng.standard_normal(shape)
    v = (v - v.min()) / (v.max() - v.min())
    return (lo + v * (hi - lo)).astype(dtype)


def run_cli(*args, cwd=None, timeout=600) -> subprocess.CompletedProcess:
    """The CLI in a separate process, as a user runs it."""
    return subprocess.run([sys.executable, "-m", "medcomp.cli", *map(str, args)], cwd=cwd or ROOT,
                          capture_output=True, text=True, timeout=timeout)


# The probe's contract (issue 35), for every case: exit 0 with a correct result, or exit 2 with one line on stderr
# and nothing written. ``cli`` runs the command line in this process; ``refused`` asserts the second half.


def _files(root: Path) -> set[Path]:
    return {p for p in root.rglob("*")}


@pytest.fixture
def cli(capsys):
    """Run the CLI in this process: (exit code, stdout, stderr)."""
    def run(*args):
        from medcomp.cli import main

        capsys.readouterr()
        code = main([str(a) for a in args])
        out = capsys.readouterr()
        return code, out.out, out.err
    return run


@pytest.fixture
def refused(cli, tmp_path):
    """``refused(*args, match=regex)``: exit 2, one line starting 'medcomp: error: ' (matching ``match``), and no file
    added or changed under tmp_path."""
    def check(*args, match: str | None = None) -> str:
        before = {p: p.lstat().st_mtime_ns for p in _files(tmp_path)}
        code, _, err = cli(*args)
        lines = err.strip().splitlines()
        assert code == 2, err
        assert len(lines) == 1 and lines[0].startswith("medcomp: error: "), err
        if match:
            assert re.search(match, lines[0]), lines[0]
        assert {p: p.lstat().st_mtime_ns for p in _files(tmp_path)} == before
        return lines[0]
    return check
