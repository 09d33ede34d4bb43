"""What `python run.py` prints: each log line once (Lightning's banners went out through its own console handler and
again through Hydra's root handler) and no advertisements (Lightning's litlogger / litmodels tips)."""

import re
import subprocess
import sys
from collections import Counter

import numpy as np

from tests.conftest import ROOT, smooth_volume


def test_run_prints_each_log_line_once_and_no_advertisement(tmp_path):
    vol = tmp_path / "ct.npy"
    np.save(vol, smooth_volume((16, 48, 48)))
    r = subprocess.run([sys.executable, str(ROOT / "run.py"), "model=unicompress_prior", "data=prior_ct",
                        f"data.files=[{{path: {vol}, licence: test}}]", "data.crop=[16,32,32]", "data.frame=[16,48,48]",
                        "data.block=[8,16,16]", "model.width=8", "model.inner_steps=2", "model.points=128",
                        "model.fit_steps=1", "data.steps_per_epoch=1", f"model.save_to={tmp_path / 'p.npz'}",
                        "logger=none", f"paths.log_dir={tmp_path / 'logs'}"], capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 0, r.stderr[-3000:]
    text = r.stdout + "\n" + r.stderr
    banner = [line for line in text.splitlines() if "GPU available" in line]
    assert len(banner) == 1, banner
    assert "Tip" not in text and "litlogger" not in text and "litmodels" not in text
    # the same message twice (whatever the prefix: timestamps differ by handler)
    messages = Counter(re.sub(r"^(\[[^]]*\]\[[^]]*\]\[[A-Z]+\] - |[A-Z]+: )", "", line).strip()
                       for line in text.splitlines() if re.match(r"^(\[\d{4}-|[A-Z]+: )", line))
    assert not [m for m, n in messages.items() if n > 1], messages
