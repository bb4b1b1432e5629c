"""Safe file output: atomic writes, run manifests and input validation errors."""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Iterator

from ._version import __version__


def _umask() -> int:
    current = os.umask(0)
    os.umask(current)
    return current


class BitlensError(Exception):
    """A user-facing error: the CLI prints its message on one line and exits with code 2."""


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path in the target's folder; rename it onto ``path`` only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.chmod(tmp_path, 0o666 & ~_umask())  # mkstemp makes 0600 files; give the usual permissions
        os.replace(tmp_path, path)
    finally:
        tmp_path.unlink(missing_ok=True)


def write_json(path: str | Path, data: Any) -> None:
    """Write JSON atomically (indent 2, trailing newline). Non-finite numbers become null (bare NaN is not JSON)
    and secrets are masked (``bitlens.redact``)."""
    from .redact import redact

    text = redact(json.dumps(json_safe(data), indent=2, default=_json_default, allow_nan=False))
    with atomic_path(path) as tmp:
        tmp.write_text(text + "\n")


def json_safe(obj: Any) -> Any:
    """``obj`` with every non-finite float (Python, numpy or 0-d tensor) replaced by None, for strict JSON."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    if hasattr(obj, "tolist") and not isinstance(obj, (str, bytes)):  # numpy/torch scalars and arrays
        return json_safe(obj.tolist())
    return obj


def write_text(path: str | Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def _json_default(obj: Any) -> Any:
    if isinstance(obj, Path):
        return str(obj)
    if hasattr(obj, "item"):  # numpy / torch scalars
        return obj.item()
    if hasattr(obj, "tolist"):
        return obj.tolist()
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


@contextlib.contextmanager
def atomic_dir(path: str | Path) -> Iterator[Path]:
    """Yield a temporary folder beside ``path``; on success it replaces ``path`` (old one removed)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    try:
        yield tmp
        os.chmod(tmp, 0o777 & ~_umask())
        old = path.with_name(f".{path.name}.old")
        if old.exists():
            shutil.rmtree(old)
        if path.exists():
            os.replace(path, old)
        os.replace(tmp, path)
        shutil.rmtree(old, ignore_errors=True)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def check_out_dir(path: str | Path) -> Path:
    """``path`` as an output folder: refused in one line when it exists and is not a folder."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise BitlensError(f"{path} is a file, not a folder: choose a new or existing folder for the output")
    return path


NPY_MAGIC = b"\x93NUMPY"


def npy_problem(path: str | Path, exc: BaseException) -> str:
    """Why numpy could not read ``path``, without numpy's advice to load pickles (never do that)."""
    try:
        with open(path, "rb") as f:
            magic = f.read(len(NPY_MAGIC))
    except OSError as e:
        return str(e)
    if magic != NPY_MAGIC:
        return "not a valid .npy file (no NumPy header)"
    text = (str(exc).splitlines() or [type(exc).__name__])[0]
    return "a .npy file of Python objects, which bitlens never loads" if "pickle" in text else text


def read_json_object(file: str | Path) -> dict[str, Any]:
    """The JSON object in ``file``; BitlensError("<file>: ...") when it is not valid JSON or not an object."""
    file = Path(file)
    try:
        data = json.loads(file.read_text())
    except json.JSONDecodeError as e:
        raise BitlensError(f"{file}: not valid JSON ({e.msg} at line {e.lineno})") from None
    except UnicodeDecodeError:
        raise BitlensError(f"{file}: not valid JSON (not UTF-8 text)") from None
    if not isinstance(data, dict):
        raise BitlensError(f"{file}: expected a JSON object, got {type(data).__name__}")
    return data


def file_fingerprint(path: str | Path, chunk: int = 1 << 20) -> str:
    """sha256 of a file's bytes (hex), for manifests."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def write_manifest(run_dir: str | Path, *, command: str, config: dict[str, Any],
                   seeds: dict[str, int], inputs: dict[str, Any] | None = None,
                   extra: dict[str, Any] | None = None) -> Path:
    """Write ``run_dir/manifest.json``: package and library versions, config, seeds and input fingerprints."""
    import numpy
    import torch

    manifest = {
        "bitlens_version": __version__,
        "command": command,
        "argv": sys.argv,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "numpy": numpy.__version__,
        "platform": platform.platform(),
        "config": config,
        "seeds": seeds,
        "inputs": inputs or {},
        **(extra or {}),
    }
    path = Path(run_dir) / "manifest.json"
    write_json(path, manifest)
    return path


def load_safetensors(path: str | Path) -> dict[str, Any]:
    """The tensors of a .safetensors file, checked first (``safetensors_header``): a missing, truncated or damaged
    file raises ``BitlensError("<path>: ...")``."""
    from safetensors.torch import load_file

    path = Path(path)
    if not path.is_file():
        raise BitlensError(f"{path}: missing")
    safetensors_header(path)
    try:
        return load_file(str(path))
    except Exception as e:  # safetensors raises its own error types for damaged data
        raise BitlensError(f"{path}: {str(e).splitlines()[0] if str(e) else type(e).__name__}") from None


def safetensors_header(path: str | Path) -> dict[str, tuple[str, list[int]]]:
    """``{name: (dtype, shape)}`` from a .safetensors file's header, checked against the file's size without
    reading the tensors: a truncated or damaged file raises ``BitlensError("<path>: ...")``."""
    path = Path(path)
    size = path.stat().st_size
    problem = ""
    with open(path, "rb") as f:
        head = f.read(8)
        n = int.from_bytes(head, "little") if len(head) == 8 else -1
        if n < 2 or 8 + n > size:
            problem = "too short for its header" if n >= 0 else "too short to be a safetensors file"
        else:
            try:
                header = json.loads(f.read(n))
            except (UnicodeDecodeError, json.JSONDecodeError):
                header, problem = None, "its header is not valid JSON"
    if not problem and not isinstance(header, dict):
        problem = "its header is not a JSON object"
    if problem:
        raise BitlensError(f"{path}: truncated or not a safetensors file ({problem})")
    out, end = {}, 0
    for name, info in header.items():
        if name == "__metadata__":
            continue
        try:
            start, stop = (int(v) for v in info["data_offsets"])
            out[name] = (str(info["dtype"]), [int(d) for d in info["shape"]])
        except (KeyError, TypeError, ValueError):
            raise BitlensError(f"{path}: damaged safetensors header (entry {name!r})") from None
        end = max(end, stop)
        if not 0 <= start <= stop:
            raise BitlensError(f"{path}: damaged safetensors header (entry {name!r})")
    if 8 + n + end != size:
        raise BitlensError(f"{path}: truncated or damaged: its header describes {8 + n + end} bytes, "
                           f"the file has {size}")
    return out
