"""Strict JSON of results (non-finite numbers as null), fingerprints and digests."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
from collections.abc import Mapping
from typing import Any

import numpy as np

__all__ = ["dumps", "file_digest", "fingerprint", "to_jsonable"]


def to_jsonable(obj: Any) -> Any:
    """Convert results to strict JSON values: non-finite floats become ``None``.

    Handles dicts, sequences, numpy arrays and scalars, torch tensors, dataclasses (their
    fields) and paths.

    Examples
    --------
    >>> to_jsonable({"a": np.float32(0.5), "b": np.array([1.0, np.inf]), "c": (1, "x")})
    {'a': 0.5, 'b': [1.0, None], 'c': [1, 'x']}
    """
    if obj is None or isinstance(obj, (bool, str)):
        return obj
    if isinstance(obj, (int, np.integer)):
        return int(obj)
    if isinstance(obj, (float, np.floating)):
        return float(obj) if math.isfinite(obj) else None
    if isinstance(obj, np.bool_):
        return bool(obj)
    if isinstance(obj, np.ndarray):
        return to_jsonable(obj.tolist())
    if isinstance(obj, Mapping):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_jsonable(v) for v in obj]
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return to_jsonable({f.name: getattr(obj, f.name) for f in dataclasses.fields(obj)
                            if f.repr})
    if type(obj).__module__.startswith("torch"):
        return to_jsonable(obj.detach().cpu().numpy() if hasattr(obj, "detach") else str(obj))
    return str(obj)


def dumps(obj: Any) -> str:
    """Strict JSON text of ``obj`` (see :func:`to_jsonable`), indented."""
    return json.dumps(to_jsonable(obj), indent=2, allow_nan=False) + "\n"



def fingerprint(*parts: Any) -> str:
    """A short stable hash of JSON-able values, arrays and tensors (e.g. model parameters).

    Examples
    --------
    >>> fingerprint({"a": 1}) == fingerprint({"a": 1}) != fingerprint({"a": 2})
    True
    """
    h = hashlib.sha256()
    for part in parts:
        _hash_into(h, part)
    return h.hexdigest()[:16]


def _hash_into(h: Any, obj: Any) -> None:
    if isinstance(obj, Mapping):
        for k in sorted(obj, key=str):
            h.update(str(k).encode())
            _hash_into(h, obj[k])
    elif isinstance(obj, (list, tuple)):
        for v in obj:
            _hash_into(h, v)
    elif hasattr(obj, "detach") and hasattr(obj, "cpu"):  # a torch tensor
        import torch

        t = obj.detach().cpu().contiguous().reshape(-1)
        h.update(f"{t.dtype}{tuple(obj.shape)}".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    elif isinstance(obj, np.ndarray):
        h.update(f"{obj.dtype}{obj.shape}".encode())
        h.update(np.ascontiguousarray(obj).tobytes())
    else:
        h.update(json.dumps(to_jsonable(obj), sort_keys=True).encode())


def file_digest(path: str | os.PathLike) -> str:
    """SHA-256 of a file's bytes (identifies a checkpoint across runs)."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()
