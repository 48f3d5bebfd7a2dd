"""Load model folders as a user without minialbert would, and save what they compute.

    python -I tests/standalone_child.py SPEC.json

Run by tests/test_export_standalone.py in a fresh interpreter (``-I``: no PYTHONPATH, no script folder on
sys.path). minialbert is installed editable in the venv, so first its import finder and any sys.path entry
holding a ``minialbert`` folder are removed; ``find_spec("minialbert")`` must then be None, and a finder that
refuses the name stays in place to the end. SPEC: ``{"texts": [...], "out": path, "loads": [{"key", "folder",
"auto", optional "input_ids"}...], "pipelines": folder or null, "sentence_transformers": folder or null}``; every
output tensor is saved to ``out`` (torch.save).
"""

import importlib.util
import json
import sys
from pathlib import Path

OURS = ("minialbert", "data_prep", "launchers")
sys.meta_path[:] = [f for f in sys.meta_path if "editable" not in getattr(f, "__module__", "")]
sys.path[:] = [p for p in sys.path if not (Path(p or ".") / "minialbert").exists()]
sys.path_importer_cache.clear()
for name in OURS:
    assert importlib.util.find_spec(name) is None, f"{name} is still importable"


class RefuseOurs:
    """Any later import of the project's packages fails loudly."""

    @staticmethod
    def find_spec(name, path=None, target=None):
        if name.split(".")[0] in OURS:
            raise ImportError(f"{name}: minialbert must not be imported in this process")
        return None


sys.meta_path.insert(0, RefuseOurs)

import torch  # noqa: E402
import transformers  # noqa: E402

torch.set_num_threads(1)
spec = json.loads(Path(sys.argv[1]).read_text())
results = {"not_importable": True}
for load in spec["loads"]:
    auto = getattr(transformers, load["auto"])
    if "input_ids" in load:  # a folder without a tokenizer (a converted golden case)
        batch = {"input_ids": torch.tensor(load["input_ids"])}
    else:
        tokenizer = transformers.AutoTokenizer.from_pretrained(load["folder"])
        batch = dict(tokenizer(spec["texts"], padding=True, return_tensors="pt"))
    try:  # without trust_remote_code a folder of custom code must be refused
        auto.from_pretrained(load["folder"])
        refused = ""
    except ValueError as err:
        refused = str(err)
    model = auto.from_pretrained(load["folder"], trust_remote_code=True).eval()
    with torch.no_grad():
        out = model(**batch, output_hidden_states=True)
    results[load["key"]] = {
        "class": f"{type(model).__module__}.{type(model).__name__}",
        "config_class": f"{type(model.config).__module__}.{type(model.config).__name__}",
        "refused_without_trust": refused,
        "input_ids": batch["input_ids"],
        **{k: v for k, v in out.items()},
    }
if spec.get("pipelines"):
    folder = spec["pipelines"]
    fill = transformers.pipeline("fill-mask", model=folder, trust_remote_code=True, device="cpu")
    results["fill_mask"] = fill(spec["masked_text"], top_k=5)
    features = transformers.pipeline("feature-extraction", model=folder, trust_remote_code=True, device="cpu")
    results["features"] = torch.tensor(features(spec["texts"][0]))
if spec.get("sentence_transformers"):  # as the model card shows it
    from sentence_transformers import SentenceTransformer

    folder = spec["sentence_transformers"]
    try:  # the folder's own files cannot grant trust_remote_code either
        SentenceTransformer(folder, device="cpu")
        refused = ""
    except ValueError as err:
        refused = str(err)
    st = SentenceTransformer(folder, device="cpu", trust_remote_code=True)
    results["sentence_transformers"] = {"refused_without_trust": refused, "class": type(st[0].auto_model).__module__,
                                        "embeddings": st.encode(spec["texts"], convert_to_tensor=True)}
leaked = sorted(m for m in sys.modules if m.split(".")[0] in OURS)
assert not leaked, f"imported in the standalone process: {leaked}"
torch.save(results, spec["out"])
print("standalone ok:", ", ".join(sorted(results)))
