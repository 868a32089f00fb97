"""Load the user's model for the command line: entry points, checkpoints, device and dtype.

A model entry point is ``package.module:function`` (imported from the current directory or
the installed packages) or ``path/to/file.py:function``. The function takes no arguments and
returns ``(model, loss_fn, data)``, or a dict with those keys:

- ``model``: a ``torch.nn.Module``;
- ``loss_fn``: ``loss_fn(outputs, targets) -> scalar`` mean over a batch, e.g.
  ``torch.nn.CrossEntropyLoss()``, or None for the model's own loss (``outputs.loss`` of a
  Hugging Face model called with ``labels=``);
- ``data``: one ``(inputs, targets)`` batch, one dict batch (Hugging Face: model inputs, the
  targets under ``"labels"``) or a re-iterable of batches (a list, a ``DataLoader``): the
  training data the curvature is measured on.

A dict may also hold ``output_key`` / ``outputs_fn``: how to pick the output tensor of a model
that returns a dict or tuple (a Hugging Face ``ModelOutput``'s ``logits`` are picked anyway).

Examples
--------
>>> import sys, tempfile, textwrap
>>> from pathlib import Path
>>> f = Path(tempfile.mkdtemp()) / "mymodel.py"
>>> _ = f.write_text(textwrap.dedent('''
...     import torch
...     def build():
...         x, y = torch.randn(8, 3), torch.randn(8, 1)
...         return torch.nn.Linear(3, 1), torch.nn.MSELoss(), (x, y)
... '''))
>>> problem = load_problem(f"{f}:build")
>>> type(problem.model).__name__, problem.classification
('Linear', False)
"""

from __future__ import annotations

import dataclasses
import importlib
import importlib.util
import os
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from hessntk._model import batch_size, concat_inputs, iter_batches
from hessntk.checkpoints import load_checkpoint
from hessntk.cli.text import CLIError, one_line
from hessntk.ntk._common import slice_tree

__all__ = ["CLIError", "Problem", "cast", "load_entry_point", "load_problem", "load_weights"]


#: The keys an entry point's dict may hold.
KEYS = ("model", "loss_fn", "data", "output_key", "outputs_fn")


@dataclass
class Problem:
    """What an entry point returned: the model, its loss, the data and how to read outputs.

    ``loss_fn`` None means the model's own loss (``outputs.loss``, Hugging Face style);
    ``output_key`` / ``outputs_fn`` pick the output tensor of a dict or tuple output.
    """

    model: nn.Module
    loss_fn: Callable[[Any, Any], torch.Tensor] | None
    data: Any
    entry: str = ""
    output_key: str | int | None = None
    outputs_fn: Callable[[Any], torch.Tensor] | None = None
    group: Any = None  # under torchrun: the Communicator of the ranks
    sharded: bool = False  # the data is already this rank's (a DistributedSampler's)

    @property
    def outputs(self) -> dict[str, Any]:
        """The output options of every operator built for this problem."""
        return {"output_key": self.output_key, "outputs_fn": self.outputs_fn}

    @property
    def parallel(self) -> dict[str, Any]:
        """``group=`` of the operators under torchrun (nothing on one process)."""
        return {} if self.group is None else {"group": self.group}

    @property
    def local_data(self) -> Any:
        """The data of this rank's operators: its shard under torchrun, else all of it."""
        if self.group is None or self.sharded:
            return self.data
        from hessntk.distributed import shard

        try:
            return shard(self.data, rank=self.group.rank, size=self.group.size)
        except (TypeError, ValueError) as err:
            raise CLIError(f"under torchrun the entry point's data is split over the "
                           f"{self.group.size} ranks: {one_line(err)} (return one batch or "
                           "a list of batches, or a DataLoader with a DistributedSampler)"
                           ) from err

    @property
    def classification(self) -> bool:
        """True for a cross-entropy / NLL loss or integer targets (observe logits)."""
        if isinstance(self.loss_fn, (nn.CrossEntropyLoss, nn.NLLLoss)):
            return True
        _, y = next(iter_batches(self.data))
        return torch.is_tensor(y) and not (y.is_floating_point() or y.is_complex())

    @property
    def num_params(self) -> int:
        return sum(p.numel() for p in self.model.parameters() if p.requires_grad)


