"""Task distillation (``finetune --distill-from``) and augmentation (``--augment``): the student learns the fine-tuned
teacher's outputs, NER words are aligned across two tokenizers, refusals are one line, copies are deterministic and
never carry a gold label. Toy tasks of finetune_toys; real tokenizers, models and WordNet."""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from finetune_toys import VOCAB, SPECIALS, write_bert, write_ner_task, write_pair_task, write_student, write_tokenizer
from transformers import AutoTokenizer, BertConfig, BertForMaskedLM, BertForTokenClassification, BertTokenizerFast

from minialbert.finetune.__main__ import build_parser, main

QUIET = ["--precision", "fp32", "--no-progress", "--batch-size", "16", "--seeds", "1"]
REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def toys(tmp_path_factory):
    root = tmp_path_factory.mktemp("distil")
    data = write_pair_task(root / "pair")
    teacher_out = root / "teacher-rte"
    bert = write_bert(root / "bert")
    assert main(["glue", "--task", "rte", "--model", str(bert), "--data", str(data), "--out", str(teacher_out),
                 "--lr", "1e-3", "--epochs", "12", *QUIET]) == 0
    summary = json.loads((teacher_out / "summary.json").read_text())
    assert summary["best"]["mean"]["accuracy"] >= 0.9  # the teacher knows the task
    # The same sentences with every gold label wrong: what the student learns then tells the two terms apart.
    flipped = root / "pair-flipped"
    flipped.mkdir()
    lines = (data / "train.tsv").read_text().splitlines()
    (flipped / "train.tsv").write_text("\n".join([lines[0], *(l[:-1] + str(1 - int(l[-1])) for l in lines[1:])]) + "\n")
    (flipped / "validation.tsv").write_text((data / "validation.tsv").read_text())
    return SimpleNamespace(root=root, data=data, flipped=flipped, teacher=teacher_out, bert=bert,
                           student=write_student(root / "student", initializer_range=0.2))


def _glue(toys, out: Path, *extra) -> dict:
    assert main(["glue", "--task", "rte", "--model", str(toys.student), "--out", str(out), *QUIET,
                 *map(str, extra)]) == 0
    return json.loads((out / "summary.json").read_text())


def test_the_student_learns_the_teachers_predictions_over_wrong_gold_labels(toys, tmp_path):
    """Every gold label is wrong: with the teacher's term alone the student is right on validation, with the gold
    term alone it is wrong, so the distillation term is computed and moves the student to the teacher."""
    common = ["--data", toys.flipped, "--distill-from", toys.teacher, "--lr", "1e-3", "--epochs", "12"]
    taught = _glue(toys, tmp_path / "w1", *common, "--distill-weight", "1")
    gold = _glue(toys, tmp_path / "w0", *common, "--distill-weight", "0")
    assert taught["best"]["mean"]["accuracy"] >= 0.85, taught["best"]
    assert gold["best"]["mean"]["accuracy"] <= 0.3, gold["best"]
    settings = taught["settings"]
    assert taught["mode"] == "full + distil"
    assert settings["distill_from"] == str(toys.teacher / "lr0.001-seed1" / "model")
    assert settings["distill_weight"] == 1.0 and settings["distill_temperature"] == 1.0
    # The teacher's outputs were computed once, for the first run; the second read them from its cache.
    assert settings["teacher_seconds"] > 0 and gold["settings"]["teacher_seconds"] == 0
    assert len(list((toys.teacher / "distill-cache").glob("outputs-*.npz"))) == 1


def test_adapters_only_learns_from_the_teacher(toys, tmp_path):
    summary = _glue(toys, tmp_path / "ad", "--data", toys.flipped, "--distill-from", toys.teacher,
                    "--distill-weight", "1", "--adapters-only", "--lr", "1e-2", "--epochs", "15")
    assert summary["mode"] == "adapters + distil"
    assert summary["best"]["mean"]["accuracy"] >= 0.8, summary["best"]
    assert (tmp_path / "ad" / "lr0.01-seed1" / "adapters").is_dir()


