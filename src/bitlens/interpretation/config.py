"""Settings of `bitlens interpret` (field docstrings are the CLI help)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from ..config import Serializable


@dataclass
class InterpretConfig(Serializable):
    """Explain and score coder features with an LLM."""

    coder: str
    """Coder checkpoint folder (or a run folder holding checkpoint/)."""
    store: str
    """Activation store written by `bitlens extract` (tokens and their metadata)."""
    out: str = "runs/interp"
    """Run folder: features.jsonl, examples.jsonl, judgements.jsonl, summary.json, plots, units.sqlite."""
    mode: Literal["default", "comsem"] = "default"
    """default (balanced detection with negatives) or comsem (the paper's procedure, positives only)."""
    layer: int | None = None
    """Store layer the coder reads; none = the store's only layer."""
    llm: str = "local:embedded"
    """Judge/explainer: local:MODEL (transformers; embedded = SmolLM2-135M-Instruct), openai:MODEL, replay:SPEC."""
    base_url: str = ""
    """Base URL of an OpenAI-compatible server (vLLM, llama.cpp, Ollama); empty = the SDK default."""
    api_key_env: str = "OPENAI_API_KEY"
    """Name of the environment variable holding the API key (never logged or cached)."""
    local_dtype: Literal["float32", "bfloat16"] = "float32"
    """Weights of a local model: float32, or bfloat16 (faster on CPUs with bf16 instructions; answers may differ)."""
    cache: str = ""
    """SQLite response cache; empty = OUT/cache.sqlite."""
    n_features: int = 64
    """Features to interpret, chosen stratified by firing rate."""
    features: list[int] = field(default_factory=list)
    """Explicit feature indices (overrides n_features)."""
    seed: int = 0
    """Seed for feature choice and every per-feature sampler."""
    concurrency: int = 8
    """Requests in flight at once (HTTP backends); also the local backend batch size."""
    max_calls: int = 0
    """Stop cleanly after this many LLM calls (cache hits are free); 0 = no limit."""
    max_cost: float = 0.0
    """Stop cleanly when the estimated cost in dollars reaches this; 0 = no limit."""
    price_input: float = 0.0
    """Dollars per million prompt tokens (for cost accounting; none are built in)."""
    price_output: float = 0.0
    """Dollars per million completion tokens."""
    dry_run: bool = False
    """Print the number of calls and prompt tokens the run would make, call nothing."""
    reasoning: bool = False
    """OpenAI backend: a reasoning model (sends max_completion_tokens, no temperature; its hidden tokens are billed)."""
    timeout: float = 60.0
    """Seconds per HTTP request."""
    retries: int = 5
    """Retries per HTTP request: the openai SDK's own (408/409/429/5xx, timeouts, connection errors; backoff honouring Retry-After), and as many re-asks after a malformed reply."""
    min_positives: int = 20
    """Default mode: a feature needs this many minority-state tokens, else status too_few_examples."""
    n_explain: int = 12
    """Default mode: firing examples shown to the explainer."""
    n_explain_negatives: int = 4
    """Default mode: token-matched non-firing examples shown to the explainer."""
    n_test_positives: int = 16
    """Default mode: held-out firing items judged per feature."""
    n_test_negatives: int = 16
    """Default mode: held-out non-firing items judged (half random, half same-token)."""
    per_token_cap: int = 2
    """Default mode: at most this many examples of one token string."""
    per_document_cap: int = 3
    """Default mode: at most this many examples from one document."""
    control_fraction: float = 0.25
    """Default mode: fraction of scored features also judged with another feature's explanation."""
    left_context: int = 16
    """Tokens of context shown before the target token (default mode)."""
    right_context: int = 3
    """Tokens of context shown after the target token (default mode)."""
    thresholds: list[float] = field(default_factory=lambda: [0.6, 0.7, 0.8, 0.9])
    """Score thresholds for counting interpretable features (by the lower interval bound in default mode)."""
    comsem_top_k: int = 10
    """ComSem: features each token is assigned to."""
    comsem_sae_score: Literal["zscore", "activation"] = "zscore"
    """ComSem score for non-binary coders: zscore or activation."""
    device: str = "cpu"
    """Device for the coder and a local judge model: cpu, cuda, cuda:N or auto."""
    progress: bool = True
    """Show progress bars."""

    def __post_init__(self) -> None:
        if self.mode not in ("default", "comsem"):
            raise ValueError(f"mode must be default or comsem, not {self.mode!r}")
        if self.local_dtype not in ("float32", "bfloat16"):
            raise ValueError("local_dtype must be float32 or bfloat16")
        if self.comsem_sae_score not in ("zscore", "activation"):
            raise ValueError("comsem_sae_score must be zscore or activation")
        if self.n_features < 1 or self.concurrency < 1 or self.max_calls < 0 or self.max_cost < 0:
            raise ValueError("n_features and concurrency must be >= 1; max_calls and max_cost >= 0")
        if self.seed < 0:
            raise ValueError("seed must be >= 0")
        if not 0.0 <= self.control_fraction <= 1.0:
            raise ValueError("control_fraction must be in [0, 1]")
        self.threshold_list()

    def threshold_list(self) -> list[float]:
        if not self.thresholds or not all(0.0 <= v <= 1.0 for v in self.thresholds):
            raise ValueError("thresholds must lie in [0, 1]")
        return list(self.thresholds)

    def feature_list(self) -> list[int] | None:
        return list(self.features) or None
