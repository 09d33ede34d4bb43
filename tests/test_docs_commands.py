"""Every command the README and docs/ show still works as written: `python run.py …` composes with Hydra (the first
value of a sweep; `…` placeholders dropped), `medcomp …` parses with the CLI's argparse, and an experiments/ script
exists and takes each `--option` the page gives it."""

import re
import shlex
from pathlib import Path

import pytest

from tests.conftest import ROOT

PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
PLACEHOLDER = re.compile(r"^(\.\.\.|…)$")


def commands(text: str) -> list[str]:
    """Commands in ```bash blocks (continuation lines joined, comments cut) and in `inline code`."""
    found = []
    for block in re.findall(r"```bash\n(.*?)```", text, re.S):
        for line in block.replace("\\\n", " ").splitlines():
            line = re.sub(r"\s+#.*$", "", line).strip()
            if line and not line.startswith("#"):
                found.append(line)
    inline = re.findall(r"`((?:OMP_NUM_THREADS=\d+ )?(?:python run\.py|medcomp|python experiments/)[^`]*)`", text)
    found += [c for c in inline if not re.fullmatch(r"medcomp( [a-z]+)?", c)]  # `medcomp decompress`: a name
    found = [re.sub(r"<[^>]+>", "x", " ".join(c.split())) for c in found]  # <run dir> and the like: any word
    return [re.sub(r"^(OMP_NUM_THREADS=\d+ |taskset -c \d+ )+", "", c) for c in found]


SHOWN = sorted({(page.relative_to(ROOT).as_posix(), c) for page in PAGES for c in commands(page.read_text())
                if c.startswith(("python run.py", "medcomp ", "python experiments/"))})


def test_the_pages_show_commands_of_each_family():
    families = {c.split()[0] + " " + c.split()[1].split("/")[0] for _, c in SHOWN}
    assert {"python run.py", "medcomp compress", "medcomp decompress", "python experiments"} <= families


def run_overrides(command: str) -> list[str]:
    words = shlex.split(command)[2:]
    out = []
    for w in words:
        if w in ("-m", "--multirun") or PLACEHOLDER.search(w):
            continue
        key, _, value = w.partition("=")
        if key.startswith(("hydra/", "hydra.")):  # Hydra's own launcher and run settings, not medcomp's config
            continue
        if "," in value and not value.startswith(("[", "{", "'", '"')):  # a sweep: its first value
            value = value.split(",")[0]
        out.append(f"{key}={value}" if _ else w)
    return out


@pytest.mark.parametrize("page,command", SHOWN, ids=[f"{p}:{c[:60]}" for p, c in SHOWN])
def test_shown_command_works_as_written(page, command):
    if command.startswith("python run.py"):
        from medcomp.config import compose

        cfg = compose(run_overrides(command))
        assert cfg.model._target_
    elif command.startswith("medcomp "):
        from medcomp.cli import build_parser

        words = [w for w in shlex.split(command)[1:] if not PLACEHOLDER.search(w)]
        try:
            build_parser().parse_args(words)
        except SystemExit as exc:
            raise AssertionError(f"{page}: `{command}` does not parse") from exc
    else:
        script = ROOT / shlex.split(command)[1]
        assert script.is_file(), f"{page}: {script} does not exist"
        source = script.read_text() + "".join(p.read_text() for p in Path(script.parent).glob("*.py")
                                              if p.stem in script.read_text())
        for option in re.findall(r"(?<!\S)(--[a-z][a-z0-9-]*)", command):
            assert f'"{option}"' in source, f"{page}: {script.name} takes no {option}"
