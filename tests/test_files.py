"""data_prep.files: a failed write leaves the old file or folder as it was and nothing hidden behind; records
catch a changed byte."""

from __future__ import annotations

import errno
import os

import pytest

from data_prep import files


def leftovers(folder) -> list[str]:
    return sorted(name for name in os.listdir(folder) if name.startswith("."))


def test_a_writer_that_fails_midway_leaves_the_old_file_and_no_temporary(tmp_path):
    path = tmp_path / "state.json"
    path.write_text("old\n")
    with pytest.raises(ValueError, match="midway"):
        with files.atomic_write(path) as tmp:
            with open(tmp, "w") as f:
                f.write("half of the new")
            raise ValueError("midway")
    assert path.read_text() == "old\n" and leftovers(tmp_path) == []


def test_a_finished_write_replaces_the_file(tmp_path):
    path = tmp_path / "state.json"
    path.write_text("old\n")
    files.write_json_atomic(path, {"b": 1, "a": [2]}, indent=None, sort_keys=True)
    assert path.read_text() == '{"a": [2], "b": 1}\n' and leftovers(tmp_path) == []
    files.write_text_atomic(str(tmp_path / "new.txt"), "é\n")  # str paths too; a new file
    assert (tmp_path / "new.txt").read_text(encoding="utf-8") == "é\n"


def test_a_folder_that_fails_midway_leaves_the_old_one_and_no_temporary(tmp_path):
    out = tmp_path / "export"
    out.mkdir()
    (out / "model.bin").write_bytes(b"old")
    with pytest.raises(OSError, match="disk"):
        with files.atomic_folder(out, replace=True) as tmp:
            (tmp / "model.bin").write_bytes(b"new")
            raise OSError(errno.ENOSPC, "disk full")
    assert os.listdir(out) == ["model.bin"] and (out / "model.bin").read_bytes() == b"old"
    assert leftovers(tmp_path) == []


def test_a_folder_replaces_the_old_one_only_when_asked(tmp_path):
    out = tmp_path / "export"
    out.mkdir()
    (out / "old.txt").write_text("old")
    with pytest.raises(FileExistsError, match="exists and is not empty"):
        with files.atomic_folder(out) as tmp:
            (tmp / "new.txt").write_text("new")
    assert os.listdir(out) == ["old.txt"] and leftovers(tmp_path) == []
    with files.atomic_folder(out, replace=True) as tmp:
        (tmp / "sub").mkdir()
        (tmp / "sub" / "new.txt").write_text("new")
    assert sorted(str(p.relative_to(out)) for p in out.rglob("*")) == ["sub", "sub/new.txt"]
    assert leftovers(tmp_path) == []
    with files.atomic_folder(tmp_path / "a" / "fresh") as tmp:  # missing parents are made
        (tmp / "x").write_text("x")
    assert (tmp_path / "a" / "fresh" / "x").read_text() == "x"


def test_a_record_catches_a_changed_byte_and_a_cut(tmp_path):
    path = tmp_path / "shard.arrow"
    path.write_bytes(b"0123456789")
    record = files.file_record(path)
    assert record["size"] == 10 and len(record["sha256"]) == 64
    assert files.check_record(path, record) is None
    path.write_bytes(b"0123456780")  # same size, one byte changed
    assert files.check_record(path, record, source="meta.json") == f"{path}: sha256 differs from meta.json (damaged)"
    path.write_bytes(b"01234")
    manifest_entry = {"bytes": record["size"], "sha256": record["sha256"]}  # data manifests name the size "bytes"
    assert files.check_record(path, manifest_entry, size_key="bytes") == \
        f"{path}: 5 bytes, expected 10 (truncated or overwritten)"
    path.unlink()
    assert files.check_record(path, record) == f"{path}: missing"


def test_a_write_error_is_one_line_naming_the_path(tmp_path):
    path = tmp_path / "x"
    assert files.describe_write_error(path, OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))) == \
        f"{path}: cannot write: no space left on device"
    assert files.describe_write_error(path, OSError(errno.EACCES, "Permission denied")) == \
        f"{path}: cannot write: Permission denied"
    assert files.describe_write_error(path, RuntimeError("unexpected pos 64\nmore")) == \
        f"{path}: cannot write: RuntimeError: unexpected pos 64"
