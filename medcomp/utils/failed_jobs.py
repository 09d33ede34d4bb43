"""A multirun's failed jobs, wherever the launcher ran them.

A failed job leaves ``failed.json`` in its folder and returns NaN so that the sweep goes on (an Optuna trial that
returns NaN is marked failed). The basic launcher runs jobs in the launching process; submitit and joblib run them
in other processes, so the launching process learns of their failures only from those files: the Hydra callback
below reads them when the multirun ends, and run.py exits 2 naming them."""

from __future__ import annotations

import json
from pathlib import Path

from hydra.experimental.callback import Callback

FAILED: dict[str, str] = {}  # job folder → its error's last line


def note_failure(job_dir: Path, message: str) -> None:
    FAILED[str(job_dir)] = message.strip().splitlines()[-1] if message.strip() else ""


class CollectFailedJobs(Callback):
    def on_multirun_end(self, config, **kwargs) -> None:
        for record in sorted(Path(config.hydra.sweep.dir).glob("*/failed.json")):
            try:
                note_failure(record.parent, json.loads(record.read_text()).get("error", ""))
            except (OSError, ValueError):  # a job killed while writing it: still a failed job
                note_failure(record.parent, "failed.json unreadable")
