"""bitlens: Binary Autoencoders for mechanistic interpretability of language models.

Pipeline: data (models, corpora, activation store) -> coders -> ops -> analysis -> training -> experiments ->
interpretation, report; the CLI is a thin layer on top. The short API:

    import bitlens
    store = bitlens.extract("embedded", "moby-dick", layers=[3], max_tokens=12000)
    bae = bitlens.train(store, steps=200, batch_size=256)
    codes = bitlens.encode_all(bae, store.view(3).rows())
    print(bitlens.estimate_entropy(codes).marginal_bits)

Names are imported on first use, so ``import bitlens`` stays cheap and never touches matplotlib.
"""

from __future__ import annotations

import importlib
from typing import Any

from ._version import __version__  # noqa: F401 (re-exported)

# public name -> module that defines it (imported on first access, PEP 562)
_EXPORTS = {
    "extract": ".api", "train": ".api", "train_run": ".api", "splice": ".api",
    "load": ".coders.registry", "save_coder": ".coders.registry",
    "estimate_entropy": ".analysis.entropy", "EntropyEstimate": ".analysis.entropy",
    "BAEConfig": ".coders.bae", "BinaryAutoencoder": ".coders.bae",
    "LossConfig": ".training.config", "TrainConfig": ".training.config",
    "encode_all": ".training.run", "train_bae": ".training.run",
    "known_entropy_data": ".data.synthetic", "BitlensError": ".io",
}

__all__ = sorted([*_EXPORTS, "__version__"])


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'bitlens' has no attribute {name!r}")
    value = getattr(importlib.import_module(module, __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return __all__
