"""The `.mcz` bytes of a fixed set of encodes (tests/regression_set.py) are those recorded before the codec interface
was reorganised: a refactor that changes what a codec writes shows up here, case by case."""

import json

from medcomp.bench import machine
from tests.regression_set import HASHES, cases, encode_all


def test_regression_set_covers_every_recorded_case():
    assert sorted(json.loads(HASHES.read_text())) == sorted(case for case, *_ in cases())


def test_mcz_bytes_are_unchanged(shared):
    import torch

    recorded = json.loads(HASHES.read_text())
    now = encode_all(shared)
    changed = sorted(case for case in recorded if now[case] != recorded[case])
    # The learned fits are bit-exact per CPU kernel set only: name the machine so a CI log tells a new CPU from a
    # changed codec (a new CPU changes learned cases only; a classical case changing is never the machine).
    cpu = f"{machine()['processor']}, torch CPU capability {torch.backends.cpu.get_cpu_capability()}"
    assert not changed, (f"these encodes no longer write the recorded bytes: "
                         f"{', '.join(f'{c} (now {now[c][:12]})' for c in changed)} on {cpu} "
                         "(re-record with `python -m tests.regression_set --record` only if that was meant)")
