"""Arrow shard files, per-unit records and the manifest.

Folder layout (DIR = --out):
    DIR/plan.json                 settings + the list of units; written by every pack_corpus process (identical)
    DIR/units/u00007.json         unit 7 finished: its shards (rows, tokens, bytes, sha256) and its source report
    DIR/train/u00007-00000.arrow  Arrow IPC file: input_ids list<uint16|uint32>, word_start list<bool>
    DIR/validation/u00007-00000.arrow
    DIR/manifest.json             written by merge_manifests once every unit has finished

A shard is written under a hidden temporary name (data_prep.files); the unit's shards are synced and renamed
into place only when the whole unit is done, and the unit record is written last (atomically). A unit without
its record is unfinished: a re-run deletes whatever it left and packs it again. A failed write (a full disk) is
a one-line DataPrepError naming the file (write_error); the writer removes its temporaries, and a JSON file
replaced atomically keeps its previous content. Output bytes depend only on the settings and the input, never
on timing, worker count or which process ran which unit.
"""

from __future__ import annotations

import glob
import json
import os

import numpy as np
import pyarrow as pa

from data_prep import files
from data_prep.files import remove_quietly
from data_prep.units import DataPrepError

FORMAT_VERSION = 1
SPLITS = ("train", "validation")
BATCH_ROWS = 1024  # rows per Arrow record batch inside a shard


def write_error(path: str, err: OSError) -> DataPrepError:
    """A failed write as one line naming the file: disk full, quota, permissions, ..."""
    return DataPrepError(files.describe_write_error(path, err))


def write_json_atomic(path: str, obj: dict) -> None:
    """A reader sees the old file or the new one, never a part (files.atomic_write). On failure (a full disk) the
    temporary is removed and the old file is untouched."""
    try:
        files.write_json_atomic(path, obj, indent=1, sort_keys=True)
    except OSError as e:
        raise write_error(path, e) from e


def read_json(path: str) -> dict:
    with open(path) as f:
        return json.load(f)


def unit_record_path(out_dir: str, index: int) -> str:
    return os.path.join(out_dir, "units", f"u{index:05d}.json")


def remove_unit_leftovers(out_dir: str, index: int) -> None:
    """Delete shards and temporaries of an unfinished unit (from a killed or failed run)."""
    patterns = [os.path.join(out_dir, split, p) for split in SPLITS
                for p in (f"u{index:05d}-*.arrow", f".u{index:05d}-*.arrow.tmp-*")]
    for pattern in patterns + [os.path.join(out_dir, "units", f".u{index:05d}.json.tmp-*")]:
        for path in glob.glob(pattern):
            remove_quietly(path)


class SplitWriter:
    """Rows of one split of one unit → numbered shard files of at most shard_rows rows (temporary names)."""

    def __init__(self, out_dir: str, split: str, unit_index: int, shard_rows: int, id_dtype: str):
        self.dir = os.path.join(out_dir, split)
        self.split, self.unit_index, self.shard_rows = split, unit_index, shard_rows
        self.id_type = pa.uint16() if id_dtype == "uint16" else pa.uint32()
        self.np_dtype = np.dtype(id_dtype)
        self.schema = pa.schema([("input_ids", pa.list_(self.id_type)), ("word_start", pa.list_(pa.bool_()))])
        self.finished: list[dict] = []  # shards written (still under temporary names)
        self._sink = self._writer = None
        self._rows: list[np.ndarray] = []
        self._starts: list[np.ndarray] = []
        self._shard_rows_written = 0
        self._shard_tokens = 0
        self._shard_max_id = 0

    def add(self, ids: np.ndarray, word_start: np.ndarray) -> None:
        self._rows.append(ids)
        self._starts.append(word_start)
        if len(self._rows) == BATCH_ROWS or self._shard_rows_written + len(self._rows) == self.shard_rows:
            self._flush_batch()

    def _flush_batch(self) -> None:
        if not self._rows:
            return
        try:
            self._write_batch()
        except OSError as e:  # pyarrow's write errors are OSErrors with the errno (ENOSPC: disk full)
            raise write_error(self._final, e) from e

    def _write_batch(self) -> None:
        if self._sink is None:
            number = len(self.finished)
            name = f"u{self.unit_index:05d}-{number:05d}.arrow"
            self._final = os.path.join(self.dir, name)
            self._tmp = files.temporary_path(self._final)
            self._sink = pa.OSFile(self._tmp, "wb")
            self._writer = pa.ipc.new_file(self._sink, self.schema)
        lengths = np.fromiter((len(r) for r in self._rows), np.int32, len(self._rows))
        offsets = np.zeros(len(lengths) + 1, np.int32)
        np.cumsum(lengths, out=offsets[1:])
        flat = np.concatenate(self._rows)
        ids = pa.ListArray.from_arrays(pa.array(offsets), pa.array(flat.astype(self.np_dtype), self.id_type))
        starts = pa.ListArray.from_arrays(pa.array(offsets), pa.array(np.concatenate(self._starts)))
        self._writer.write_batch(pa.record_batch([ids, starts], schema=self.schema))
        self._shard_rows_written += len(lengths)
        self._shard_tokens += int(offsets[-1])
        self._shard_max_id = max(self._shard_max_id, int(flat.max()))
        self._rows, self._starts = [], []
        if self._shard_rows_written == self.shard_rows:
            self._close_shard()

    def _close_shard(self) -> None:
        self._writer.close()  # writes the footer
        self._sink.close()
        self.finished.append({
            "tmp": self._tmp, "final": self._final,
            "file": f"{self.split}/{os.path.basename(self._final)}",
            "rows": self._shard_rows_written, "tokens": self._shard_tokens, "max_id": self._shard_max_id,
        })
        self._sink = self._writer = None
        self._shard_rows_written = self._shard_tokens = self._shard_max_id = 0

    def close(self) -> list[dict]:
        """Finish the last shard; size and checksum all; returns their records (temporary names still)."""
        self._flush_batch()
        if self._sink is not None:
            try:
                self._close_shard()
            except OSError as e:
                raise write_error(self._final, e) from e
        for shard in self.finished:
            record = files.file_record(shard["tmp"])
            shard["bytes"], shard["sha256"] = record["size"], record["sha256"]
        return self.finished

    def abort(self) -> None:
        """Remove every file this writer made; safe after a failed write (closing may fail again on a full disk)."""
        for handle in (self._writer, self._sink):
            if handle is not None:
                try:
                    handle.close()
                except (OSError, pa.ArrowException):
                    pass
        for path in [s["tmp"] for s in self.finished] + ([self._tmp] if self._sink is not None else []):
            remove_quietly(path)
        self._sink = self._writer = None


