"""Streaming readers, one per input format, and the split of inputs into units.

Each reader yields document texts for one unit and reports skipped/bad records to a SourceReport; memory
stays bounded by one record (or one Arrow batch), never by the corpus.

Formats:
  text     documents separated by blank lines; the lines of a document are joined with "\\n"
  jsonl    one JSON object per line; the document is the string in --text-field
  parquet  the string column --text-field, read batch by batch
  hf       a folder written by `datasets.save_to_disk` (one unit per Arrow file), or a hub dataset name
           (streaming, one unit per data shard; needs network)
  pubmed   PubMed/MEDLINE baseline and update XML (`pubmed*.xml.gz`, older `medline*.xml.gz`): see data_prep/pubmed.py

A whole file that gives no document is a warning in its unit's report (fatal with --strict).
"""

from __future__ import annotations

import glob
import gzip
import json
import os
from collections.abc import Iterator

import pyarrow as pa
import pyarrow.parquet as pq

from data_prep.pubmed import read_pubmed
from data_prep.units import BROKEN_STREAM_ERRORS, DataPrepError, SourceReport, Unit

FORMATS = ("text", "jsonl", "parquet", "hf", "pubmed")


def plan_units(fmt: str, inputs: list[str], slice_bytes: int, hf_config: str | None, hf_split: str) -> list[Unit]:
    """Expand globs and cut inputs into units, in a deterministic order (sorted paths, then offsets)."""
    if fmt == "hf":
        return _plan_hf(inputs, hf_config, hf_split)
    paths = []
    for pattern in inputs:
        matches = sorted(glob.glob(pattern)) if glob.has_magic(pattern) else [pattern]
        matches = [m for m in matches if os.path.isfile(m)]
        if not matches:
            raise DataPrepError(f"--input {pattern}: no such file")
        paths.extend(os.path.abspath(m) for m in matches)
    paths = sorted(dict.fromkeys(paths))
    root = os.path.commonpath([os.path.dirname(p) for p in paths])
    units = []
    for path in paths:
        size, name = os.path.getsize(path), os.path.relpath(path, root)
        sliceable = fmt in ("text", "jsonl") and not path.endswith(".gz") and slice_bytes > 0
        if sliceable and size > slice_bytes:
            for start in range(0, size, slice_bytes):
                units.append(Unit(len(units), path, start, min(start + slice_bytes, size), name))
        else:
            units.append(Unit(len(units), path, name=name))
    return units


def _plan_hf(inputs: list[str], hf_config: str | None, hf_split: str) -> list[Unit]:
    units = []
    for name in inputs:
        if os.path.isdir(name):
            folder = os.path.join(name, hf_split) if os.path.isfile(os.path.join(name, "dataset_dict.json")) else name
            state_path = os.path.join(folder, "state.json")
            if not os.path.isfile(state_path):
                raise DataPrepError(f"--input {name}: not a datasets.save_to_disk folder (no {state_path})")
            with open(state_path) as f:
                files = [d["filename"] for d in json.load(f)["_data_files"]]
            for fname in files:
                units.append(Unit(len(units), os.path.abspath(os.path.join(folder, fname)),
                                  name=f"{os.path.basename(os.path.normpath(name))}/{fname}"))
        else:
            import datasets  # only hub datasets need it; slow to import

            try:
                ds = datasets.load_dataset(name, hf_config, split=hf_split, streaming=True)
            except Exception as e:  # network, unknown name, bad config: all mean "cannot use this input"
                raise DataPrepError(f"--input {name}: cannot open as a save_to_disk folder or hub dataset "
                                    f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})") from e
            for shard in range(ds.num_shards):
                units.append(Unit(len(units), f"hf:{name}:{hf_config or ''}:{hf_split}", start=shard))
    if not units:
        raise DataPrepError(f"--input {' '.join(inputs)}: no data files")
    return units


def check_units(fmt: str, units: list[Unit], text_field: str) -> None:
    """Check what can be checked cheaply before anything is written: the text column of Parquet files and
    save_to_disk Arrow files (read from their schema). An unreadable file is left to its reader, which marks
    it corrupt; JSONL records without the field are bad records, found while reading."""
    if fmt not in ("parquet", "hf"):
        return
    for unit in units:
        if unit.path.startswith("hf:"):  # a hub dataset: its columns are known only once streaming
            continue
        try:
            if fmt == "parquet":
                names = pq.ParquetFile(unit.path).schema_arrow.names
            else:
                with pa.memory_map(unit.path) as source:
                    names = pa.ipc.open_stream(source).schema.names
        except (pa.ArrowException, OSError):
            continue
        _check_column(unit, names, text_field)


def _check_column(unit: Unit, names: list[str], text_field: str) -> None:
    if text_field not in names:
        raise DataPrepError(f"{unit.path}: no column '{text_field}' (columns: {', '.join(names)}); set --text-field")


def read_unit(fmt: str, unit: Unit, report: SourceReport, text_field: str) -> Iterator[str]:
    """Yield the document texts of one unit; report.docs_read counts the yielded ones."""
    if fmt == "pubmed":
        reader = read_pubmed(unit, report)
    else:
        reader = {"text": _read_text, "jsonl": _read_jsonl, "parquet": _read_parquet, "hf": _read_hf}[fmt](
            unit, report, text_field
        )
    for text in reader:
        if not text.strip():
            report.skip("empty")
            continue
        report.docs_read += 1
        yield text
    # A whole local file (not a byte slice, which may legitimately own no document, nor a hub shard, whose size is
    # unknown) that gave nothing is almost always a format the reader does not know: say so instead of "0 documents".
    if unit.end is None and unit.start == 0 and not unit.path.startswith("hf:"):
        report.check_not_empty(os.path.getsize(unit.path))


