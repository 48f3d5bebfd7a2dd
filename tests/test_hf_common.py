"""transformers' own common model and config tests (``ModelTesterMixin``, ``ConfigTester``), run on the student
classes: the Hugging Face conventions a model must keep to load, save, resize, checkpoint and run everywhere.

The tests come from the sdist of the installed transformers, unpacked by scripts/bootstrap.sh into
``.cache/transformers-tests/`` (never copied into this repository). The sdist lacks three modules the common
tests import from: the export and generation mixins, which test torch.export and ``generate()`` (neither applies
to an encoder), are given as empty classes; ``config_common_kwargs`` (the values ConfigTester sets on every
config's generic attributes) as an empty dict, so that check covers the model's own arguments only.
"""

from __future__ import annotations

import importlib.util
import os
import sys
import types
import unittest
from pathlib import Path

import pytest
import torch

import transformers
from minialbert import (MiniAlbertConfig, MiniAlbertForMaskedLM, MiniAlbertForSequenceClassification,
                        MiniAlbertForTokenClassification, MiniAlbertModel)

HF_TESTS = Path(__file__).resolve().parents[1] / ".cache" / "transformers-tests" / transformers.__version__ / "tests"
PACKAGE = "hf_common_tests"


def _load_hf_tests():
    if not (HF_TESTS / "test_modeling_common.py").is_file():
        message = (f"transformers {transformers.__version__}'s common tests are not unpacked at {HF_TESTS} "
                   f"(scripts/bootstrap.sh does it)")
        if os.environ.get("MINIALBERT_REQUIRE_FIXTURES") == "1":
            pytest.fail(message, pytrace=False)
        pytest.skip(message, allow_module_level=True)
    package = types.ModuleType(PACKAGE)
    package.__path__ = [str(HF_TESTS)]
    sys.modules[PACKAGE] = package
    for name, attribute, value in (
        ("exporters.test_export", "ExportTesterMixin", type("ExportTesterMixin", (), {})),
        ("generation.test_utils", "GenerationTesterMixin", type("GenerationTesterMixin", (), {})),
        ("utils.test_configuration_utils", "config_common_kwargs", {}),
    ):
        parent = f"{PACKAGE}.{name.split('.')[0]}"
        sys.modules.setdefault(parent, types.ModuleType(parent)).__path__ = []
        module = types.ModuleType(f"{PACKAGE}.{name}")
        setattr(module, attribute, value)
        sys.modules[module.__name__] = module

    def load(name):
        spec = importlib.util.spec_from_file_location(f"{PACKAGE}.{name}", HF_TESTS / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module
        spec.loader.exec_module(module)
        return module

    return load("test_configuration_common"), load("test_modeling_common")


configuration_common, modeling_common = _load_hf_tests()


def _register_like_a_builtin_model() -> None:
    """The common tests tell base models from heads by transformers' own name tables (MODEL_MAPPING_NAMES, ...);
    ``AutoModel.register`` does not reach those, so add the student's names there, as a model in transformers is."""
    from transformers.models.auto import modeling_auto as auto

    for table, cls in (("MODEL_MAPPING_NAMES", MiniAlbertModel), ("MODEL_FOR_MASKED_LM_MAPPING_NAMES", MiniAlbertForMaskedLM),
                       ("MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING_NAMES", MiniAlbertForSequenceClassification),
                       ("MODEL_FOR_TOKEN_CLASSIFICATION_MAPPING_NAMES", MiniAlbertForTokenClassification)):
        getattr(auto, table)[MiniAlbertConfig.model_type] = cls.__name__


_register_like_a_builtin_model()


class MiniAlbertModelTester:
    def __init__(self, parent, batch_size=3, seq_length=7, vocab_size=99, embedding_size=16, hidden_size=32,
                 num_hidden_layers=2, num_attention_heads=4, intermediate_size=37, num_labels=3):
        self.parent = parent
        self.batch_size, self.seq_length, self.vocab_size = batch_size, seq_length, vocab_size
        self.embedding_size, self.hidden_size, self.num_hidden_layers = embedding_size, hidden_size, num_hidden_layers
        self.num_attention_heads, self.intermediate_size, self.num_labels = num_attention_heads, intermediate_size, num_labels
        self.is_training = True

    def get_config(self) -> MiniAlbertConfig:
        return MiniAlbertConfig(
            vocab_size=self.vocab_size, embedding_size=self.embedding_size, hidden_size=self.hidden_size,
            num_recursions=self.num_hidden_layers, num_attention_heads=self.num_attention_heads,
            intermediate_size=self.intermediate_size, adapter_reduction_factor=4, max_position_embeddings=64,
            hidden_dropout_prob=0.1, attention_probs_dropout_prob=0.1, num_labels=self.num_labels,
        )

    def prepare_config_and_inputs_for_common(self):
        ids = modeling_common.ids_tensor([self.batch_size, self.seq_length], self.vocab_size)
        mask = modeling_common.random_attention_mask([self.batch_size, self.seq_length])
        types_ = modeling_common.ids_tensor([self.batch_size, self.seq_length], 2)
        return self.get_config(), {"input_ids": ids, "attention_mask": mask, "token_type_ids": types_}


class MiniAlbertCommonTest(modeling_common.ModelTesterMixin, unittest.TestCase):
    all_model_classes = (MiniAlbertModel, MiniAlbertForMaskedLM, MiniAlbertForSequenceClassification,
                         MiniAlbertForTokenClassification)
    test_resize_position_embeddings = True

    def setUp(self):
        self.model_tester = MiniAlbertModelTester(self)
        self.config_tester = configuration_common.ConfigTester(self, config_class=MiniAlbertConfig, hidden_size=48)

    def _prepare_for_class(self, inputs_dict, model_class, return_labels=False):
        inputs = super()._prepare_for_class(inputs_dict, model_class, return_labels=return_labels)
        if return_labels:
            b, l = self.model_tester.batch_size, self.model_tester.seq_length
            if model_class is MiniAlbertForMaskedLM:
                inputs["labels"] = torch.zeros((b, l), dtype=torch.long)
            elif model_class is MiniAlbertForSequenceClassification:
                inputs["labels"] = torch.zeros(b, dtype=torch.long)
            elif model_class is MiniAlbertForTokenClassification:
                inputs["labels"] = torch.zeros((b, l), dtype=torch.long)
        return inputs

    def test_config(self):
        self.config_tester.run_common_tests()



class FormTester(MiniAlbertModelTester):
    """The tester's model in another layer form: ``fields`` set on its config."""

    def __init__(self, parent, fields: dict):
        super().__init__(parent)
        self.fields = fields

    def get_config(self) -> MiniAlbertConfig:
        config = super().get_config()
        for name, value in self.fields.items():
            setattr(config, name, value)
        config.validate()
        return config


class FormCommonTest(MiniAlbertCommonTest):
    """The common tests on the student in another layer form (``fields``); subclasses name the form."""

    __test__ = False
    test_resize_position_embeddings = False  # no position table to resize
    fields: dict = {}

    def setUp(self):
        super().setUp()
        self.model_tester = FormTester(self, self.fields)


class MiniAlbertModernBertFormCommonTest(FormCommonTest):
    """The ``modernbert`` form: pre-norm, GeGLU, rotary positions, no biases, a local first recursion."""

    __test__ = True
    fields = {"layer_form": "modernbert", "use_bias": False, "local_recursions": [0], "local_window": 2}


class MiniAlbertDebertaFormCommonTest(FormCommonTest):
    """The ``deberta`` form: disentangled attention over shared relative-position buckets, no positions."""

    __test__ = True
    fields = {"layer_form": "deberta", "relative_span": 4, "max_relative_positions": 8}
