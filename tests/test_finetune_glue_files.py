"""GLUE files in their distributions' own layouts, told apart by the first line: the STS Benchmark's and GLUE's
STS-B, GLUE's header-less CoLA; the real benchmark files.

The real files are read from ``../shared/data/glue`` beside the clone (see its README); a clone without them
skips those tests with the reason, and ``MINIALBERT_REQUIRE_FIXTURES=1`` (CI) makes their absence a failure.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from finetune_toys import pair_rows, write_student

from minialbert.finetune import InputError, glue
from minialbert.finetune.__main__ import main

STSB = glue.TASKS["stsb"]
REPO = Path(__file__).resolve().parents[1]
SHARED_GLUE = REPO.parent / "shared" / "data" / "glue"
REQUIRED = os.environ.get("MINIALBERT_REQUIRE_FIXTURES") == "1"
EMM = "Europe Media Monitor (http://emm.newsbrief.eu)"
# (sentence1, sentence2, score, licence notes after sentence2): bare and unbalanced quotes are text, not quoting.
PAIRS = [
    ("A plane is taking off.", "An air plane is taking off.", "5.000", []),
    ('He said "no" to the "plan.', "He refused the plan.", "3.800", []),
    ("Senate confirms nominee", 'Senate approves "nominee"', "4", [EMM, EMM]),
    ("'Quoted' start", "Nothing alike.", "0.000", []),
]


def write_sts_benchmark(path: Path, pairs=PAIRS) -> Path:
    with path.open("w") as f:
        for i, (s1, s2, score, notes) in enumerate(pairs):
            f.write("\t".join(["main-news", "headlines", "2016", f"{i + 1:04d}", score, s1, s2, *notes]) + "\n")
    return path


def write_glue_stsb(path: Path, pairs=PAIRS) -> Path:
    """GLUE's STS-B/{train,dev}.tsv: a header, ten columns, the label named ``score``."""
    with path.open("w") as f:
        f.write("index\tgenre\tfilename\tyear\told_index\tsource1\tsource2\tsentence1\tsentence2\tscore\n")
        for i, (s1, s2, score, _) in enumerate(pairs):
            fields = [str(i), "main-news", "headlines", "2016", f"{i:04d}", "none", "none", s1, s2, score]
            f.write("\t".join(fields) + "\n")
    return path


EXPECTED = {"sentence1": [p[0] for p in PAIRS], "sentence2": [p[1] for p in PAIRS],
            "label": [float(p[2]) for p in PAIRS]}


def test_both_layouts_read_the_same_rows(tmp_path):
    bench, gl, hf = tmp_path / "bench", tmp_path / "glue", tmp_path / "hf"
    for folder in (bench, gl, hf):
        folder.mkdir()
    write_sts_benchmark(bench / "sts-train.tsv")
    write_sts_benchmark(bench / "sts-dev.csv")  # the benchmark's own archive names them .csv, tab-separated
    write_sts_benchmark(bench / "sts-test.tsv")
    write_glue_stsb(gl / "train.tsv")
    write_glue_stsb(gl / "dev.tsv")
    for split in ("train", "validation"):
        with (hf / f"{split}.tsv").open("w") as f:
            f.write("sentence1\tsentence2\tlabel\n" + "".join(f"{a}\t{b}\t{s}\n" for a, b, s, _ in PAIRS))
    for folder in (bench, gl, hf):
        data = glue.load_glue(STSB, [str(folder)])
        assert data == {"train": EXPECTED, "validation": EXPECTED}, folder
    assert glue.read_split(STSB, bench / "sts-test.tsv") == EXPECTED


@pytest.mark.parametrize("content, message", [
    ("text_a\ttext_b\tscore\na plane\tan air plane\t5\n",
     "neither the STS Benchmark's layout (genre, file, year, id, label, sentence1, sentence2; no header) nor a header "
     "naming sentence1, sentence2 and label or score; line 1 is 'text_a\\ttext_b\\tscore'"),
    ("main-news\tx\t2016\t1\tfour\ta\tb\n", "neither the STS Benchmark's layout"),
    ("a plane\tan air plane\n", "neither the STS Benchmark's layout"),
    ("main-news\tx\t2016\t1\t4\ta\tb\nmain-news\tx\t2016\t2\t3\tonly one sentence\n",
     "train.tsv:2: expected 7 tab-separated fields (genre, file, year, id, label, sentence1, sentence2; "
     "the STS Benchmark's layout), got 6"),
    ("main-news\tx\t2016\t1\t4\ta\tb\nmain-news\tx\t2016\t2\thigh\ta\tb\n",
     "train.tsv:2: label 'high' is not valid for stsb (expected a number)"),
])
def test_a_file_in_neither_layout_is_one_line_naming_it(tmp_path, content, message):
    (tmp_path / "train.tsv").write_text(content)
    write_sts_benchmark(tmp_path / "dev.tsv")
    with pytest.raises(InputError) as e:
        glue.load_glue(STSB, [str(tmp_path)])
    assert str(e.value).startswith(str(tmp_path / "train.tsv")) and message in str(e.value)
    assert "\n" not in str(e.value)


