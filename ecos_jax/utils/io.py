"""Atomic file writes: a crash mid-write never leaves a half-written result or checkpoint.

Also the on-disk cache of fitted models: `content_hash` names a file by what went into the fit,
and `save_params` / `load_params` store a flax parameter pytree in it.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def _to_jsonable(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {str(k): _to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_to_jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return _to_jsonable(obj.tolist())
    if isinstance(obj, np.generic):
        return _to_jsonable(obj.item())
    if hasattr(obj, "shape") and hasattr(obj, "dtype"):  # jax arrays
        return _to_jsonable(np.asarray(obj).tolist())
    if isinstance(obj, float) and not np.isfinite(obj):
        return str(obj)  # "inf" / "nan": strict JSON has no infinities (e.g. ε of an exact release)
    return obj


def write_json(path: str | os.PathLike, obj: Any) -> None:
    """Writes `obj` as indented JSON, atomically (numpy / jax values converted)."""
    atomic_write_bytes(path, (json.dumps(_to_jsonable(obj), indent=2, allow_nan=False) + "\n").encode())


def write_text(path: str | os.PathLike, text: str) -> None:
    """Writes `text` atomically."""
    atomic_write_bytes(path, text.encode())


def save_npz(path: str | os.PathLike, **arrays: np.ndarray) -> None:
    """Saves arrays to an .npz atomically."""
    import io

    buf = io.BytesIO()
    np.savez(buf, **arrays)
    atomic_write_bytes(path, buf.getvalue())


def content_hash(kind: str, images: np.ndarray, labels: np.ndarray | None, settings: dict) -> str:
    """20 hex digits naming a fit by its kind, settings and exact training data (cache keys)."""
    h = hashlib.sha256()
    h.update(kind.encode())
    h.update(repr(sorted(settings.items())).encode())
    h.update(np.ascontiguousarray(images).tobytes())
    if labels is not None:
        h.update(np.ascontiguousarray(labels).tobytes())
    return h.hexdigest()[:20]


def save_params(path: str | os.PathLike, params: Any) -> None:
    """Saves a flax parameter pytree (msgpack bytes inside an .npz), atomically."""
    from flax import serialization

    save_npz(path, params=np.frombuffer(serialization.to_bytes(params), np.uint8))


def load_params(path: str | os.PathLike, template: Any) -> Any:
    """Loads what `save_params` wrote into the structure of `template` (arrays or shape structs)."""
    from flax import serialization

    return serialization.from_bytes(template, np.load(path)["params"].tobytes())
