"""Units of work, their reports, and the hash keyed by them.

A unit is one input file or one byte slice of a big uncompressed file (or one shard of a Hugging Face
dataset). Units are independent: each is packed by one process into its own shard files, so a Slurm array
task can run exactly one, and a re-run skips the units that finished.

Every module of data_prep (and minialbert.data, for mix64) imports from here; this module imports none of them.
"""

from __future__ import annotations

import gzip
import hashlib
import sys
import zlib
from collections import Counter
from dataclasses import dataclass, field

MAX_LISTED_BAD_RECORDS = 100  # per unit in the manifest; counts stay complete
MAX_PRINTED_BAD_RECORDS = 20  # per unit on stderr
# Errors that mean "the rest of this compressed file cannot be read" (a reader then calls report.broken_file).
BROKEN_STREAM_ERRORS = (EOFError, gzip.BadGzipFile, zlib.error)
_MASK64 = (1 << 64) - 1


def mix64(*values: int) -> int:
    """splitmix64-style hash of a few integers: cheap, deterministic across processes and machines. Keys the
    window sampling and validation split by (seed, Unit.key_hash, document number), and minialbert.data's shuffle."""
    h = 0x9E3779B97F4A7C15
    for v in values:
        h = (h ^ (v & _MASK64)) * 0xBF58476D1CE4E5B9 & _MASK64
        h = (h ^ (h >> 31)) * 0x94D049BB133111EB & _MASK64
        h ^= h >> 29
    return h


class DataPrepError(ValueError):
    """Bad input or settings; the CLI prints it as one line and exits non-zero."""


@dataclass(frozen=True)
class Unit:
    index: int
    path: str  # absolute file path, or "hf:NAME" for a Hugging Face hub dataset
    start: int = 0  # first byte (text/jsonl slice) or shard number (hub dataset)
    end: int | None = None  # byte after the slice; None: to the end of the file
    name: str = ""  # the path from the folder holding all the inputs: the same wherever the corpus lies

    @property
    def key(self) -> str:
        """Stable name of the unit; seeds the per-document window sampling and the validation split, so the same
        corpus gives the same shards wherever it is stored."""
        return f"{self.name or self.path}[{self.start}:{'' if self.end is None else self.end}]"

    @property
    def key_hash(self) -> int:
        return int.from_bytes(hashlib.blake2b(self.key.encode(), digest_size=8).digest(), "little")

    def to_json(self) -> dict:
        return {"index": self.index, "path": self.path, "name": self.name, "start": self.start, "end": self.end}


@dataclass
class SourceReport:
    """What happened to one unit's input: documents read, skipped (by reason), bad records with positions."""

    unit: Unit
    strict: bool = False
    status: str = "ok"  # ok | truncated | corrupt
    docs_read: int = 0
    docs_skipped: Counter = field(default_factory=Counter)
    bad_records: list = field(default_factory=list)
    bad_record_count: int = 0
    warnings: list = field(default_factory=list)  # e.g. a non-empty file that gave no documents
    found: str = ""  # what a reader saw instead of records (e.g. an unknown XML root), said if no document came

    def warn(self, reason: str) -> None:
        """Something the unit's totals would hide (a file giving no documents); fatal with --strict, else recorded
        in the manifest and printed."""
        message = f"{self.unit.path}: {reason}"
        if self.strict:
            raise DataPrepError(message + " (--strict)")
        self.warnings.append(reason)
        print(f"warning: {message}", file=sys.stderr)

    def check_not_empty(self, size: int) -> None:
        """Called once the unit is read: a file of `size` bytes that gave no document is warned about."""
        if self.docs_read or size <= 0:
            return
        skipped = ", ".join(f"{reason} {n}" for reason, n in sorted(self.docs_skipped.items()))
        seen = f"skipped: {skipped}" if skipped else self.found or "no record of the format found"
        self.warn(f"no documents from a non-empty file ({size} bytes; {seen})")

    def skip(self, reason: str) -> None:
        """A document that is legitimately absent from the output (no abstract, deleted, empty)."""
        self.docs_skipped[reason] += 1

    def bad(self, position: str, reason: str, document: bool = True) -> None:
        """A record that could not be read; fatal with --strict, else skipped, counted and printed.

        document=False: the bad record is not a document (e.g. an entity declaration in an XML header).
        """
        message = f"{self.unit.path}: {position}: {reason}"
        if self.strict:
            raise DataPrepError(message + " (--strict)")
        self.bad_record_count += 1
        if document:
            self.docs_skipped["bad record"] += 1
        if len(self.bad_records) < MAX_LISTED_BAD_RECORDS:
            self.bad_records.append({"position": position, "reason": reason})
        if self.bad_record_count <= MAX_PRINTED_BAD_RECORDS:
            print(f"warning: skipped bad record: {message}", file=sys.stderr)

    def broken_file(self, status: str, position: str, reason: str) -> None:
        """The rest of the file is unreadable (truncated .gz, corrupt XML/Parquet); what was read is kept."""
        message = f"{self.unit.path}: {position}: {reason}"
        if self.strict:
            raise DataPrepError(message + " (--strict)")
        self.status = status
        self.bad_record_count += 1
        if len(self.bad_records) < MAX_LISTED_BAD_RECORDS:
            self.bad_records.append({"position": position, "reason": reason})
        print(f"warning: {status} file, rest skipped: {message}", file=sys.stderr)

    def to_json(self) -> dict:
        return {
            **self.unit.to_json(),
            "status": self.status,
            "docs_read": self.docs_read,
            "docs_skipped": dict(sorted(self.docs_skipped.items())),
            "bad_record_count": self.bad_record_count,
            "bad_records": self.bad_records,
            "warnings": self.warnings,
        }
