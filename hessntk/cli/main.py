"""Run a parsed ``hessntk`` command: threads, report folder, summary, one-line errors."""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import time
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from hessntk._progress import reporting
from hessntk.cli.parser import PROG, build_parser
from hessntk.cli.text import CLIError, one_line, settings, versions

__all__ = ["main", "run"]


def _command(name: str):  # noqa: ANN202 - the command's function
    from hessntk.cli import commands, demo

    return {"demo": demo.cmd_demo, "spectrum": commands.cmd_spectrum, "iic": commands.cmd_iic,
            "compare": commands.cmd_compare, "quantization": commands.cmd_quantization}[name]


def run(args: argparse.Namespace, argv: Sequence[str]) -> int:
    """Run a parsed command: compute, write the report folder, print the summary or JSON."""
    try:
        import torch  # noqa: F401
    except ImportError as err:
        raise CLIError("the hessntk command analyses PyTorch models and needs PyTorch: pip "
                       "install 'hessntk[torch]' (or pip install torch)") from err
    from hessntk.cli import ranks

    t0 = time.perf_counter()
    comm = ranks.communicator(args.timeout, args.device)  # torchrun: one process per rank
    if comm is None:
        with _threads(args.threads):
            return _run(args, argv, t0, comm)
    finished = False
    try:
        with _threads(args.threads):
            code = _run(args, argv, t0, comm)
        finished = True
        return code
    finally:
        del comm  # close() collects what still refers to the process group
        ranks.close(finished=finished)


@contextlib.contextmanager
def _threads(n: int | None) -> Iterator[None]:
    """Limit torch's and the BLAS libraries' CPU threads to ``n``; restore them afterwards.

    On a loaded machine, BLAS threads that outnumber the free cores spin-wait: a 1000 x 1000
    ``eigh`` can take 50x longer with 2 threads than with 1.
    """
    import torch

    if not n:
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        try:
            from threadpoolctl import threadpool_limits
        except ImportError:  # numpy's BLAS keeps its threads
            yield
        else:
            with threadpool_limits(limits=n):
                yield
    finally:
        torch.set_num_threads(before)


LOCK = ".hessntk.lock"


@contextlib.contextmanager
def _output_folder(out: Path) -> Iterator[None]:
    """Check that ``--out`` is writable and hold it for this run (before any computation).

    A lock file ``<out>/.hessntk.lock`` holds the process id; a second run into the same folder
    is refused while that process lives (a lock left by a killed run is taken over).
    """
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / f".hessntk-write-test-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as err:
        raise CLIError(f"--out {out}: cannot write there ({err.strerror or err}); choose a "
                       "writable folder") from err
    lock = out / LOCK
    for _ in range(2):
        try:
            fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            break
        except FileExistsError:
            pid = _lock_owner(lock)
            if pid is not None and pid != os.getpid() and _alive(pid):
                raise CLIError(f"--out {out} is in use by another hessntk run (process {pid}); "
                               "wait for it to finish or choose another --out") from None
            lock.unlink(missing_ok=True)  # left by a run that was killed
    else:
        raise CLIError(f"--out {out}: could not take the lock {lock}; choose another --out")
    with os.fdopen(fd, "w") as fh:
        fh.write(f"{os.getpid()}\n")
    try:
        yield
    finally:
        lock.unlink(missing_ok=True)


def _lock_owner(lock: Path) -> int | None:
    try:
        return int(lock.read_text().strip())
    except (OSError, ValueError):
        return None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    return True


@contextlib.contextmanager
def _stdout_to_stderr(enabled: bool) -> Iterator[None]:
    """Send everything written to stdout (by Python or C code) to stderr: ``--json`` keeps
    stdout for the report alone, whatever the user's ``build()`` prints."""
    if not enabled:
        yield
        return
    with contextlib.redirect_stdout(sys.stderr):
        try:
            fd = sys.__stdout__.fileno() if sys.__stdout__ is not None else None
        except (OSError, ValueError):  # no real stdout (e.g. an embedded interpreter)
            fd = None
        if fd is None:
            yield
            return
        sys.__stdout__.flush()
        saved = os.dup(fd)
        try:
            os.dup2(sys.__stderr__.fileno() if sys.__stderr__ is not None else 2, fd)
            yield
        finally:
            sys.__stdout__.flush()
            os.dup2(saved, fd)
            os.close(saved)


