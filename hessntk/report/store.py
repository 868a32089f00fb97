"""Partial results of long command-line runs, kept to resume from.

Everything is written atomically (a temporary file in the same folder, then ``os.replace``), so
an interrupted run leaves either the previous file or the new one, never a truncated one.
Every item carries a content hash (:func:`hessntk.report.fingerprint` of its key and value),
checked when it is read back: a file changed or truncated after it was written is refused.
:class:`PartialStore` keeps items in ``<folder>/partial/``: SLQ probe groups (through
:meth:`PartialStore.slq_groups`, a :class:`hessntk.spectral.quadrature.GroupStore`) and
checkpoint evaluations; a rerun with ``resume`` skips what is there and gives the same numbers
as an uninterrupted run.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

from hessntk._io import atomic_write
from hessntk.report.jsonio import dumps, fingerprint, to_jsonable
from hessntk.spectral.krylov import Tridiagonal

__all__ = ["PartialStore", "ResumeError", "SLQGroups"]


class ResumeError(ValueError):
    """Partial results in the output folder were computed with other settings."""


class PartialStore:
    """Partial results of a long run, kept in ``<folder>/partial/`` to resume from.

    Every item is saved with a ``key`` (the settings and input fingerprints it depends on).
    With ``resume=False`` the store starts empty (old items are deleted); with
    ``resume=True`` items are reused, and an item saved under another key raises
    :class:`ResumeError`, since merging it would mix two different runs.

    Examples
    --------
    >>> import tempfile
    >>> folder = tempfile.mkdtemp()
    >>> store = PartialStore(folder, resume=False)
    >>> store.save_json("a", {"value": 2.0}, key={"seed": 0})
    >>> PartialStore(folder, resume=True).load_json("a", key={"seed": 0})
    {'value': 2.0}
    """

    MARKER = ".hessntk-partial"

    def __init__(self, folder: str | os.PathLike, *, resume: bool) -> None:
        self.path = Path(folder) / "partial"
        self.resume = bool(resume)
        self.reused = 0
        if self.path.exists() and not (self.path / self.MARKER).exists():
            # Never delete or mix with a folder that hessntk did not create.
            raise ResumeError(f"{self.path} exists and was not written by hessntk; choose "
                              "another --out folder")
        if not self.resume and self.path.exists():
            shutil.rmtree(self.path)

    def _ensure(self) -> None:
        if not self.path.exists():
            self.path.mkdir(parents=True)
            (self.path / self.MARKER).touch()

    def _file(self, name: str, ext: str) -> Path:
        return self.path / f"{name}.{ext}"

    def _unreadable(self, f: Path, why: str) -> ResumeError:
        return ResumeError(f"cannot resume: {f} is unreadable ({why}); rerun without --resume")

    def _check_hash(self, f: Path, saved: Any, *content: Any) -> None:
        if saved is None:
            raise ResumeError(f"cannot resume: {f} has no content hash (written by an older "
                              "hessntk); rerun without --resume")
        if saved != fingerprint(*content):
            raise ResumeError(f"cannot resume: {f} was changed after hessntk wrote it (its "
                              "content hash does not match); rerun without --resume")

    def _check(self, name: str, saved: Any, key: Any) -> None:
        want = to_jsonable(key)
        if saved != want:
            diff = _first_difference(saved, want)
            raise ResumeError(
                f"cannot resume: partial result {name!r} in {self.path} was computed with "
                f"other settings or inputs ({diff}); rerun without --resume, or use another "
                "--out folder"
            )

    def load_json(self, name: str, key: Any) -> Any:
        """Return the saved value of ``name`` (None when absent or not resuming)."""
        f = self._file(name, "json")
        if not self.resume or not f.exists():
            return None
        try:
            saved = json.loads(f.read_text())
            content = (saved["key"], saved["value"])
        except (OSError, ValueError, KeyError, TypeError) as err:
            raise self._unreadable(f, f"{type(err).__name__}: {err}") from err
        self._check_hash(f, saved.get("sha256"), *content)
        self._check(name, saved["key"], key)
        self.reused += 1
        return saved["value"]

    def save_json(self, name: str, value: Any, key: Any) -> None:
        """Save ``value`` (JSON-able) under ``name`` with its ``key`` and a content hash."""
        self._ensure()
        item = json.loads(dumps({"key": key, "value": value}))  # as it will be read back
        item["sha256"] = fingerprint(item["key"], item["value"])
        atomic_write(self._file(name, "json"), dumps(item))

    def load_arrays(self, name: str, key: Any) -> dict[str, np.ndarray] | None:
        """Return the saved arrays of ``name`` (None when absent or not resuming)."""
        f = self._file(name, "npz")
        if not self.resume or not f.exists():
            return None
        try:
            with np.load(f, allow_pickle=False) as z:
                arrays = {k: z[k] for k in z.files}
            key_text = str(arrays.pop("__key__"))
            digest = arrays.pop("__sha256__", None)
            saved = json.loads(key_text)
        except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as err:
            raise self._unreadable(f, f"{type(err).__name__}: {err}") from err
        self._check_hash(f, None if digest is None else str(digest), key_text, arrays)
        self._check(name, saved, key)
        self.reused += 1
        return arrays

    def slq_groups(self, name: str, key: Any) -> SLQGroups:
        """The probe groups of one SLQ run, for ``hessntk.spectral.slq(..., store=)``."""
        return SLQGroups(self, name, key)

    def save_arrays(self, name: str, key: Any, **arrays: np.ndarray) -> None:
        """Save numpy ``arrays`` under ``name`` with its ``key``."""
        self._ensure()
        buf = io.BytesIO()
        arrays = {k: np.asarray(v) for k, v in arrays.items()}
        key_text = json.dumps(to_jsonable(key), sort_keys=True)
        np.savez(buf, __key__=np.array(key_text),
                 __sha256__=np.array(fingerprint(key_text, arrays)), **arrays)
        atomic_write(self._file(name, "npz"), buf.getvalue())


def _first_difference(saved: Any, want: Any, where: str = "") -> str:
    if isinstance(saved, dict) and isinstance(want, dict):
        for k in sorted(set(saved) | set(want)):
            if saved.get(k) != want.get(k):
                return _first_difference(saved.get(k), want.get(k), f"{where}{k}")
    return f"{where or 'key'}: saved {saved!r}, now {want!r}"


class SLQGroups:
    """The SLQ probe groups of one run in a :class:`PartialStore` (a ``GroupStore``).

    Each group is saved under ``<name>-group<g>`` with the SLQ settings and ``key`` (what the
    result depends on besides them, e.g. a fingerprint of the model and data).
    """

    def __init__(self, store: PartialStore, name: str, key: Any) -> None:
        self.store, self.name, self.key = store, name, key

    def _full_key(self, settings: dict[str, Any]) -> dict[str, Any]:
        return {**settings, "input": self.key}

    def load(self, group: int, settings: dict[str, Any]) -> Tridiagonal | None:
        saved = self.store.load_arrays(f"{self.name}-group{group:03d}", self._full_key(settings))
        if saved is None:
            return None
        return Tridiagonal(alpha=saved["alpha"], beta=saved["beta"],
                           num_steps=saved["num_steps"], breakdown=saved["breakdown"],
                           num_matvecs=int(saved["num_matvecs"]))

    def save(self, group: int, settings: dict[str, Any], T: Tridiagonal) -> None:
        self.store.save_arrays(f"{self.name}-group{group:03d}", self._full_key(settings),
                               alpha=T.alpha, beta=T.beta, num_steps=T.num_steps,
                               breakdown=T.breakdown, num_matvecs=np.array(T.num_matvecs))