def _open_binary(path: str):
    return gzip.open(path, "rb") if path.endswith(".gz") else open(path, "rb")


def _lines(unit: Unit, report: SourceReport) -> Iterator[tuple[int, int, bytes]]:
    """(line number in unit, byte offset or -1 for .gz, raw line) for lines *starting* in [start, end).

    A slice that starts mid-line skips to the next line: the previous slice owns the line it started.
    A truncated .gz ends the stream with the file marked truncated.
    """
    with _open_binary(unit.path) as f:
        pos = unit.start
        if unit.start > 0:
            f.seek(unit.start - 1)
            pos = unit.start - 1 + len(f.readline())
        number = 0
        while True:
            try:
                line = f.readline()
            except BROKEN_STREAM_ERRORS as e:
                report.broken_file("truncated", f"after line {number}", f"truncated or corrupt compressed file ({e})")
                return
            if not line:
                return
            number += 1
            yield number, (pos if not unit.path.endswith(".gz") else -1), line
            pos += len(line)


def _position(unit: Unit, number: int, offset: int) -> str:
    return f"line {number}" if unit.start == 0 else f"byte {offset}"


def _read_text(unit: Unit, report: SourceReport, text_field: str) -> Iterator[str]:
    # A document starts at the file start or after a blank line. A slice owns the documents that follow a
    # blank line starting inside it (and the first document when it starts at byte 0); it reads its last
    # document past its end. So slices together read every document exactly once.
    end = unit.end
    owning = unit.start == 0
    doc: list[str] = []
    doc_ok = True
    doc_start = ""
    for number, offset, raw in _lines(unit, report):
        if not raw.strip():
            if owning and doc:
                if doc_ok:
                    yield "\n".join(doc)
                doc = []
            doc_ok = True
            if end is not None and offset >= end:
                return
            owning = owning or offset >= unit.start
            continue
        if not owning:
            continue
        if not doc:
            doc_start = _position(unit, number, offset)
        try:
            doc.append(raw.decode("utf-8").rstrip("\r\n"))
        except UnicodeDecodeError as e:
            if doc_ok:
                report.bad(doc_start, f"undecodable bytes at {_position(unit, number, offset)} ({e.reason})")
            doc_ok = False
            doc.append("")
    if owning and doc and doc_ok:
        yield "\n".join(doc)


def _read_jsonl(unit: Unit, report: SourceReport, text_field: str) -> Iterator[str]:
    for number, offset, raw in _lines(unit, report):
        if unit.end is not None and offset >= unit.end:
            return
        if not raw.strip():
            continue
        where = _position(unit, number, offset)
        try:
            record = json.loads(raw)
        except UnicodeDecodeError as e:
            report.bad(where, f"undecodable bytes ({e.reason})")
            continue
        except json.JSONDecodeError as e:
            report.bad(where, f"malformed JSON ({e.msg})")
            continue
        text = record.get(text_field) if isinstance(record, dict) else None
        if not isinstance(text, str):
            report.bad(where, f"no string field '{text_field}'")
            continue
        yield text


def _read_batches(unit: Unit, report: SourceReport, text_field: str, batches: Iterator[pa.RecordBatch]):
    row = 0
    while True:
        try:
            batch = next(batches)
        except StopIteration:
            return
        except (pa.ArrowException, OSError) as e:
            report.broken_file("corrupt", f"row {row}", f"unreadable data ({str(e).splitlines()[0]})")
            return
        _check_column(unit, batch.schema.names, text_field)
        for i, text in enumerate(batch.column(text_field).to_pylist()):
            if not isinstance(text, str):
                report.bad(f"row {row + i}", f"'{text_field}' is not a string")
                continue
            yield text
        row += batch.num_rows


def _read_parquet(unit: Unit, report: SourceReport, text_field: str) -> Iterator[str]:
    try:
        pf = pq.ParquetFile(unit.path)
    except (pa.ArrowException, OSError) as e:
        report.broken_file("corrupt", "footer", f"not a readable Parquet file ({str(e).splitlines()[0]})")
        return
    _check_column(unit, pf.schema_arrow.names, text_field)
    yield from _read_batches(unit, report, text_field, iter(pf.iter_batches(batch_size=1024, columns=[text_field])))


def _read_hf(unit: Unit, report: SourceReport, text_field: str) -> Iterator[str]:
    if not unit.path.startswith("hf:"):
        # save_to_disk writes Arrow IPC *stream* files.
        try:
            reader = pa.ipc.open_stream(pa.memory_map(unit.path))
        except (pa.ArrowException, OSError) as e:
            report.broken_file("corrupt", "header", f"not a readable Arrow stream ({str(e).splitlines()[0]})")
            return
        yield from _read_batches(unit, report, text_field, iter(reader))
        return
    import datasets

    _, name, config, split = unit.path.split(":", 3)
    ds = datasets.load_dataset(name, config or None, split=split, streaming=True)
    for i, record in enumerate(ds.shard(num_shards=ds.num_shards, index=unit.start)):
        text = record.get(text_field)
        if not isinstance(text, str):
            report.bad(f"row {i}", f"no string field '{text_field}'")
            continue
        yield text
