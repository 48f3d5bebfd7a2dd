"""Data prep onto a really full disk (a small tmpfs): one line with the path and "no space left on device",
exit 2, no temporaries, finished work intact, and the same command finishes the job once there is room."""

from __future__ import annotations

import json
import os
import subprocess

import pytest
from data_prep_helpers import build_wordpiece_tokenizer, make_texts, tree, write_jsonl

from data_prep.merge_manifests import main as merge_main
from data_prep.pack_corpus import main

# Four units of ~0.3 MB of shards each (measured): a 1 MiB disk fills while the fourth is written.
SETTINGS = ["--seq-len", "64", "--stride", "16", "--max-windows", "0", "--validation-fraction", "0.1"]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("corpus")
    tokenizer = build_wordpiece_tokenizer(str(root / "wordpiece"))
    for part in range(4):
        write_jsonl(root / f"part{part}.jsonl", make_texts(90, seed=part, min_words=150, max_words=250))
    reference = root / "reference"
    assert pack(root, tokenizer, reference) == 0
    return root, tokenizer, reference


def pack(root, tokenizer, out, *extra) -> int:
    return main(["--no-progress", "--format", "jsonl", "--input", str(root / "part*.jsonl"), "--tokenizer",
                 tokenizer, "--out", str(out), *SETTINGS, *extra])


@pytest.fixture
def small_disk(tmp_path):
    """A 1 MiB tmpfs, unmounted afterwards; skipped where mounting is not permitted (not root, no CAP_SYS_ADMIN)."""
    disk = tmp_path / "disk"
    disk.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(disk)], capture_output=True,
                          text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip() or done.returncode}")
    try:
        yield disk
    finally:  # lazily when a file is still open (a failing test's traceback may hold one)
        if subprocess.run(["umount", str(disk)], capture_output=True).returncode != 0:
            subprocess.run(["umount", "--lazy", str(disk)], check=True)


def resize(disk, size: str) -> None:
    subprocess.run(["mount", "-o", f"remount,size={size}", str(disk)], check=True)


def hidden_files(folder) -> list[str]:
    return [name for name in tree(folder) if any(part.startswith(".") for part in name.split(os.sep))]


def one_error_line(capsys) -> str:
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(err) == 1 and err[0].startswith("error: "), err
    return err[0]


@pytest.mark.parametrize("workers", [1, 2])
def test_packing_onto_a_full_disk_fails_cleanly_and_the_same_command_finishes(corpus, small_disk, capsys, workers):
    root, tokenizer, reference = corpus
    out = small_disk / "out"
    capsys.readouterr()
    assert pack(root, tokenizer, out, "--workers", str(workers)) == 2
    line = one_error_line(capsys)
    assert line.startswith(f"error: {out}/") and line.endswith(": cannot write: no space left on device"), line
    assert hidden_files(out) == [] and not (out / "manifest.json").exists()
    # Finished units are intact (their shards are the reference's bytes); unfinished ones left nothing behind.
    files = tree(out)
    finished = {os.path.basename(name)[:6] for name in files if name.startswith("units/")}  # {"u00000", ...}
    assert len(finished) < 4 and (workers > 1 or len(finished) == 3), finished
    shards = {name: digest for name, digest in tree(reference).items() if name.endswith(".arrow")}
    assert {name: digest for name, digest in files.items() if name.endswith(".arrow")} == \
           {name: digest for name, digest in shards.items() if os.path.basename(name)[:6] in finished}

    resize(small_disk, "16m")
    assert pack(root, tokenizer, out, "--workers", str(workers)) == 0
    assert tree(out) == tree(reference)  # byte for byte what an uninterrupted run writes


def test_merging_onto_a_full_disk_keeps_the_old_manifest(corpus, small_disk, capsys):
    root, tokenizer, _ = corpus
    resize(small_disk, "4m")
    out = small_disk / "out"
    assert pack(root, tokenizer, out) == 0
    before = (out / "manifest.json").read_bytes()
    with open(small_disk / "filler", "wb", buffering=0) as f:  # take every free block
        try:
            while True:
                f.write(b"\0" * 4096)
        except OSError:
            pass
    capsys.readouterr()
    assert merge_main([str(out)]) == 2
    assert one_error_line(capsys) == f"error: {out}/manifest.json: cannot write: no space left on device"
    assert (out / "manifest.json").read_bytes() == before and json.loads(before)["totals"]["units"] == 4
    assert hidden_files(out) == []
