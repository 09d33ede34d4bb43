"""Read a W&B offline run file (``run-*.wandb``) so tests can check what was logged.

The file is W&B's 7-byte header followed by a LevelDB-style log (32 KiB blocks of checksummed records, each a
serialised ``wandb_internal_pb2.Record``). wandb no longer ships a Python reader, hence these few lines.
"""

import json
import struct

HEADER = 7
BLOCK = 32768


def records(path):
    from wandb.proto import wandb_internal_pb2 as pb

    data = open(path, "rb").read()
    assert data[:4] == b":W&B", "not a W&B run file"
    pos, pending = HEADER, b""
    while pos + 7 <= len(data):
        left = BLOCK - (pos % BLOCK)
        if left < 7:
            pos += left
            continue
        _, length, kind = struct.unpack_from("<IHB", data, pos)
        if length == 0 and kind == 0:
            pos += left
            continue
        chunk = data[pos + 7 : pos + 7 + length]
        pos += 7 + length
        pending = chunk if kind in (1, 2) else pending + chunk
        if kind in (1, 4):
            r = pb.Record()
            r.ParseFromString(pending)
            yield r


def logged_values(path) -> dict:
    """Every history and summary key with its last value."""
    values = {}
    for r in records(path):
        kind = r.WhichOneof("record_type")
        items = r.history.item if kind == "history" else r.summary.update if kind == "summary" else []
        for it in items:
            key = it.key or "/".join(it.nested_key)
            values[key] = json.loads(it.value_json)
    return values


def record_kinds(path) -> set:
    return {r.WhichOneof("record_type") for r in records(path)}


def run_group(path) -> str:
    return next(r.run.run_group for r in records(path) if r.WhichOneof("record_type") == "run")


def artifact_types(path) -> dict:
    """Artifact name → type, for every artifact the run logged."""
    return {r.artifact.name: r.artifact.type for r in records(path) if r.WhichOneof("record_type") == "artifact"}
