"""The probe's contract, for every case: exit 0 with a correct result, or exit 2 with one line on stderr and nothing
written (issue 35)."""

import re
from pathlib import Path

import pytest

from medcomp.cli import main


def _files(root: Path) -> set[Path]:
    return {p for p in root.rglob("*")}


@pytest.fixture
def cli(capsys):
    """Run the CLI in this process: (exit code, stdout, stderr)."""
    def run(*args):
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
