"""Fine-tuning and evaluation of students and baselines: GLUE and biomedical NER, full or adapter-only.

Commands (see docs/finetune.md)::

    python -m minialbert.finetune glue --task rte --model runs/student/export --lr 1e-4 3e-4 --seeds 1 2 3
    python -m minialbert.finetune glue --task mrpc --model DIR --data glue_data/mrpc --adapters-only
    python -m minialbert.finetune ner --data biobert/NCBI-disease --model DIR --epochs 5
    python -m minialbert.finetune report runs/finetune

Python API: ``minialbert.finetune.__main__.main(argv) -> exit code``; ``glue.run_glue(args)`` and
``ner.run_ner(args)`` return the sweep summary (the dict written to ``summary.json``).
"""


class InputError(ValueError):
    """Bad user input (data, flags, model folder): reported as one line ``error: ...`` with exit status 2."""