def test_hidden_state_term_with_the_teacher_alongside(toys, tmp_path, capsys):
    """--distill-hidden: the student's recursions are pulled toward the teacher's layers on the task's inputs."""
    from transformers import AutoModel

    from minialbert.finetune.distill_loss import hidden_term

    common = ["--data", toys.flipped, "--distill-from", toys.teacher, "--distill-weight", "1", "--lr", "1e-3",
              "--epochs", "12", "--save", "all"]
    summary = _glue(toys, tmp_path / "h", *common, "--distill-hidden", "0.3")
    _glue(toys, tmp_path / "no-h", *common)
    assert summary["settings"]["distill_hidden"] == 0.3
    assert summary["best"]["mean"]["accuracy"] >= 0.85, summary["best"]
    tokenizer = AutoTokenizer.from_pretrained(str(toys.student))
    enc = tokenizer(["the cat runs here", "a dog sleeps today"], padding=True, return_tensors="pt")
    teacher = AutoModel.from_pretrained(str(toys.teacher / "lr0.001-seed1" / "model"))

    def distance(folder):
        student = AutoModel.from_pretrained(str(folder))
        with torch.no_grad():
            return hidden_term(student(**enc, output_hidden_states=True).hidden_states,
                               teacher(**enc, output_hidden_states=True).hidden_states, enc["attention_mask"]).item()

    with_term, without = (distance(tmp_path / d / "lr0.001-seed1" / "model") for d in ("h", "no-h"))
    assert with_term < 0.75 * without, (with_term, without)  # measured 0.48 vs 0.86
    wide = write_student(tmp_path / "wide", hidden_size=48)
    capsys.readouterr()
    assert main(["glue", "--task", "rte", "--model", str(wide), "--data", str(toys.data), "--distill-from",
                 str(toys.teacher), "--distill-hidden", "1", "--out", str(tmp_path / "never"), *QUIET]) == 2
    assert capsys.readouterr().err.strip() == (
        "error: --distill-hidden 1.0: the student's hidden size 48 is not the teacher's 32")


def test_loss_mixes_teacher_and_gold_row_by_row(toys):
    """Rows with a gold label: w x KL(T) x T^2 + (1 - w) x CE; rows without (augmented copies): the KL alone."""
    import torch.nn.functional as F
    from transformers import AutoModelForSequenceClassification

    from minialbert.finetune.distill_loss import DistillSettings, distillation_loss

    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_pretrained(str(toys.bert), num_labels=2).eval()
    ids = torch.randint(5, 40, (4, 7))
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids),
             "teacher": torch.randn(4, 2) * 3, "labels": torch.tensor([0, 1, -100, -100])}
    loss = distillation_loss(model, dict(batch), DistillSettings(weight=0.3, temperature=2.0), regression=False)
    s = model(input_ids=ids, attention_mask=batch["attention_mask"]).logits
    kl = (F.softmax(batch["teacher"] / 2, -1) * (F.log_softmax(batch["teacher"] / 2, -1) - F.log_softmax(s / 2, -1))
          ).sum(-1) * 4
    ce = F.cross_entropy(s[:2], batch["labels"][:2], reduction="none")
    expected = torch.cat([0.3 * kl[:2] + 0.7 * ce, kl[2:]]).mean()
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)
    # Scores (STS-B): the squared error to w x teacher + (1 - w) x gold, or to the teacher where no gold.
    model1 = AutoModelForSequenceClassification.from_pretrained(str(toys.bert), num_labels=1,
                                                                ignore_mismatched_sizes=True).eval()
    reg = {**batch, "teacher": torch.tensor([[1.0], [2.0], [3.0], [4.0]]),
           "labels": torch.tensor([0.0, 5.0, float("nan"), float("nan")])}
    loss = distillation_loss(model1, dict(reg), DistillSettings(weight=0.3, temperature=2.0), regression=True)
    pred = model1(input_ids=ids, attention_mask=batch["attention_mask"]).logits[:, 0]
    target = torch.tensor([0.3 * 1.0, 0.3 * 2.0 + 0.7 * 5.0, 3.0, 4.0])
    assert loss.item() == pytest.approx(F.mse_loss(pred, target).item(), rel=1e-5)


# ----- NER: words aligned across two tokenizers -------------------------------------------------------------------
CHARS = sorted({c for w in VOCAB if w not in SPECIALS for c in w.removeprefix("##")})


