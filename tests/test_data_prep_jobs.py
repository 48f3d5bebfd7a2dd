"""pack_corpus as a job: killed and re-run, run as independent array tasks + merge, multi-worker — all give
byte-identical folders to one uninterrupted run."""

from __future__ import annotations

import os
import signal
import subprocess
import time

import pytest
from data_prep_helpers import PYTHON, REPO, build_wordpiece_tokenizer, make_texts, pack, tree, write_jsonl

from data_prep.pack_corpus import main
from minialbert.data import ShardStream


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("corpus")
    tokenizer = build_wordpiece_tokenizer(str(root / "wordpiece"))
    for i in range(6):
        write_jsonl(root / f"part{i}.jsonl", make_texts(400, seed=100 + i, min_words=50, max_words=300))
    args = ["--format", "jsonl", "--input", str(root / "part*.jsonl"), "--tokenizer", tokenizer, "--seq-len", "64",
            "--validation-fraction", "0.1", "--shard-rows", "500"]
    reference = root / "reference"
    assert main(["--no-progress", *args, "--out", str(reference)]) == 0
    return args, reference


def test_killed_job_rerun_gives_identical_shards(corpus, tmp_path):
    args, reference = corpus
    out = tmp_path / "out"
    proc = subprocess.Popen([PYTHON, "-m", "data_prep.pack_corpus", "--no-progress", *args, "--out", str(out)],
                            cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 60
    while not (out / "units" / "u00001.json").exists() and time.time() < deadline:
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (out / "manifest.json").exists(), "the job finished before it could be killed; enlarge the corpus"
    finished = {f[:6] for f in os.listdir(out / "units") if not f.startswith(".")}  # skip a killed temp record
    # Nothing that looks like a finished shard belongs to an unfinished unit, and the reader refuses the folder.
    for split in ("train", "validation"):
        assert all(f.startswith(".") or f[:6] in finished for f in os.listdir(out / split))
    with pytest.raises(ValueError, match="manifest.json: missing"):
        ShardStream([(str(out), 1.0)])
    # A kill between writing a shard and publishing its unit leaves exactly this kind of debris:
    (out / "train" / "u00005-00000.arrow").write_bytes(b"ARROW1 half written")
    (out / "train" / ".u00005-00001.arrow.tmp-999").write_bytes(b"partial")
    before = {f: os.stat(out / "train" / f).st_mtime_ns for f in os.listdir(out / "train") if f[:6] in finished}

    rerun = pack(*args, "--out", str(out))
    assert f"{len(finished)} of 6 units already finished" in rerun.stderr
    assert tree(out) == tree(reference)
    assert all(os.stat(out / "train" / f).st_mtime_ns == t for f, t in before.items())  # finished shards untouched
    assert pack(*args, "--out", str(out)).returncode == 0 and tree(out) == tree(reference)  # idempotent


def test_array_tasks_and_merge_equal_a_local_run(corpus, tmp_path):
    args, reference = corpus
    out = tmp_path / "out"
    listing = subprocess.run([PYTHON, "-m", "data_prep.pack_corpus", *args, "--out", str(out), "--list-units"],
                             cwd=REPO, capture_output=True, text=True, check=True)
    assert listing.stdout.strip() == "6" and not out.exists()
    # Three "array tasks" of two units each, as independent processes at the same time.
    tasks = [subprocess.Popen([PYTHON, "-m", "data_prep.pack_corpus", "--no-progress", *args, "--out", str(out),
                               "--unit-index", str(i), "--units-per-task", "2"], cwd=REPO, stderr=subprocess.PIPE)
             for i in range(2)]
    assert [t.wait() for t in tasks] == [0, 0]
    merge = [PYTHON, "-m", "data_prep.merge_manifests", str(out)]
    early = subprocess.run(merge, cwd=REPO, capture_output=True, text=True)
    assert early.returncode == 2 and "2 of 6 units unfinished (4, 5)" in early.stderr
    assert not (out / "manifest.json").exists()
    assert main(["--no-progress", *args, "--out", str(out), "--unit-index", "2", "--units-per-task", "2"]) == 0
    subprocess.run(merge, cwd=REPO, check=True, capture_output=True)
    subprocess.run(merge, cwd=REPO, check=True, capture_output=True)
    assert tree(out) == tree(reference)


def test_workers_give_the_same_folder(corpus, tmp_path):
    args, reference = corpus
    assert main(["--no-progress", *args, "--out", str(tmp_path / "out"), "--workers", "2"]) == 0
    assert tree(tmp_path / "out") == tree(reference)