def publish_unit(out_dir: str, index: int, shards: list[dict], source: dict, totals: dict) -> None:
    """Rename a finished unit's shards into place, then write its record: from now on it counts as done.
    If the record cannot be written (a full disk), the unit's shards are removed again: it stays unfinished."""
    for shard in shards:
        files.replace_synced(shard.pop("tmp"), shard.pop("final"))
    try:
        write_json_atomic(unit_record_path(out_dir, index), {"unit": index, "shards": shards, "source": source,
                                                             "totals": totals})
    except DataPrepError:
        remove_unit_leftovers(out_dir, index)
        raise


def merge_manifests(out_dir: str) -> dict:
    """Combine plan.json and every units/u*.json into manifest.json; idempotent; refuses unfinished units."""
    plan_path = os.path.join(out_dir, "plan.json")
    if not os.path.isfile(plan_path):
        raise DataPrepError(f"{out_dir}: no plan.json; run data_prep.pack_corpus with --out {out_dir} first")
    plan = read_json(plan_path)
    missing = [u["index"] for u in plan["units"] if not os.path.isfile(unit_record_path(out_dir, u["index"]))]
    if missing:
        shown = ", ".join(map(str, missing[:10])) + (", ..." if len(missing) > 10 else "")
        raise DataPrepError(f"{out_dir}: {len(missing)} of {len(plan['units'])} units unfinished ({shown}); "
                            f"re-run pack_corpus (it skips finished units)")
    splits: dict[str, list] = {split: [] for split in SPLITS}
    sources, totals = [], {}
    for u in plan["units"]:
        record = read_json(unit_record_path(out_dir, u["index"]))
        for shard in record["shards"]:
            splits[shard["file"].split("/")[0]].append(shard)
        sources.append(record["source"])
        for key, value in record["totals"].items():
            totals[key] = totals.get(key, 0) + value
    for split, shards in splits.items():
        totals[f"{split}_rows"] = sum(s["rows"] for s in shards)
        totals[f"{split}_tokens"] = sum(s["tokens"] for s in shards)
    manifest = {
        "format_version": FORMAT_VERSION,
        **{k: v for k, v in plan.items() if k not in ("units", "format_version")},
        "splits": splits,
        "sources": sources,
        "totals": totals,
    }
    write_json_atomic(os.path.join(out_dir, "manifest.json"), manifest)
    return manifest


def warning_lines(manifest: dict) -> list[str]:
    """The units' warnings (e.g. a file that gave no documents), one line each, for the end-of-run summary."""
    return [f"warning: unit {s['index']} {s.get('name') or s['path']}: {w} (manifest.json sources[{i}].warnings)"
            for i, s in enumerate(manifest["sources"]) for w in s.get("warnings", [])]