def write_char_teacher(directory: Path, labels: list[str]) -> Path:
    """A token classifier whose tokenizer cuts every word into characters (a WordPiece over letters), its labels in
    another order than the student's."""
    vocab = SPECIALS + CHARS + [f"##{c}" for c in CHARS]
    BertTokenizerFast(vocab={w: i for i, w in enumerate(vocab)}, model_max_length=64).save_pretrained(str(directory))
    torch.manual_seed(1)
    config = BertConfig(vocab_size=len(vocab), hidden_size=32, num_hidden_layers=1, num_attention_heads=4,
                        intermediate_size=64, max_position_embeddings=64, num_labels=len(labels),
                        id2label=dict(enumerate(labels)), label2id={l: i for i, l in enumerate(labels)})
    BertForTokenClassification(config).save_pretrained(str(directory))
    return directory


def test_ner_teacher_scores_sit_on_the_students_first_piece_of_each_word(tmp_path):
    from minialbert.finetune.ner import encode_ner, for_split_words, load_ner, ner_teacher_outputs
    from minialbert.finetune.task_teacher import plan_distillation
    from minialbert.finetune.training import load_tokenizer

    data = write_ner_task(tmp_path / "toy-ner", n_train=12, n_eval=4, long_every=3)
    splits, labels = load_ner(data)
    teacher_labels = labels[::-1]
    teacher = write_char_teacher(tmp_path / "char-teacher", teacher_labels)
    args = build_parser().parse_args(["ner", "--data", str(data), "--model", str(tmp_path), "--distill-from",
                                      str(teacher), "--max-length", "64", "--window-overlap", "4", *QUIET])
    plan = plan_distillation(args, "ner", "toy-ner")
    student_tok = load_tokenizer(write_tokenizer(tmp_path / "student-tok"))
    label2id = {lab: i for i, lab in enumerate(labels)}
    sentences = splits["train"]
    features, windows = encode_ner(sentences, student_tok, label2id, 64, 4)
    targets = ner_teacher_outputs(sentences, windows, features["input_ids"], labels, plan, args)

    model = BertForTokenClassification.from_pretrained(str(teacher)).eval()
    tok = for_split_words(load_tokenizer(teacher))
    checked = 0
    for win, ids, target in zip(windows, features["input_ids"], targets):
        assert target.shape == (len(ids), len(labels))
        firsts = set(win.first_piece)
        assert all(np.isnan(target[p]).all() for p in range(len(ids)) if p not in firsts)
        words = sentences[win.sentence].words
        enc = tok(words, is_split_into_words=True, return_tensors="pt")
        if enc["input_ids"].shape[1] > 64:  # the teacher windows a long sentence its own way; a short one it reads whole
            continue
        with torch.no_grad():
            logits = model(**enc).logits[0]
        word_ids = enc.word_ids(0)
        for k, w in enumerate(range(win.start, win.end)):
            first = word_ids.index(w)
            expected = logits[first][[teacher_labels.index(lab) for lab in labels]]
            np.testing.assert_allclose(target[win.first_piece[k]], expected.numpy(), rtol=1e-4, atol=1e-5)
            checked += 1
    assert checked > 20


def test_ner_distillation_and_augmentation_end_to_end(tmp_path):
    """A teacher fine-tuned on the task; the student distilled from it with 2 copies per sentence: copies keep every
    entity word, carry no gold label (-100 everywhere) and the student still learns the entities."""
    from minialbert.finetune.augment import augment, make_augmenter
    from minialbert.finetune.ner import load_ner

    data = write_ner_task(tmp_path / "toy-ner", n_train=200, n_eval=60)
    bert = write_bert(tmp_path / "bert")
    common = ["--data", str(data), "--max-length", "32", *QUIET]
    assert main(["ner", "--model", str(bert), "--out", str(tmp_path / "teacher"), "--lr", "3e-3", "--epochs", "6",
                 *common]) == 0
    student = write_student(tmp_path / "student", initializer_range=0.2)
    assert main(["ner", "--model", str(student), "--out", str(tmp_path / "student-run"), "--lr", "3e-3",
                 "--epochs", "6", "--distill-from", str(tmp_path / "teacher"), "--augment", "2", *common]) == 0
    summary = json.loads((tmp_path / "student-run" / "summary.json").read_text())
    assert summary["mode"] == "full + distil, aug 2"
    assert summary["settings"]["augment_source"] == "wordnet"
    assert 200 < summary["settings"]["augmented_sentences"] <= 400
    assert summary["best"]["mean"]["test_f1"] >= 0.8, summary["best"]

    splits, _labels = load_ner(data)
    rows = [[s.words] for s in splits["train"]]
    keeps = [[[lab != "O" for lab in s.labels]] for s in splits["train"]]
    copies = augment(rows, keeps, 2, 1, make_augmenter("wordnet", "/usr/share/wordnet", None))
    for i, (words,) in copies:
        original = splits["train"][i]
        assert len(words) == len(original.words)
        assert all(w == o for w, o, lab in zip(words, original.words, original.labels) if lab != "O")


