"""The short Python API: the README's example runs, and each entry point works on in-memory inputs."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest
import torch

import bitlens
from data_fixtures import SENTENCES, tiny_model_dir

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_python_example_runs(tmp_path, monkeypatch):
    text = README.read_text()
    section = text[text.index("## Python API"):]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    assert len(code.strip().splitlines()) == 5
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    exec(compile(code, "README.md", "exec"), namespace)  # noqa: S102 - our own README
    codes = bitlens.encode_all(namespace["bae"], namespace["store"].view(3).rows())
    assert bitlens.estimate_entropy(codes).marginal_bits > 0


@pytest.fixture(scope="module")
def hf_model():
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(tiny_model_dir())


def test_extract_takes_a_loaded_model_and_strings(tmp_path, hf_model):
    store = bitlens.extract(hf_model, [" ".join(SENTENCES[i:] + SENTENCES[:i]) for i in range(6)], layers=[1, 2],
                            out=tmp_path / "s", progress=False)
    assert store.layers == [1, 2] and store.n_tokens > 100
    # the same store, read back, is resumed rather than redone
    again = bitlens.extract(hf_model, [" ".join(SENTENCES[i:] + SENTENCES[:i]) for i in range(6)], layers=[1, 2],
                            out=tmp_path / "s", progress=False)
    assert again.n_tokens == store.n_tokens


def test_train_returns_the_coder_without_an_out_dir():
    x = torch.randn(600, 16)
    bae = bitlens.train(x, steps=20, batch_size=64, eval_every=10, entropy_weight=1.0)
    assert isinstance(bae, bitlens.BinaryAutoencoder) and bae.d_in == 16 and bae.width == 64
    with pytest.raises(bitlens.BitlensError, match="unknown training option"):
        bitlens.train(x, steps=5, no_such_option=1)


def test_splice_runs_a_coder_inside_a_live_model(hf_model):
    ids = torch.tensor([[1, 20, 30, 40, 50, 60]])
    clean = hf_model(ids).logits
    bae = bitlens.BinaryAutoencoder(bitlens.BAEConfig(d_in=32))
    with bitlens.splice(hf_model, bae, layer=2):
        spliced = hf_model(ids).logits
    assert not torch.allclose(clean, spliced)
    torch.testing.assert_close(hf_model(ids).logits, clean)  # the hook is gone after the block
    with bitlens.splice(hf_model, bae, layer=2, positions="last"):
        last = hf_model(ids).logits
    torch.testing.assert_close(last[:, :-1], clean[:, :-1])  # causal: earlier positions untouched
    assert not torch.allclose(last[:, -1], clean[:, -1])


def test_library_code_does_not_print():
    src = Path(bitlens.__file__).parent
    offenders = []
    for path in src.rglob("*.py"):
        if path.relative_to(src).parts[0] == "cli":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Name) and node.id == "print":  # a call, or print passed as a callback
                offenders.append(f"{path.relative_to(src)}:{node.lineno}")
    assert not offenders, f"use logging instead of print: {offenders}"
