"""2-rank ZeRO-2 runs (CPU, gloo) with a RoBERTa teacher (byte-level BPE) and an XLM-R teacher (SentencePiece
trained on real text), each stopped by SIGTERM after step 2 and resumed once to the end.

Exact resume itself is checked bit for bit on the BERT teacher (tests/test_resume.py); nothing of the teacher is
in a checkpoint, so here the point is that these families train, checkpoint, resume and export on 2 ranks.
"""

from __future__ import annotations

import signal

import pytest
from transformers import AutoModelForMaskedLM

from distill_helpers import read_metrics
from family_teachers import build_family_teacher, pack_in_process
from run_watch import EVERY_2, finish, latest, log_tail, rank_processes, start_distill, wait_for_step

pytestmark = pytest.mark.slow
MAX_STEPS = "4"


@pytest.mark.parametrize("family", ["roberta", "xlm-roberta"])
def test_two_rank_zero2_run_is_stopped_resumed_once_and_exported(tmp_path, family):
    teacher = build_family_teacher(family, tmp_path / "teacher")
    world = (tmp_path, teacher, [pack_in_process(teacher, tmp_path / "shards")])
    run_dir = tmp_path / "run"
    proc = start_distill(run_dir, world, EVERY_2, "--max-steps", MAX_STEPS)
    try:
        wait_for_step(proc, run_dir, 2)
        for rank in rank_processes(proc):  # Slurm's scancel: every rank finishes its step, saves, exits 75
            rank.send_signal(signal.SIGTERM)
    finally:
        code = finish(proc)
    assert code != 0, log_tail(run_dir)  # stopped before the end (the launcher passes the ranks' 75 on)
    stopped_at = int(latest(run_dir).split("_")[1])
    assert 2 <= stopped_at < int(MAX_STEPS), log_tail(run_dir)

    assert finish(start_distill(run_dir, world, EVERY_2, "--max-steps", MAX_STEPS)) == 0, log_tail(run_dir)
    log = log_tail(run_dir, 20000)
    assert f"resumed from {run_dir / 'checkpoints' / f'step_{stopped_at:08d}'} at step {stopped_at}" in log
    assert f"model_type={family!r}" in log
    steps = [r["step"] for r in read_metrics(run_dir)]
    assert steps == list(range(1, int(MAX_STEPS) + 1)), steps  # each step once: the resumed run went on after it
    assert latest(run_dir) == f"step_{MAX_STEPS.zfill(8)}"
    model = AutoModelForMaskedLM.from_pretrained(run_dir / "export")
    assert model.config.vocab_size == AutoModelForMaskedLM.from_pretrained(teacher).config.vocab_size
