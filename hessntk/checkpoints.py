"""Torch checkpoints: state dicts from modules, dicts, ``.pt`` / ``.pth`` and ``.safetensors``.

Files are read safely: ``torch.load(weights_only=True)`` refuses pickles that need arbitrary
code, and ``.safetensors`` holds tensors only. Used by :func:`hessntk.criteria.compare` and the
command line.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Mapping

import torch
from torch import nn

__all__ = ["Checkpoint", "load_checkpoint", "load_into"]

Checkpoint = Mapping[str, torch.Tensor] | nn.Module | str | os.PathLike


def load_checkpoint(source: Checkpoint) -> dict[str, torch.Tensor]:
    """Return a state dict from a dict, a module, or a ``.pt``/``.pth``/``.safetensors`` file.

    Files are read with ``torch.load(weights_only=True)``: a pickle that needs arbitrary code
    (a custom class) is refused. A file holding ``{"state_dict": ...}`` or ``{"model": ...}``
    is unwrapped.

    Raises
    ------
    ValueError
        A file that cannot be read safely or holds no state dict.
    """
    if isinstance(source, nn.Module):
        return source.state_dict()
    if isinstance(source, Mapping):
        state = dict(source)
    else:
        path = os.fspath(source)
        if not os.path.exists(path):
            raise ValueError(f"Expected a checkpoint file; {path!r} does not exist.")
        if os.path.isdir(path):
            raise ValueError(f"Expected a checkpoint file; {path!r} is a directory. Pass the "
                             "weights file inside it (e.g. model.safetensors or "
                             "pytorch_model.bin).")
        if path.endswith(".safetensors"):
            try:
                from safetensors.torch import load_file
            except ImportError as err:  # pragma: no cover - depends on the environment
                raise ImportError("Reading .safetensors needs: pip install safetensors") from err
            state = load_file(path)
        else:
            try:
                state = torch.load(path, map_location="cpu", weights_only=True)
            except (PermissionError, FileNotFoundError, MemoryError):
                raise  # the file system's or the host's trouble, not the file's content
            except Exception as err:  # noqa: BLE001 - any unpickling failure means refuse
                text = _plain(err)
                if not _REFUSED_OBJECT.search(text):  # not a refused object: a bad file
                    raise ValueError(
                        f"Could not read checkpoint {path!r}: the file is corrupt, truncated "
                        "or not written by torch.save with its default pickle protocol "
                        f"(torch.load: {_first_sentence(err, text)}). Save it again with "
                        "torch.save(model.state_dict(), path), or as a .safetensors file."
                    ) from err
                raise ValueError(
                    f"Could not load {path!r} with torch.load(weights_only=True): it is not a "
                    "plain tensor checkpoint (pickles of other objects are refused: loading "
                    f"them can run arbitrary code; {_unpickling_reason(err)}). If it holds a "
                    "whole model (torch.save(model, ...)), save its weights instead: "
                    "torch.save(model.state_dict(), path), or a .safetensors file."
                ) from err
    for key in ("state_dict", "model"):
        if isinstance(state, Mapping) and isinstance(state.get(key), Mapping):
            state = dict(state[key])
    if not isinstance(state, Mapping) or not all(torch.is_tensor(v) for v in state.values()):
        raise ValueError(f"Expected a state dict of tensors in checkpoint {source!r}.")
    return dict(state)


def load_into(build_model: Callable[[], nn.Module], source: Checkpoint, name: str) -> nn.Module:
    """A fresh ``build_model()`` with checkpoint ``source`` loaded strictly, in eval mode.

    Raises
    ------
    ValueError
        A checkpoint that does not match the architecture (the keys are named), or an
        unreadable checkpoint.
    FloatingPointError
        A checkpoint with non-finite parameters or buffers (the first such tensor is named).
    """
    model = build_model()
    state = load_checkpoint(source)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as err:
        raise ValueError(
            f"Checkpoint {name!r} does not match the architecture from build_model: {err}"
        ) from err
    for key, tensor in model.state_dict().items():
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            bad = int((~torch.isfinite(tensor)).sum())
            raise FloatingPointError(f"checkpoint {name!r} has {bad} non-finite value(s) of "
                                     f"{tensor.numel()} in {key!r}")
    return model.eval()


#: What torch.load(weights_only=True) says of a readable pickle holding objects it refuses
#: (any other failure is a file that is not a readable checkpoint).
_REFUSED_OBJECT = re.compile(r"GLOBAL|Can only (create|build)|call reduce|must be imported|"
                             r"allowlist")


def _first_sentence(err: BaseException, text: str) -> str:
    """The gist of a failed read: the unpickler's own error where torch wraps one (torch's
    advice about ``weights_only=False`` does not apply to a bad file), else the first
    sentence of torch's message."""
    inner = err.__cause__ or err.__context__
    if inner is not None and str(inner).strip():
        return f"{type(inner).__name__}: {str(inner).strip().splitlines()[0][:200]}"
    first = text.strip().split(". ")[0].splitlines()[0] if text.strip() else ""
    return f"{type(err).__name__}: {first[:200]}" if first else type(err).__name__


def _plain(err: BaseException) -> str:
    """torch's message without its terminal colours."""
    return re.sub(r"\x1b\[[0-9;]*m", "", str(err))


def _unpickling_reason(err: BaseException) -> str:
    """The gist of torch's weights-only refusal, without its advice and terminal colours."""
    text = _plain(err)
    found = re.search(r"Unsupported global: GLOBAL ([\w.]+)", text)
    if found:
        return f"it needs {found.group(1)}"
    first = text.strip().splitlines()[0] if text.strip() else type(err).__name__
    return first[:200]
