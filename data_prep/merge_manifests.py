"""Merge the per-unit records of a packed folder into DIR/manifest.json (idempotent).

    python -m data_prep.merge_manifests shards/wiki
Run it after all array tasks of `python -m data_prep.pack_corpus ... --unit-index I` have finished; it fails
(exit 2) naming the unfinished units otherwise.
"""

from __future__ import annotations

import argparse
import sys

from data_prep.shards import merge_manifests, warning_lines
from data_prep.units import DataPrepError


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m data_prep.merge_manifests", description=__doc__.splitlines()[0])
    p.add_argument("out", help="the --out folder of pack_corpus")
    args = p.parse_args(argv)
    try:
        manifest = merge_manifests(args.out)
    except DataPrepError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    t = manifest["totals"]
    print(f"{args.out}/manifest.json: {t['units']} units, {t['train_rows']} train + {t['validation_rows']} "
          f"validation rows", file=sys.stderr)
    for line in warning_lines(manifest):
        print(line, file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
