"""train.compile (minialbert/compiled.py): the compiled loss terms compute eager's losses and gradients, a
compiler failure leaves the run eager with one line, and ``auto`` decides as documented.

Tiny shapes (teacher 4 x 32, student 2 recursions x 32, vocab 100), dropout off so that both paths draw the same.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))

from distill_recipes import FastRecipe, build_models, make_batch  # noqa: E402

from minialbert.compiled import compile_wanted, compiled_kernels, loss_kernels  # noqa: E402
from minialbert.losses import EAGER  # noqa: E402


def tiny_recipe(tiny, dtype):
    from transformers import BertConfig

    teacher_cfg = BertConfig(vocab_size=100, hidden_size=32, num_hidden_layers=4, num_attention_heads=4,
                             intermediate_size=64, max_position_embeddings=64)
    teacher, student = build_models(teacher_cfg, tiny(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0),
                                    seed=3)
    return FastRecipe.build(teacher, student, dtype)


def kernels_of(dtype, **kw):
    args = dict(setting="on", precision="bf16" if dtype == torch.bfloat16 else "fp32", dtype=dtype,
                device=torch.device("cpu"), micro=2, seq_len=16, hidden=32, heads=4, vocab=100, logits=(True, True),
                temperature=2.0)
    return loss_kernels(**{**args, **kw})


@pytest.mark.parametrize("dtype, tol", [(torch.float32, 1e-5), (torch.bfloat16, 1e-2)])
def test_compiled_loss_terms_have_eager_values_and_gradients(tiny, dtype, tol):
    from minialbert.step import distillation_forward

    kernels = kernels_of(dtype)
    assert kernels is not EAGER
    recipe = tiny_recipe(tiny, dtype)
    loss = recipe.loss_config
    loss.temperature = 2.0
    results = []
    for k in (EAGER, kernels):
        for batch_seed in (4, 5):  # two batches: the masked-position count changes (no recompile, no error)
            batch = make_batch(100, batch=2, seq=16, seed=batch_seed, padded_rows=1)
            recipe.student.zero_grad(set_to_none=True)
            terms = distillation_forward(recipe.student, recipe.teacher, batch, loss, kernels=k)
            terms.total.backward()
            grads = {n: p.grad.float().clone() for n, p in recipe.student.named_parameters() if p.grad is not None}
            results.append((terms, grads))
    for (want, want_grads), (got, got_grads) in zip(results[:2], results[2:]):
        for name in ("total", "mlm", "attention", "hidden", "output"):
            torch.testing.assert_close(getattr(got, name).float(), getattr(want, name).float(), rtol=tol, atol=tol,
                                       msg=name)
        assert want.mlm > 0 and want.output > 0 and want.hidden > 0 and want.attention > 0
        assert want_grads.keys() == got_grads.keys() and len(want_grads) > 20
        for name, g in want_grads.items():
            # (+ 1e-8: the key bias's gradient is zero up to rounding; softmax ignores a shift of every score)
            assert (got_grads[name] - g).abs().max().item() <= tol * g.abs().max().item() + 1e-8, name


def no_cxx():
    """A real failure: Inductor's C++ compiler is one that does not exist (a machine without g++), and no kernel
    built earlier is reused. Inductor's own ``patch``: a monkeypatch's undo leaves its config without the key."""
    import torch._inductor.config as inductor_config

    return inductor_config.patch({"cpp.cxx": ("/nonexistent/g++",), "fx_graph_cache": False})


def test_a_compiler_failure_leaves_the_run_eager_with_one_line(capsys):
    torch._dynamo.reset()
    state = torch.random.get_rng_state()
    try:
        with no_cxx():
            kernels = kernels_of(torch.float32, vocab=101)
    finally:
        torch._dynamo.reset()
    assert kernels is EAGER
    out = capsys.readouterr()
    err = out.err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("train.compile: compiling failed (") and "continues eager" in err[0]
    assert "train.compile" not in out.out
    assert torch.equal(torch.random.get_rng_state(), state)  # the probe drew nothing from the run's stream


@pytest.mark.parametrize("setting, precision, native, want", [
    ("auto", "bf16", True, True), ("auto", "bf16", False, False), ("auto", "fp32", True, False),
    ("auto", "fp16", True, False), ("on", "fp32", False, True), ("off", "bf16", True, False),
])
def test_auto_compiles_native_bf16_runs_and_on_off_are_obeyed(setting, precision, native, want):
    wanted, why = compile_wanted(setting, precision, native)
    assert wanted is want and why
    assert ("no native bf16" in why) == (setting == "auto" and precision == "bf16" and not native)


@pytest.mark.parametrize("written, read", [("on", "on"), ("off", "off"), ("auto", "auto"), ("'on'", "on"),
                                           ("true", "on")])
def test_yaml_on_and_off_are_the_settings_not_booleans(written, read, tmp_path):
    """YAML reads a bare on / off as a boolean: `train.compile: on` in a file and `train.compile=on` on the
    command line still mean 'on'; anything else is refused naming the field."""
    from minialbert.config import ConfigError, load_run_config

    assert load_run_config("configs/distill/tiny.yaml", [f"train.compile={written}"]).train.compile == read
    config = tmp_path / "run.yaml"
    config.write_text(f"train:\n  compile: {written}\n")
    assert load_run_config(str(config), []).train.compile == read
    with pytest.raises(ConfigError, match="train.compile='sometimes': expected 'auto', 'on' or 'off'"):
        load_run_config("configs/distill/tiny.yaml", ["train.compile=sometimes"])


# ----- the frozen teacher -------------------------------------------------------------------------------------------
def tiny_teacher(dtype=torch.float32):
    from transformers import BertConfig, BertForMaskedLM

    from minialbert.teacher import Teacher

    torch.manual_seed(7)
    hf = BertForMaskedLM(BertConfig(vocab_size=100, hidden_size=32, num_hidden_layers=4, num_attention_heads=4,
                                    intermediate_size=64, max_position_embeddings=64))
    return Teacher(hf, [2, 4]).to(torch.device("cpu"), dtype)


def teacher_outputs(teacher, batch, positions):
    return teacher(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"], logits_positions=positions,
                   output_attentions=False, output_query_key=True)


def test_the_compiled_frozen_teacher_computes_the_eager_teachers_outputs():
    """Hidden states, query and key heads and logits as eager computes them, at the probed shape and at another (it
    compiles again, frozen too); the run's random stream untouched. With maps, or rows over 256: eager."""
    from minialbert.compiled import FrozenLayers, compile_teacher
    from minialbert.step import masked_positions

    for seq, query_key in ((16, False), (300, True)):  # maps; rows over 256
        line = compile_teacher(tiny_teacher(), 2, seq, True, query_key, torch.device("cpu"))
        assert line.startswith("the teacher eager (compiled and frozen where it measured faster"), line
    teacher = tiny_teacher()
    state = torch.random.get_rng_state()
    line = compile_teacher(teacher, 2, 16, True, True, torch.device("cpu"))
    # (ATen's products where Inductor has no C++ GEMM kernel: an AVX2-only CPU)
    assert re.match(r"the teacher compiled and frozen \((C\+\+ GEMM kernels|ATen products)\) in [\d.]+ s$", line), line
    assert isinstance(teacher.run_layers, FrozenLayers)
    assert torch.equal(torch.random.get_rng_state(), state)
    for batch in (make_batch(100, batch=2, seq=16, seed=1, padded_rows=1), make_batch(100, batch=3, seq=8, seed=2)):
        positions = masked_positions(batch["labels"])
        got = teacher_outputs(teacher, batch, positions)
        frozen, teacher.run_layers = teacher.run_layers, teacher.run_layers.eager
        want = teacher_outputs(teacher, batch, positions)
        teacher.run_layers = frozen
        pairs = [(got.logits, want.logits), *zip(got.hidden_states, want.hidden_states),
                 *[(g.query, w.query) for g, w in zip(got.query_keys, want.query_keys)],
                 *[(g.key, w.key) for g, w in zip(got.query_keys, want.query_keys)]]
        assert len(pairs) == 1 + 2 + 4
        for g, w in pairs:
            torch.testing.assert_close(g, w, rtol=1e-4, atol=1e-4)


def test_a_teacher_that_fails_to_compile_runs_eager_with_one_line():
    from minialbert.compiled import compile_teacher

    torch._dynamo.reset()
    teacher = tiny_teacher()
    try:
        with no_cxx():
            line = compile_teacher(teacher, 2, 16, True, True, torch.device("cpu"))
    finally:
        torch._dynamo.reset()
    assert line.startswith("the teacher eager (compiling it failed: ") and "\n" not in line, line
    assert teacher.run_layers == teacher._run_bert  # the eager layer loop back in place
    out = teacher_outputs(teacher, make_batch(100, batch=2, seq=16, seed=1), None)
    assert len(out.hidden_states) == 2


@pytest.mark.parametrize("setting, max_steps, want", [("on", 10, True), ("auto", 400, False), ("auto", 2000, True)])
def test_auto_compiles_the_teacher_only_in_runs_long_enough_to_repay_it(setting, max_steps, want):
    from minialbert.compiled import teacher_compile_wanted

    wanted, why = teacher_compile_wanted(setting, max_steps)
    assert wanted is want and why and (str(max_steps) in why) == (setting == "auto")