def test_augmented_copies_carry_no_gold_label(toys, tmp_path):
    """GLUE copies: the gold label is -100 in the features; their teacher targets are the same whatever the gold
    labels of the originals (here: all flipped)."""
    from minialbert.finetune import glue
    from minialbert.finetune.task_teacher import plan_distillation

    outputs = {}
    for name, data in (("gold", toys.data), ("flipped", toys.flipped)):
        args = build_parser().parse_args(["glue", "--task", "rte", "--model", str(toys.student), "--data", str(data),
                                          "--distill-from", str(toys.teacher), "--augment", "3", *QUIET])
        plan = plan_distillation(args, "glue", "rte")
        task = glue.TASKS["rte"]
        columns = glue.with_augmented_copies(task, glue.load_glue(task, [str(data)])["train"], plan)
        n = 400
        assert len(columns["label"]) > n and set(columns["label"][n:]) == {-100}
        outputs[name] = glue.glue_teacher_outputs(task, columns, plan, args)[n:]
    np.testing.assert_array_equal(np.concatenate(outputs["gold"]), np.concatenate(outputs["flipped"]))


def test_augmentation_is_deterministic_for_a_seed_and_cached(tmp_path):
    from minialbert.finetune.augment import augment, cached, make_augmenter

    augmenter = make_augmenter("wordnet", "/usr/share/wordnet", None)
    rows = [["the", "patient", "showed", "severe", "pain", "and", "fever"], ["a", "dog", "runs", "quickly", "home"]]
    first = augment([[r] for r in rows], None, 4, 7, augmenter)
    assert first == augment([[r] for r in rows], None, 4, 7, augmenter)
    first = json.loads(json.dumps(first))  # as the cache holds them
    assert first != augment([[r] for r in rows], None, 4, 8, augmenter)
    assert all(words != rows[i] for i, (words,) in first)
    assert all(new[j] == old for i, (new,) in first for j, old in enumerate(rows[i]) if old in ("the", "and", "a"))
    calls = []

    def make():
        calls.append(1)
        return first

    what = {"inputs": rows, "k": 4, "seed": 7}
    assert cached(tmp_path, what, make) == first and cached(tmp_path, what, make) == first
    assert len(calls) == 1


def test_the_general_teachers_mlm_head_proposes_replacements(tmp_path):
    from minialbert.finetune.augment import MlmCandidates, has_mlm_head, make_augmenter

    torch.manual_seed(0)
    config = BertConfig(vocab_size=len(VOCAB), hidden_size=32, num_hidden_layers=1, num_attention_heads=4,
                        intermediate_size=64, max_position_embeddings=64)
    BertForMaskedLM(config).save_pretrained(str(tmp_path / "mlm"))
    write_tokenizer(tmp_path / "mlm")
    BertForMaskedLM(config).bert.save_pretrained(str(tmp_path / "encoder-only"))
    write_tokenizer(tmp_path / "encoder-only")
    assert has_mlm_head(str(tmp_path / "mlm")) and not has_mlm_head(str(tmp_path / "encoder-only"))
    assert make_augmenter("auto", "/usr/share/wordnet", str(tmp_path / "mlm")).source == "mlm+wordnet"
    assert make_augmenter("auto", "/usr/share/wordnet", str(tmp_path / "encoder-only")).source == "wordnet"
    assert make_augmenter("wordnet", "/usr/share/wordnet", str(tmp_path / "mlm")).source == "wordnet"
    words = ["the", "cat", "florbitis", "sleeps"]  # florbitis: two word pieces, no MLM candidate
    candidates = MlmCandidates(str(tmp_path / "mlm"))(words)
    assert candidates[2] == ()
    assert candidates[1] and all(c in VOCAB and c != "cat" and not c.startswith("##") for c in candidates[1])


# ----- refusals --------------------------------------------------------------------------------------------------
def _error(capsys, argv) -> str:
    capsys.readouterr()
    assert main(argv) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1, lines
    return lines[0]