def test_fine_tuning_on_the_benchmark_layout_reports_pearson_and_spearman(tmp_path):
    rows = pair_rows(40, 1)
    pairs = [(r["sentence1"], r["sentence2"], f"{5.0 * (1 - r['label']):.3f}", []) for r in rows]
    (tmp_path / "stsb").mkdir()
    write_sts_benchmark(tmp_path / "stsb" / "sts-train.tsv", pairs)
    write_sts_benchmark(tmp_path / "stsb" / "sts-dev.tsv", pairs[:16])
    student = write_student(tmp_path / "student", intermediate_size=64)
    assert main(["glue", "--task", "stsb", "--model", str(student), "--data", str(tmp_path / "stsb"), "--epochs", "1",
                 "--precision", "fp32", "--no-progress", "--batch-size", "16", "--save", "none", "--out",
                 str(tmp_path / "out")]) == 0
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert set(summary["best"]["mean"]) == {"pearson", "spearman"}
    assert summary["settings"]["eval_examples"] == {"validation": 16}


def _shared(task: str, first_file: str) -> Path:
    if not (SHARED_GLUE / task / first_file).is_file():
        reason = f"no {SHARED_GLUE / task / first_file} (the shared data folder beside the clone)"
        if REQUIRED:
            pytest.fail(reason + " and MINIALBERT_REQUIRE_FIXTURES=1")
        pytest.skip(reason)
    return SHARED_GLUE / task


def test_the_real_sts_benchmark_files_lose_no_row():
    folder = _shared("stsb", "sts-train.tsv")
    data = glue.load_glue(STSB, [str(folder)])
    test = glue.read_split(STSB, folder / "sts-test.tsv")
    splits = {"train": data["train"], "validation": data["validation"], "test": test}
    # The counts of ../shared/data/README.md and the benchmark's readme.txt: 5,749 / 1,500 / 1,379 pairs.
    assert {s: len(c["label"]) for s, c in splits.items()} == {"train": 5749, "validation": 1500, "test": 1379}
    for split, name in (("train", "sts-train.tsv"), ("validation", "sts-dev.tsv"), ("test", "sts-test.tsv")):
        lines = (folder / name).read_text(encoding="utf-8").split("\n")
        assert lines[-1] == "" and len(lines) - 1 == len(splits[split]["label"])  # one row per line, none lost
        fields = [line.split("\t") for line in lines[:-1]]
        assert splits[split]["sentence1"] == [f[5] for f in fields]  # quotes kept as text
        assert splits[split]["sentence2"] == [f[6] for f in fields]  # licence notes after it not glued on
        assert splits[split]["label"] == [float(f[4]) for f in fields]
    quoted = sum('"' in s for c in splits.values() for s in c["sentence1"] + c["sentence2"])
    assert quoted > 100 and all(0.0 <= x <= 5.0 for c in splits.values() for x in c["label"])


def test_cola_in_glue_layout_and_with_a_header_read_the_same(tmp_path):
    rows = [("gj04", "1", "", "The sailors rode the breeze clear of the rocks."),
            ("gj04", "0", "*", 'They said "hello" to the the.'),
            ("cj99", "0", "?*", "Him left.")]
    (tmp_path / "glue").mkdir()
    (tmp_path / "hf").mkdir()
    for split in ("train", "dev"):
        (tmp_path / "glue" / f"{split}.tsv").write_text("\n".join("\t".join(r) for r in rows))  # no final newline
        (tmp_path / "hf" / f"{split}.tsv").write_text("sentence\tlabel\n" + "".join(f"{r[3]}\t{r[1]}\n" for r in rows))
    expected = {"sentence": [r[3] for r in rows], "label": [1, 0, 0]}
    for folder in ("glue", "hf"):
        assert glue.load_glue(glue.TASKS["cola"], [str(tmp_path / folder)]) == {"train": expected,
                                                                                "validation": expected}
    (tmp_path / "glue" / "dev.tsv").write_text("gj04\t1\tThe sailors rode.\n")
    with pytest.raises(InputError, match=r"dev.tsv: neither GLUE's CoLA layout \(source, label, original_label, "
                                         r"sentence; no header\) nor a header naming sentence and label; line 1"):
        glue.load_glue(glue.TASKS["cola"], [str(tmp_path / "glue")])


def test_the_real_cola_and_rte_files_lose_no_row():
    cola, rte = _shared("cola", "train.tsv"), _shared("rte", "train.tsv")
    data = glue.load_glue(glue.TASKS["cola"], [str(cola)])
    # ../shared/data/README.md: CoLA 8,551 / 1,043 sentences (dev.tsv has no final newline), RTE 2,490 / 277 pairs.
    assert {s: len(c["label"]) for s, c in data.items()} == {"train": 8551, "validation": 1043}
    for split, name in (("train", "train.tsv"), ("validation", "dev.tsv")):
        fields = [line.split("\t") for line in (cola / name).read_text(encoding="utf-8").splitlines()]
        assert data[split]["sentence"] == [f[3] for f in fields] and data[split]["label"] == [int(f[1]) for f in fields]
    data = glue.load_glue(glue.TASKS["rte"], [str(rte)])
    assert {s: len(c["label"]) for s, c in data.items()} == {"train": 2490, "validation": 277}
