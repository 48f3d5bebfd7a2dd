"""Corpus packing: raw text → tokenised Arrow shards + manifest.json (see docs/data.md).

    python -m data_prep.pack_corpus --format jsonl --input 'wiki/*.jsonl' --tokenizer TEACHER --out shards/wiki
    python -m data_prep.merge_manifests shards/wiki
"""
