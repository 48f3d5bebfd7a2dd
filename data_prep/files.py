"""Writing files so that a crash or a full disk never leaves half of one, and recording what was written.

Every writer of the project goes through here (data prep, checkpoints, metrics, exports, reports):

- ``atomic_write(path)`` yields a temporary name in the same folder (``.NAME.tmp-PID``); the writer fills it
  (``open``, ``torch.save``, a streaming writer), then it is fsynced, renamed over ``path`` and the folder
  fsynced. A reader sees the old file or the new one, never a part; after a crash or a failure (the writer
  raised, the disk filled) the old file is untouched and the temporary is gone. ``write_text_atomic`` and
  ``write_json_atomic`` are the one-line uses.
- ``atomic_folder(path)`` does the same for a folder: built under a ``tempfile.mkdtemp`` name beside it, synced,
  renamed into place (optionally replacing the existing one).
- ``file_record(path)`` ({"size", "sha256"}) and ``check_record`` catch a truncated or damaged file later.
- ``describe_write_error(path, err)`` is a failed write as one line naming the path.

Standard library only: data_prep is the lowest layer (no torch, no minialbert), and minialbert imports this.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterator, TypeVar

P = TypeVar("P", str, Path)
FULL_DISK = (errno.ENOSPC, errno.EDQUOT)


def temporary_path(path: P) -> P:
    """The temporary name a write of ``path`` uses: hidden, same folder (so the rename is atomic), one per process."""
    tmp = os.path.join(os.path.dirname(os.fspath(path)), f".{os.path.basename(os.fspath(path))}.tmp-{os.getpid()}")
    return Path(tmp) if isinstance(path, Path) else tmp


def fsync_file(path: str | Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_folder(folder: str | Path) -> None:
    """Make a rename inside ``folder`` durable. Filesystems that cannot sync a folder (EINVAL) are let be."""
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    except OSError as err:
        if err.errno not in (errno.EINVAL, errno.ENOTSUP):
            raise
    finally:
        os.close(fd)


def replace_synced(tmp: str | Path, path: str | Path) -> None:
    """Move a finished temporary over ``path``: its bytes reach the disk before the rename, the rename after."""
    fsync_file(tmp)
    os.replace(tmp, path)
    fsync_folder(os.path.dirname(os.path.abspath(path)))


def remove_quietly(path: str | Path) -> None:
    try:
        os.remove(path)
    except FileNotFoundError:
        pass


@contextlib.contextmanager
def atomic_write(path: P) -> Iterator[P]:
    """Yield a temporary path to write; on leaving, it replaces ``path`` (synced). On any exception the temporary is
    removed, ``path`` is untouched, and the exception propagates."""
    tmp = temporary_path(path)
    try:
        yield tmp
        replace_synced(tmp, path)
    except BaseException:
        remove_quietly(tmp)
        raise


def write_text_atomic(path: str | Path, text: str, encoding: str = "utf-8") -> None:
    with atomic_write(path) as tmp, open(tmp, "w", encoding=encoding) as f:
        f.write(text)


def write_json_atomic(path: str | Path, obj: object, indent: int | None = 2, sort_keys: bool = False) -> None:
    """``obj`` as JSON plus a final newline, atomically."""
    write_text_atomic(path, json.dumps(obj, indent=indent, sort_keys=sort_keys) + "\n")


def _fsync_tree(folder: Path) -> None:
    for root, _, names in os.walk(folder):
        for name in names:
            fsync_file(os.path.join(root, name))
        fsync_folder(root)


@contextlib.contextmanager
def atomic_folder(path: str | Path, replace: bool = False) -> Iterator[Path]:
    """Yield a new empty folder beside ``path`` to fill; on leaving, its files are synced and it is renamed to
    ``path``. An existing empty ``path`` is replaced; a non-empty one only with ``replace`` (the old folder is
    moved aside, the new one renamed in, then the old one deleted), else FileExistsError. On any exception the
    temporary folder is removed and ``path`` is untouched."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.tmp-", dir=path.parent))
    try:
        yield tmp
        _fsync_tree(tmp)
        if path.exists() and not any(path.iterdir()):
            path.rmdir()
        if not path.exists():
            tmp.rename(path)
        elif replace:
            old = path.with_name(f".{path.name}.old-{os.getpid()}")
            shutil.rmtree(old, ignore_errors=True)
            path.rename(old)
            tmp.rename(path)
            shutil.rmtree(old)
        else:
            raise FileExistsError(f"{path}: exists and is not empty")
        fsync_folder(path.parent)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def stale_temporaries(path: str | Path) -> list[Path]:
    """Temporaries of ``path`` left by a killed writer (``atomic_write``'s files, ``atomic_folder``'s folders)."""
    path = Path(path)
    return sorted(path.parent.glob(f".{path.name}.tmp*"))


def sha256_file(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()


def file_record(path: str | Path) -> dict:
    """{"size": bytes, "sha256": hex digest} of a file, for checking it later (``check_record``)."""
    return {"size": os.path.getsize(path), "sha256": sha256_file(path)}


def check_record(path: str | Path, record: dict, size_key: str = "size", source: str = "the record") -> str | None:
    """What is wrong with ``path`` against its record (one line naming the file), or None when it matches.
    ``size_key``: the record's name for the size ("bytes" in data manifests); ``source``: where the record lives."""
    try:
        size = os.path.getsize(path)
    except FileNotFoundError:
        return f"{path}: missing"
    if size_key in record and size != record[size_key]:
        return f"{path}: {size} bytes, expected {record[size_key]} (truncated or overwritten)"
    if sha256_file(path) != record["sha256"]:
        return f"{path}: sha256 differs from {source} (damaged)"
    return None


def is_full_disk_error(err: BaseException) -> bool:
    return isinstance(err, OSError) and err.errno in FULL_DISK


def describe_write_error(path: str | Path, err: BaseException) -> str:
    """A failed write of ``path`` as one line: 'PATH: cannot write: no space left on device' for a full disk or
    quota, else the OS's reason (or the exception's type and first line)."""
    if is_full_disk_error(err):
        why = "no space left on device" + (" (disk quota exceeded)" if err.errno == errno.EDQUOT else "")
    elif isinstance(err, OSError) and str(err.strerror or err).strip():
        why = str(err.strerror or err).strip().splitlines()[0]
    else:  # torch and DeepSpeed raise RuntimeErrors
        why = f"{type(err).__name__}: {str(err).strip().splitlines()[0] if str(err).strip() else 'write failed'}"
    return f"{path}: cannot write: {why}"
