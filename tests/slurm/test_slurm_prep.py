"""Data prep fanned out on Slurm — ``slurm/prep.sh`` and ``launchers.submit_prep`` — gives byte-identical
shards to one local ``pack_corpus`` run."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from data_prep_helpers import build_wordpiece_tokenizer, make_texts, tree, write_jsonl

from data_prep.pack_corpus import main as pack_corpus
from slurm_jobs import REPO, array_states, job_state, wait_finished

UNITS = 2


@pytest.fixture(scope="module")
def prep_corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("prep")
    tokenizer = build_wordpiece_tokenizer(str(root / "wordpiece"))
    for i in range(UNITS):
        write_jsonl(root / f"part{i}.jsonl", make_texts(100, seed=10 + i, min_words=20, max_words=200))
    args = ["--format", "jsonl", "--input", str(root / "part*.jsonl"), "--tokenizer", tokenizer, "--seq-len", "64",
            "--validation-fraction", "0.1", "--shard-rows", "300"]
    reference = root / "reference"
    assert pack_corpus(["--no-progress", *args, "--out", str(reference)]) == 0
    return args, reference


def run(cmd: list[str], cwd, timeout: float = 300) -> subprocess.CompletedProcess:
    env = {**os.environ, "MINIALBERT_PYTHON": sys.executable}
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


@pytest.mark.slurm
@pytest.mark.multinode
def test_prep_sh_array_tasks_on_both_nodes_give_the_local_shards(slurm_cluster, prep_corpus, tmp_path):
    args, reference = prep_corpus
    out = tmp_path / "out"
    # 3 of a node's 4 CPUs per task: the two tasks cannot share a node, so they run on node1 and node2.
    done = run(["bash", str(REPO / "slurm/prep.sh"), "--cpus-per-task=3", "--", *args, "--out", str(out)],
               cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    array_id, merge_id = done.stdout.split()
    merge_log = tmp_path / f"minialbert-prep-merge-{merge_id}.out"
    assert wait_finished(merge_id, timeout=120, output=merge_log) == "COMPLETED"
    assert array_states(array_id, UNITS) == ["COMPLETED"] * UNITS  # one task per unit
    nodes = subprocess.run(["sacct", "-n", "-X", "-P", "-o", "NodeList", "-j", array_id], capture_output=True,
                           text=True).stdout.split()
    assert sorted(nodes) == ["node1", "node2"]
    assert tree(out) == tree(reference)


@pytest.mark.slurm
def test_submit_prep_map_array_then_merge_gives_the_local_shards(slurm_cluster, prep_corpus, tmp_path):
    args, reference = prep_corpus
    out = tmp_path / "out"
    done = run([sys.executable, "-m", "launchers.submit_prep", "--folder", str(tmp_path / "logs"), "--wait", "--",
                *args, "--out", str(out)], cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    array_id, merge_id = done.stdout.split()
    assert array_states(array_id, UNITS) == ["COMPLETED"] * UNITS
    assert job_state(merge_id) == "COMPLETED"
    assert tree(out) == tree(reference)


def test_submit_prep_local_cluster_gives_the_local_shards(prep_corpus, tmp_path):
    args, reference = prep_corpus
    out = tmp_path / "out"
    done = run([sys.executable, "-m", "launchers.submit_prep", "--cluster", "local", "--folder",
                str(tmp_path / "logs"), "--", *args, "--out", str(out), "--units-per-task", "2"], cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert tree(out) == tree(reference)


def test_prep_sh_without_out_fails_before_submitting(prep_corpus, tmp_path):
    args, _ = prep_corpus
    done = run(["bash", str(REPO / "slurm/prep.sh"), "--", *args], cwd=tmp_path)
    assert done.returncode == 2
    assert done.stderr.strip() == "prep.sh: the pack_corpus arguments need --out DIR"
    assert done.stdout == ""
