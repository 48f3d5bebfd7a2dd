"""Builders for the distillation tests: a tiny real BERT teacher with its tokenizer, packed shards, and a
function that runs ``minialbert/distill.py`` with 2 CPU ranks under DeepSpeed's real launchers (its per-node
launcher, or the ``deepspeed`` command the README shows)."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
from pathlib import Path

from minialbert.dist import free_port
from minialbert.run_dir import RunDir

from data_prep_helpers import build_wordpiece_tokenizer, make_texts

REPO = Path(__file__).resolve().parents[1]
VENV_BIN = Path(sys.executable).parent


def build_teacher(out: Path, layers: int = 4, hidden: int = 32, mlm_head: bool = True, seed: int = 0) -> Path:
    """A random-weight BertForMaskedLM (or BertModel) and its WordPiece tokenizer in one folder."""
    import torch
    from transformers import AutoTokenizer, BertConfig, BertForMaskedLM, BertModel

    build_wordpiece_tokenizer(str(out))
    vocab = len(AutoTokenizer.from_pretrained(out))
    torch.manual_seed(seed)
    config = BertConfig(vocab_size=vocab, hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=4,
                        intermediate_size=2 * hidden, max_position_embeddings=64, hidden_dropout_prob=0.0,
                        attention_probs_dropout_prob=0.0)
    (BertForMaskedLM if mlm_head else BertModel)(config).save_pretrained(out)
    return out


def make_sentence_transformer(teacher: Path, pooling: str = "mean") -> Path:
    """Make a teacher folder a sentence-transformers model (Transformer, Pooling, Normalize) with the JSON files
    sentence-transformers itself writes; the folder's weights and tokenizer stay as they are."""
    import shutil
    import tempfile

    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.modules import Normalize, Pooling, Transformer

    hidden = json.loads((teacher / "config.json").read_text())["hidden_size"]
    model = SentenceTransformer(modules=[Transformer(str(teacher)), Pooling(hidden, pooling), Normalize()],
                                device="cpu")
    with tempfile.TemporaryDirectory() as tmp:
        model.save(tmp, create_model_card=False)
        for name in ("modules.json", "sentence_bert_config.json", "config_sentence_transformers.json"):
            shutil.copyfile(Path(tmp) / name, teacher / name)
        for name in ("1_Pooling", "2_Normalize"):
            shutil.copytree(Path(tmp) / name, teacher / name, dirs_exist_ok=True)
    return teacher


def pack_shards(tokenizer: Path, out: Path, n_docs: int = 120, seed: int = 0, seq_len: int = 32) -> Path:
    corpus = out.parent / f"{out.name}_corpus.txt"
    corpus.write_text("\n\n".join(make_texts(n_docs, seed=seed, max_words=60)) + "\n")
    done = subprocess.run(
        [sys.executable, "-m", "data_prep.pack_corpus", "--format", "text", "--input", str(corpus),
         "--tokenizer", str(tokenizer), "--out", str(out), "--seq-len", str(seq_len), "--max-windows", "2",
         "--validation-fraction", "0.1", "--no-progress"],
        capture_output=True, text=True, cwd=REPO, timeout=300,
    )
    assert done.returncode == 0, done.stderr
    return out


def distill_env() -> dict:
    env = {**os.environ, "DS_ACCELERATOR": "cpu", "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1",
           "TOKENIZERS_PARALLELISM": "false", "PATH": f"{VENV_BIN}{os.pathsep}{os.environ.get('PATH', '')}"}
    return env


def distill_command(run_dir: Path, teacher: Path, shards: list[Path], *extra: str, ranks: int = 2,
                    ds_config: str = "configs/ds/zero2.json", config: str = "configs/distill/tiny.yaml",
                    launcher: str = "node") -> list[str]:
    """``launcher="deepspeed"``: the README's command. ``"node"``: DeepSpeed's per-node launcher, which that command
    runs once it has found the node's devices: the same ranks, environment and exit codes, without the ~3 s of
    the ``deepspeed`` command's own start (most tests run many short runs)."""
    sources = json.dumps([{"path": str(s), "weight": 1.0} for s in shards])
    args = ["minialbert/distill.py", "--deepspeed", ds_config, "--config", config, "--run-dir", str(run_dir),
            f"teacher.path={teacher}", f"data.sources={sources}", *extra]
    if launcher == "deepspeed":
        return [str(VENV_BIN / "deepspeed"), "--num_gpus", str(ranks), "--master_port", str(free_port()), *args]
    world_info = base64.urlsafe_b64encode(json.dumps({"localhost": list(range(ranks))}).encode()).decode()
    return [sys.executable, "-u", "-m", "deepspeed.launcher.launch", f"--world_info={world_info}",
            "--master_addr=127.0.0.1", f"--master_port={free_port()}", *args]


def run_distill(run_dir: Path, teacher: Path, shards: list[Path], *extra: str, ranks: int = 2,
                timeout: int = 600, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(distill_command(run_dir, teacher, shards, *extra, ranks=ranks, **kw), cwd=REPO,
                          env=distill_env(), capture_output=True, text=True, timeout=timeout)


def read_metrics(run_dir: Path) -> list[dict]:
    path = RunDir(run_dir).metrics
    assert path.is_file(), f"{path}: the run wrote no metrics"
    return RunDir(run_dir).read_metrics()
