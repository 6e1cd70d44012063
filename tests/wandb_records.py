"""Read a W&B ``.wandb`` run file back into protobuf records (test helper).

The file is a LevelDB-style log: a 7-byte header (``:W&B``, magic 0xBEE1, version 0 or 1), then
32 KiB blocks of records, each with a 7-byte header (CRC-32 of type byte + data, length,
type: FULL=1, FIRST=2, MIDDLE=3, LAST=4); a block tail shorter than a header is zero padding.
Each assembled record is a ``wandb.proto.wandb_internal_pb2.Record``. wandb 0.31 ships no
Python reader, hence this one.
"""

import json
import struct
import zlib
from pathlib import Path

from wandb.proto import wandb_internal_pb2

BLOCK = 32768
FULL, FIRST, MIDDLE, LAST = 1, 2, 3, 4


def read_records(path: Path) -> list:
    data = Path(path).read_bytes()
    ident, magic, version = struct.unpack("<4sHB", data[:7])
    assert (ident, magic) == (b":W&B", 0xBEE1) and version in (0, 1), f"{path}: not a W&B log ({ident!r}, {magic:#x})"
    records, pending, pos = [], b"", 7
    while pos + 7 <= len(data):
        left_in_block = BLOCK - pos % BLOCK
        if left_in_block < 7:
            pos += left_in_block
            continue
        checksum, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        if (checksum, length, kind) == (0, 0, 0):  # zero padding at the end of the file
            break
        chunk = data[pos + 7:pos + 7 + length]
        assert zlib.crc32(chunk, zlib.crc32(bytes([kind]))) & 0xFFFFFFFF == checksum, f"bad CRC at {pos}"
        pos += 7 + length
        if kind in (FULL, FIRST):
            pending = chunk
        else:
            pending += chunk
        if kind in (FULL, LAST):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            records.append(record)
    return records


def history(path: Path) -> list[dict]:
    """The logged rows: one dict per history record, values JSON-decoded."""
    rows = []
    for record in read_records(path):
        if record.WhichOneof("record_type") == "history":
            rows.append({item.key or "/".join(item.nested_key): json.loads(item.value_json)
                         for item in record.history.item})
    return rows


def run_ids(path: Path) -> set[str]:
    return {r.run.run_id for r in read_records(path) if r.WhichOneof("record_type") == "run"}


def artifacts(path: Path) -> list:
    """The artifact records (models, and the tables wandb logs as ``run_table`` artifacts)."""
    return [r.artifact for r in read_records(path) if r.WhichOneof("record_type") == "artifact"]


def logged_table(path: Path, key: str) -> tuple[dict, dict[str, Path]]:
    """A table logged under ``key``, as ``wandb sync`` would upload it: the ``run_table`` artifact's JSON
    (media cells with their paths) and ``{path in the artifact: the staged local file}``."""
    name = f"{key}.table.json"
    for artifact in reversed(artifacts(path)):
        files = {entry.path: Path(entry.local_path) for entry in artifact.manifest.contents}
        if name in files:
            return json.loads(files[name].read_text()), files
    raise KeyError(f"no table {key} in {path}")