def test_refusals_are_one_line(toys, tmp_path, capsys):
    glue_run = ["glue", "--task", "rte", "--model", str(toys.student), "--data", str(toys.data), *QUIET,
                "--out", str(tmp_path / "never")]
    nothing = tmp_path / "empty"
    nothing.mkdir()
    assert _error(capsys, [*glue_run, "--distill-from", str(nothing)]) == (
        f"error: --distill-from {nothing}: no saved model (expected a finetune --out folder with summary.json, "
        "or a model folder with config.json and weights)")
    unsaved = tmp_path / "unsaved"
    assert main(["glue", "--task", "rte", "--model", str(toys.bert), "--data", str(toys.data), "--out", str(unsaved),
                 "--epochs", "1", "--save", "none", *QUIET]) == 0
    assert "no saved model (its best run kept no weights" in _error(capsys, [*glue_run, "--distill-from", str(unsaved)])
    mrpc = ["glue", "--task", "mrpc", *glue_run[3:]]
    assert _error(capsys, [*mrpc, "--distill-from", str(toys.teacher)]) == (
        f"error: --distill-from {toys.teacher}: the teacher was fine-tuned on glue rte; this run is glue mrpc")
    # A bare model folder with another label set: both sets named.
    other = tmp_path / "yes-no"
    from transformers import AutoModelForSequenceClassification

    AutoModelForSequenceClassification.from_pretrained(str(toys.bert), num_labels=2,
                                                       id2label={0: "yes", 1: "no"}).save_pretrained(str(other))
    write_tokenizer(other)
    assert _error(capsys, [*glue_run, "--distill-from", str(other)]) == (
        f"error: --distill-from {other}: the teacher's labels are ['yes', 'no']; "
        "this task's are ['entailment', 'not_entailment']")
    assert _error(capsys, [*glue_run, "--augment", "2"]) == (
        "error: --augment 2: needs --distill-from (only the fine-tuned teacher labels the new copies)")
    assert not (tmp_path / "never").exists()


def test_a_teacher_tokenizer_without_word_ids_is_refused_for_ner(tmp_path, capsys):
    from transformers import ByT5Tokenizer

    data = write_ner_task(tmp_path / "toy-ner", n_train=10, n_eval=4)
    teacher = write_char_teacher(tmp_path / "byte-teacher", ["O", "B-Chemical", "B-Disease", "I-Disease"])
    for f in teacher.glob("*token*"):
        f.unlink()
    ByT5Tokenizer().save_pretrained(str(teacher))
    student = write_student(tmp_path / "student")
    message = _error(capsys, ["ner", "--data", str(data), "--model", str(student), "--distill-from", str(teacher),
                              "--out", str(tmp_path / "never"), *QUIET])
    assert message == (f"error: --distill-from {teacher}: its tokenizer (ByT5Tokenizer) gives no word ids; the "
                       "student's words cannot be aligned with the teacher's pieces (a fast tokenizer is needed)")


# ----- the documented example --------------------------------------------------------------------------------------
def test_docs_worked_example_runs(tmp_path):
    """docs/finetune.md's task-distillation example, as written, on the toy NER set (paths and budget swapped)."""
    text = (REPO / "docs" / "finetune.md").read_text()
    block = re.search(r"<!-- distil-example -->\n```bash\n(.*?)```", text, re.S).group(1)
    commands = [shlex.split(c.replace("\\\n", " ")) for c in re.split(r"(?<!\\)\n", block.strip())
                if c.strip() and not c.startswith("#")]
    assert len(commands) == 3
    data = write_ner_task(tmp_path / "NCBI-disease", n_train=120, n_eval=40)
    swap = {"biobert/NCBI-disease": str(data), "teachers/biobert-base": str(write_bert(tmp_path / "bert")),
            "runs/cpu/distill/export": str(write_student(tmp_path / "student", initializer_range=0.2))}
    for argv in commands:
        assert argv[:3] == ["python", "-m", "minialbert.finetune"]
        argv = [swap.get(a, a.replace("runs/", f"{tmp_path}/runs/")) for a in argv[3:]]
        if argv[0] == "report":
            assert main(argv) == 0
            continue
        assert main([*argv, "--epochs", "2", "--precision", "fp32", "--no-progress", "--max-length", "32"]) == 0
    assert (tmp_path / "runs/ft/ncbi-student/summary.json").is_file()
