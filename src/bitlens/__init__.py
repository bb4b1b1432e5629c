"""bitlens: Binary Autoencoders for mechanistic interpretability of language models.

Pipeline: data (models, corpora, activation store) -> coders -> training -> analysis -> interpretation -> report.
"""

__version__ = "0.1.0"

from .analysis.entropy import EntropyEstimate, estimate_entropy  # noqa: E402
from .coders.bae import BAEConfig, BinaryAutoencoder  # noqa: E402
from .coders.registry import load, save_coder  # noqa: E402
from .data.synthetic import known_entropy_data  # noqa: E402
from .training.config import LossConfig, TrainConfig  # noqa: E402
from .training.run import encode_all, train_bae  # noqa: E402

__all__ = ["BAEConfig", "BinaryAutoencoder", "EntropyEstimate", "LossConfig", "TrainConfig", "encode_all",
           "estimate_entropy", "known_entropy_data", "load", "save_coder", "train_bae", "__version__"]
