"""The ``hessntk`` command line: curvature reports for the embedded demo or your own model.

Commands
--------
``hessntk demo``
    Train a small MLP on ``load_digits`` (seconds, seeded) and report its Hessian spectrum,
    NTK Gram spectrum, IIC and per-layer quantization sensitivity.
``hessntk spectrum MODEL``
    Hessian (or GGN) top eigenvalues, trace, per-layer traces, SLQ density and lower-tail
    exponent; with ``--ntk-samples N`` also the NTK Gram spectrum.
``hessntk iic MODEL``
    The Interpolating Information Criterion with every term.
``hessntk compare MODEL CHECKPOINT...``
    Rank checkpoints by the IIC (a table and a plot).
``hessntk quantization MODEL``
    Per-layer quantization sensitivity, predicted and measured.

``MODEL`` is ``package.module:function`` or ``path/to/file.py:function``, a function returning
``(model, loss_fn, data)`` (see :mod:`hessntk.cli.entrypoints`). Every command writes a report
folder (``--out``): ``report.json`` (every number with its standard error, the settings,
versions and seeds), PNG plots and ``report.html``. Errors are one line on stderr with exit
code 2 (``--debug`` shows the traceback).

The package's rooms: :mod:`~hessntk.cli.parser` (argparse), :mod:`~hessntk.cli.analyses`
(one operator per analysis), :mod:`~hessntk.cli.demo`, :mod:`~hessntk.cli.commands`,
:mod:`~hessntk.cli.entrypoints` (loading the user's model), :mod:`~hessntk.cli.main`; reports,
plots and the resume store are :mod:`hessntk.report`.

Examples
--------
>>> main(["demo", "--quick", "--quiet", "--out", "/tmp/hessntk-demo"])  # doctest: +SKIP
0
"""

from hessntk.cli.main import main

__all__ = ["main"]