def load_entry_point(spec: str) -> Callable[[], Any]:
    """Return the function named by ``module:function`` or ``path/to/file.py:function``.

    Raises
    ------
    CLIError
        A malformed spec, a module that cannot be imported, or a missing function.
    """
    target, sep, attr = spec.rpartition(":")
    if not sep or not target or not attr or not attr.replace(".", "_").isidentifier():
        raise CLIError(f"expected the model as MODULE:FUNCTION or FILE.py:FUNCTION; got {spec!r}")
    if target.endswith(".py") or os.sep in target or "/" in target:
        if not os.path.isfile(target):
            raise CLIError(f"model file {target!r} does not exist")
        name = "_hessntk_entry_" + os.path.splitext(os.path.basename(target))[0]
        module_spec = importlib.util.spec_from_file_location(name, target)
        if module_spec is None or module_spec.loader is None:
            raise CLIError(f"cannot import {target!r} as a Python module")
        module = importlib.util.module_from_spec(module_spec)
        folder = os.path.dirname(os.path.abspath(target))
        sys.path.insert(0, folder)  # so the file can import its siblings
        try:
            module_spec.loader.exec_module(module)
        except Exception as err:
            raise CLIError(f"importing {target!r} failed: {type(err).__name__}: {err}") from err
        except SystemExit as err:
            raise CLIError(f"importing {target!r} called sys.exit({err.code!r}); guard the "
                           "script's own code with if __name__ == '__main__'") from err
        finally:
            sys.path.remove(folder)
    else:
        if os.getcwd() not in sys.path and "" not in sys.path:
            sys.path.insert(0, os.getcwd())  # console scripts do not see the current directory
        try:
            module = importlib.import_module(target)
        except ModuleNotFoundError as err:
            raise CLIError(f"cannot import module {target!r} for the model: {err}") from err
        except Exception as err:
            raise CLIError(f"importing {target!r} failed: {type(err).__name__}: {err}") from err
        except SystemExit as err:
            raise CLIError(f"importing {target!r} called sys.exit({err.code!r}); guard the "
                           "script's own code with if __name__ == '__main__'") from err
    fn: Any = module
    for part in attr.split("."):
        fn = getattr(fn, part, None)
        if fn is None:
            raise CLIError(f"{target!r} has no attribute {attr!r}")
    if not callable(fn):
        raise CLIError(f"{spec!r} is not callable; expected a function returning "
                       "(model, loss_fn, data)")
    return fn


def load_problem(spec: str) -> Problem:
    """Call the entry point ``spec`` and check what it returned.

    Raises
    ------
    CLIError
        If the function fails or does not return ``(model, loss_fn, data)`` or a dict with
        those keys.
    """
    fn = load_entry_point(spec)
    try:
        out = fn()
    except Exception as err:
        raise CLIError(f"the model function {spec!r} raised {type(err).__name__}: {err}") from err
    except SystemExit as err:
        raise CLIError(f"the model function {spec!r} called sys.exit({err.code!r}); it must "
                       "return (model, loss_fn, data)") from err
    extra: dict[str, Any] = {}
    if isinstance(out, Mapping):
        missing = [k for k in ("model", "loss_fn", "data") if k not in out]
        unknown = [k for k in out if k not in KEYS]
        if missing or unknown:
            raise CLIError(f"{spec!r} returned a dict with "
                           + (f"no {missing}" if missing else f"unknown keys {unknown}")
                           + "; expected the keys model, loss_fn, data (and optionally "
                           "output_key, outputs_fn)")
        model, loss_fn, data = out["model"], out["loss_fn"], out["data"]
        extra = {k: out[k] for k in ("output_key", "outputs_fn") if k in out}
    elif isinstance(out, (tuple, list)) and len(out) == 3:
        model, loss_fn, data = out
    else:
        raise CLIError(f"{spec!r} returned {type(out).__name__}; expected (model, loss_fn, data) "
                       "or a dict with those keys")
    if not isinstance(model, nn.Module):
        raise CLIError(f"{spec!r} returned a model of type {type(model).__name__}; expected a "
                       "torch.nn.Module")
    if loss_fn is not None and not callable(loss_fn):
        raise CLIError(f"{spec!r} returned a loss_fn that is not callable (None: the model's "
                       "own outputs.loss)")
    if "outputs_fn" in extra and extra["outputs_fn"] is not None and not callable(
            extra["outputs_fn"]):
        raise CLIError(f"{spec!r} returned an outputs_fn that is not callable")
    return Problem(model, loss_fn, data, spec, **extra)


