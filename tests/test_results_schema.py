"""Recorded benchmark results (experiments/results/*.json) give a reader one type per field: in every collection of
records (a list of objects, or an object whose values are all objects) a field is always a number, or always a
string, or always a list … — or null where it has no value. (analysis_auroc.json once stored ``auroc`` as a list in
some rows and as a string holding a list in others.)"""

import json
from collections import defaultdict

import pytest

from tests.conftest import ROOT

RESULTS = sorted((ROOT / "experiments" / "results").glob("*.json"))


def kind(value) -> str | None:
    if value is None:
        return None
    if isinstance(value, bool):
        return "bool"
    return "number" if isinstance(value, int | float) else type(value).__name__


def mixed_fields(obj, path: str = "") -> list[tuple[str, str, list[str]]]:
    """(where, field, the types it takes) for every field of a record collection in ``obj`` with more than one."""
    out = []
    if isinstance(obj, list) and obj and all(isinstance(x, dict) for x in obj):
        records = obj
    elif isinstance(obj, dict) and len(obj) > 1 and all(isinstance(x, dict) for x in obj.values()):
        records = list(obj.values())
    else:
        records = []
    types = defaultdict(set)
    for record in records:
        for field, value in record.items():
            if kind(value):
                types[field].add(kind(value))
    out += [(path, field, sorted(t)) for field, t in types.items() if len(t) > 1]
    children = obj.items() if isinstance(obj, dict) else enumerate(obj) if isinstance(obj, list) else ()
    for key, child in children:
        out += mixed_fields(child, f"{path}.{key}" if isinstance(obj, dict) else f"{path}[{key}]")
    return out


def test_the_check_finds_a_field_of_two_types():
    rows = {"a": {"auroc": [0.9, 0.8], "n": 3}, "b": {"auroc": "[0.9, 0.8]", "n": None}}
    assert mixed_fields({"rows": rows}) == [(".rows", "auroc", ["list", "str"])]
    assert mixed_fields([{"x": 1}, {"x": 2.5}, {"x": None}]) == []


@pytest.mark.parametrize("path", RESULTS, ids=lambda p: p.name)
def test_results_have_one_type_per_field(path):
    assert not mixed_fields(json.loads(path.read_text())), f"{path.name}: fields of more than one type"