def _run(args: argparse.Namespace, argv: Sequence[str], t0: float, comm: Any) -> int:
    from hessntk.cli.ranks import on_rank_zero

    out = Path(args.out)
    lead = comm is None or comm.rank == 0
    with contextlib.ExitStack() as folder:
        on_rank_zero(comm, lambda: folder.enter_context(_output_folder(out)))
        with _stdout_to_stderr(args.json):
            report, results, timings, store = _compute(args, out, comm)
        if not lead:  # rank 0 writes the report and prints
            return 0
        return _finish(args, argv, t0, report, results, timings, store)


def _compute(args: argparse.Namespace, out: Path, comm: Any = None
             ) -> tuple[Any, dict[str, Any], dict[str, float], Any]:
    from hessntk.cli.ranks import RankZeroStore
    from hessntk.report import PartialStore, Report

    timings: dict[str, float] = {}
    lead = comm is None or comm.rank == 0
    report = Report(out if lead else None, f"hessntk {args.command}", {})
    resume = bool(getattr(args, "resume", False))
    store = (PartialStore(out, resume=resume) if comm is None
             else RankZeroStore(comm, out, resume=resume))
    ctx = {"report": report, "store": store, "timings": timings, "group": comm}
    with reporting(enabled=not args.quiet and lead), \
            warnings.catch_warnings(record=True) as caught:
        # hessntk's own warnings become notes of the report (and of the summary); others
        # (third-party deprecation noise) are dropped.
        warnings.simplefilter("always")
        results = _command(args.command)(args, ctx)
    for message in dict.fromkeys(one_line(w.message) for w in caught
                                 if _from_hessntk(w.filename)):
        report.notes.append(message)
    return report, results, timings, store


def _finish(args: argparse.Namespace, argv: Sequence[str], t0: float, report: Any,
            results: dict[str, Any], timings: dict[str, float], store: Any) -> int:
    """Write the report folder and print the summary (or the JSON on stdout)."""
    if store.reused:
        report.notes.append(f"resumed: {store.reused} partial result(s) reused from "
                            f"{store.path}")
    wall = time.perf_counter() - t0
    report.data = {
        "command": args.command, "argv": list(argv), "settings": settings(args),
        "seeds": {"seed": args.seed, "torch_manual_seed": args.seed,
                  "probes": f"hessntk.spectral.rademacher(n, num_probes, seed={args.seed})"},
        "versions": versions(), **results, "timings_s": timings, "wall_time_s": wall,
    }
    paths = report.write()
    if args.json:
        sys.stdout.write(paths["json"].read_text())
    elif not args.quiet:
        text = report.text()
        files = ", ".join(["report.json", *report.plots])
        text += f"\nreport: {paths['html']} ({files})\ndone in {wall:.1f} s\n"
        sys.stdout.write(text)
    return 0


def _from_hessntk(filename: str) -> bool:
    """Whether a warning was issued by hessntk's own code (its stack level points there)."""
    return f"{os.sep}hessntk{os.sep}" in filename


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``hessntk`` console script; returns the exit code.

    Errors are reported as one line, ``hessntk: error: ...``, with exit code 2 (``--debug``
    re-raises them with the traceback); an interrupt exits with 130 and keeps the partial
    results for ``--resume``.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    try:
        return run(args, argv)
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted; partial results are kept in {args.out} "
              "(rerun with --resume where supported)", file=sys.stderr)
        return 130
    except Exception as err:
        if args.debug:
            raise
        prefix = "" if isinstance(err, (CLIError, ValueError, FileNotFoundError)) else (
            f"{type(err).__name__}: ")
        rank = f" (rank {os.environ['RANK']})" if "RANK" in os.environ else ""
        print(f"{PROG}: error{rank}: {prefix}{one_line(err)}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