def load_weights(model: nn.Module, path: str) -> None:
    """Load the checkpoint file ``path`` into ``model`` (strict), as one-line CLI errors.

    ``.pt``/``.pth`` files are read with ``torch.load(weights_only=True)`` (a pickle that needs
    a custom class is refused), ``.safetensors`` with safetensors; see
    :func:`hessntk.checkpoints.load_checkpoint`.
    """
    if not os.path.exists(path):
        raise CLIError(f"checkpoint {path!r} does not exist")
    try:
        state = load_checkpoint(path)  # names a directory, a corrupt file, a refused pickle
    except ImportError as err:
        raise CLIError(str(err)) from err
    except ValueError as err:
        raise CLIError(str(err)) from err
    except Exception as err:  # e.g. a corrupt .safetensors header
        raise CLIError(f"could not read checkpoint {path!r}: {type(err).__name__}: {err}") from err
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as err:
        raise CLIError(f"checkpoint {path!r} does not match the model: {err}") from err


DTYPES = {"float32": torch.float32, "float64": torch.float64}


def device_of(name: str | None) -> torch.device | None:
    """Validate ``--device`` (``cpu``, ``cuda`` or ``cuda:N``)."""
    if name is None:
        return None
    try:
        device = torch.device(name)
    except RuntimeError as err:
        raise CLIError(f"unknown device {name!r}; expected cpu or cuda") from err
    if device.type == "cuda" and not torch.cuda.is_available():
        raise CLIError("--device cuda was asked for, but torch sees no CUDA device")
    if device.type not in ("cpu", "cuda"):
        raise CLIError(f"unsupported device {name!r}; expected cpu or cuda")
    return device


def cast(tree: Any, device: torch.device | None, dtype: torch.dtype | None) -> Any:
    """Move tensors of a tensor / tuple / list / dict tree; cast floating ones to ``dtype``.

    Examples
    --------
    >>> cast((torch.zeros(2), torch.zeros(2, dtype=torch.long)), None, torch.float64)[0].dtype
    torch.float64
    """
    if torch.is_tensor(tree):
        return tree.to(device=device, dtype=dtype if tree.is_floating_point() else None)
    if isinstance(tree, Mapping):
        return {k: cast(v, device, dtype) for k, v in tree.items()}
    if isinstance(tree, (tuple, list)):
        return type(tree)(cast(v, device, dtype) for v in tree)
    return tree


def place(problem: Problem, device: torch.device | None, dtype: torch.dtype | None) -> Problem:
    """Put the model and data on ``device`` in ``dtype`` (None keeps them as they are).

    Data given as an iterable of batches (e.g. a ``DataLoader``) is materialised as a list of
    cast batches when a cast is needed.
    """
    if device is None and dtype is None:
        return problem
    model = problem.model.to(device=device, dtype=dtype)
    batches = [cast(b, device, dtype) for b in iter_batches(problem.data)]
    data = batches[0] if len(batches) == 1 else batches
    return dataclasses.replace(problem, model=model, data=data)


def take_inputs(data: Any, n: int, flag: str = "--ntk-samples") -> Any:
    """Return the inputs of the first ``n`` samples of ``data`` (tensor, tuple or dict inputs).

    Raises
    ------
    CLIError
        If ``data`` has fewer than ``n`` samples (named with the option ``flag``).

    Examples
    --------
    >>> batches = [(torch.zeros(3, 2), torch.zeros(3)), (torch.ones(3, 2), torch.zeros(3))]
    >>> take_inputs(batches, 4).shape
    torch.Size([4, 2])
    """
    chunks, count = [], 0
    for x, _ in iter_batches(data):
        keep = min(batch_size(x), n - count)
        chunks.append(slice_tree(x, slice(0, keep)))
        count += keep
        if count >= n:
            break
    if count < n:
        raise CLIError(f"{flag} {n} exceeds the {count} samples of the data; use {flag} "
                       f"{count} or fewer")
    return concat_inputs(chunks)
