"""The ``hessntk`` command line end to end: demo, spectrum, iic, compare, quantization, resume,
report schema and plots, and one-line errors for bad inputs.

Most tests call ``main([...])`` in process (torch starts once); a few go through
``python -m hessntk`` in a subprocess to check the module entry point, stdout and exit codes.
"""

from __future__ import annotations

import io
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from hessntk.cli import main

ROOT = Path(__file__).resolve().parents[1]
MODELS = ROOT / "tests" / "cli_models.py"
ENTRY = f"{MODELS}:build"
FAST = ["--threads", "1"]
TINY_DEMO = ["demo", "--quick", "--n-train", "40", "--width", "16", "--ntk-samples", "20",
             "--probes", "4", "--probes-per-group", "2", "--steps", "10",
             "--trace-matvecs", "10", "--bits", "2", "8", *FAST]
SPECTRUM = ["spectrum", ENTRY, "--k", "2", "--probes", "6", "--probes-per-group", "2",
            "--steps", "12", "--trace-matvecs", "12", *FAST]


def _strict_json(text: str) -> dict:
    def refuse(name: str) -> None:
        raise AssertionError(f"non-finite number {name} in the report JSON")

    return json.loads(text, parse_constant=refuse)


def _numbers(tree, path=""):
    if isinstance(tree, dict):
        for k, v in tree.items():
            yield from _numbers(v, f"{path}.{k}")
    elif isinstance(tree, list):
        for i, v in enumerate(tree):
            yield from _numbers(v, f"{path}[{i}]")
    elif isinstance(tree, (int, float)) and not isinstance(tree, bool):
        yield path, tree


def _run(*argv: str, env: dict | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "MPLBACKEND": "Agg", **(env or {})}
    return subprocess.run([sys.executable, "-m", "hessntk", *argv], capture_output=True,
                          text=True, env=env, timeout=300, cwd=ROOT)


def _one_line_error(stderr: str) -> str:
    lines = [ln for ln in stderr.strip().splitlines() if ln.strip()]
    assert len(lines) == 1, stderr
    assert lines[0].startswith("hessntk: error: "), stderr
    assert "Traceback" not in stderr
    return lines[0]


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    """Two checkpoints of tests/cli_models.py:build (.pt and .safetensors) and bad files."""
    sys.path.insert(0, str(MODELS.parent))
    try:
        import cli_models
    finally:
        sys.path.remove(str(MODELS.parent))
    folder = tmp_path_factory.mktemp("checkpoints")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny training: extra threads only spin on a busy machine
    try:
        early, late = cli_models.train(5), cli_models.train(120)
    finally:
        torch.set_num_threads(threads)
    assert cli_models.accuracy(late) == 1.0
    torch.save(early, folder / "early.pt")
    torch.save({"state_dict": late}, folder / "late.pth")
    paths = {"early": folder / "early.pt", "late": folder / "late.pth"}
    try:
        from safetensors.torch import save_file
    except ImportError:  # pragma: no cover - safetensors is optional
        pass
    else:
        save_file(late, folder / "late.safetensors")
        paths["safetensors"] = folder / "late.safetensors"
    (folder / "corrupt.pt").write_bytes(b"this is not a checkpoint")
    (folder / "corrupt.safetensors").write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{broken")
    torch.save({"0.weight": torch.zeros(3, 3)}, folder / "wrong_shape.pt")
    whole = paths["early"].read_bytes()
    (folder / "truncated.pt").write_bytes(whole[: len(whole) // 2])  # an interrupted copy
    paths.update(corrupt=folder / "corrupt.pt", corrupt_st=folder / "corrupt.safetensors",
                 wrong=folder / "wrong_shape.pt", truncated=folder / "truncated.pt",
                 folder=folder)
    return paths


# -- demo --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def demo_report(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo")
    buf = io.StringIO()
    stdout, sys.stdout = sys.stdout, buf
    try:
        assert main([*TINY_DEMO, "--out", str(out)]) == 0
    finally:
        sys.stdout = stdout
    return out, buf.getvalue()


def test_demo_prints_a_summary_and_writes_the_report_folder(demo_report):
    out, text = demo_report
    for heading in ("Hessian of the mean loss", "NTK Gram", "IIC", "Quantization sensitivity"):
        assert heading in text
    assert "top eigenvalues" in text and "lower-tail exponent" in text and "done in" in text
    assert "negative eigenvalues  [" in text and "95% interval from the quadrature bracket" in text
    for name in ("report.json", "report.html", "hessian_esd.png", "ntk_cdf.png",
                 "quantization_sensitivity.png"):
        assert (out / name).stat().st_size > 0, name
    assert not list(out.glob("*.tmp")) and not list(out.glob(".*.tmp"))


def test_demo_report_json_schema_and_finite_numbers(demo_report):
    out, _ = demo_report
    doc = _strict_json((out / "report.json").read_text())
    assert doc["schema"] == "hessntk.report/1" and doc["command"] == "demo"
    for key in ("argv", "settings", "seeds", "versions", "model", "hessian", "ntk", "iic",
                "quantization", "timings_s", "wall_time_s", "plots", "notes"):
        assert key in doc, key
    assert {"hessntk", "torch", "numpy", "python"} <= set(doc["versions"])
    assert doc["seeds"]["seed"] == 0 and doc["settings"]["probes"] == 4
    h = doc["hessian"]
    assert len(h["top_eigenvalues"]["values"]) == 3
    assert {"value", "stderr", "num_matvecs", "method"} <= set(h["trace"])
    assert set(h["layer_traces"]) == {"0", "2"}
    assert len(h["density"]["nodes"]) == 4 and len(h["density"]["nodes"][0]) == 10
    assert "alpha" in h["lower_tail"] or "error" in h["lower_tail"]
    neg = h["density"]["negative_mass"]  # led by the interval; the Gauss value lies inside
    lo, hi = neg["interval"]
    assert neg["confidence"] == 0.95 and 0 <= lo <= neg["bracket"][0] <= neg["value"]
    assert neg["value"] <= neg["bracket"][1] <= hi <= 1 and "probe_stderr" in neg
    assert len(doc["ntk"]["eigenvalues"]) == 20 * 10
    assert doc["ntk"]["lower_tail"]["alpha"] > 0
    iic = doc["iic"]
    for term in ("value", "regularization", "sharpness", "curvature", "correction", "valid",
                 "reasons", "num_constraints"):
        assert term in iic, term
    assert iic["valid"] is True and iic["num_constraints"] == 400
    q = doc["quantization"]
    assert [row["bits"] for row in q["sensitivity"]["layers"][0]["per_bits"]] == [2, 8]
    assert "measured" in q
    numbers = dict(_numbers(doc))
    assert len(numbers) > 500 and all(math.isfinite(v) for v in numbers.values())
    html = (out / "report.html").read_text()
    for plot in doc["plots"]:
        assert f"src='{plot}'" in html
        assert (out / plot).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_demo_subprocess_json_on_stdout(tmp_path):
    done = _run(*TINY_DEMO, "--n-train", "30", "--ntk-samples", "10", "--json",
                "--out", str(tmp_path / "d"))
    assert done.returncode == 0, done.stderr[-2000:]
    doc = _strict_json(done.stdout)  # stdout holds the JSON only
    assert doc == _strict_json((tmp_path / "d" / "report.json").read_text())
    assert doc["iic"]["num_constraints"] == 300
    assert done.stderr == ""  # no progress bars when stderr is not a terminal


# -- spectrum, iic, quantization on an entry point ----------------------------------------------


def test_spectrum_on_an_entry_point_with_a_checkpoint(tmp_path, checkpoints, capsys):
    out = tmp_path / "s"
    assert main([*SPECTRUM, "--checkpoint", str(checkpoints["late"]), "--ntk-samples", "8",
                 "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "Hessian of the mean loss (1210 parameters, 40 samples)" in text
    doc = _strict_json((out / "report.json").read_text())
    assert doc["model"]["checkpoint"] == str(checkpoints["late"])
    assert doc["ntk"]["size"] == 80 and doc["ntk"]["outputs"] == "logits"
    top = doc["hessian"]["top_eigenvalues"]["values"]
    # The report's top eigenvalue is that of the library on the same weights.
    from hessntk import hessian

    net, loss_fn, data = _build_with(checkpoints["late"])
    ref = hessian.top_eigenvalues(net, loss_fn, data, k=2).eigenvalues
    assert top == pytest.approx(ref.tolist(), rel=1e-5)
    assert (out / "hessian_esd.png").stat().st_size > 0 and (out / "ntk_cdf.png").exists()


def _build_with(path):
    sys.path.insert(0, str(MODELS.parent))
    try:
        import cli_models
    finally:
        sys.path.remove(str(MODELS.parent))
    from hessntk.checkpoints import load_checkpoint

    net, loss_fn, data = cli_models.build()
    net.load_state_dict(load_checkpoint(path))
    return net, loss_fn, data


def test_spectrum_dict_entry_point_float32_and_json(tmp_path, capsys):
    assert main([*SPECTRUM, "--out", str(tmp_path), "--dtype", "float32", "--json",
                 "--curvature", "ggn"]) == 0
    doc = _strict_json(capsys.readouterr().out)
    assert doc["model"]["dtype"] == "torch.float32"
    assert doc["hessian"]["curvature"] == "ggn"
    assert doc["hessian"]["density"]["negative_mass"]["value"] == 0.0  # the GGN is PSD


def test_iic_command_and_regression_observations(tmp_path, checkpoints, capsys):
    assert main(["iic", ENTRY, "--checkpoint", str(checkpoints["late"]), "--out",
                 str(tmp_path / "a"), "--quiet", *FAST]) == 0
    assert capsys.readouterr().out == ""  # --quiet: no summary
    doc = _strict_json((tmp_path / "a" / "report.json").read_text())
    assert doc["iic"]["observations"] == "logits" and doc["iic"]["valid"]
    from hessntk.criteria import iic

    net, _, data = _build_with(checkpoints["late"])
    assert doc["iic"]["value"] == pytest.approx(iic(net, data, observations="logits").value)
    assert main(["iic", f"{MODELS}:build_regression", "--soft", "100", "--out",
                 str(tmp_path / "b"), "--quiet", *FAST]) == 0
    doc = _strict_json((tmp_path / "b" / "report.json").read_text())
    assert doc["iic"]["observations"] == "outputs" and doc["iic"]["soft"] == 100


def test_quantization_command(tmp_path, checkpoints):
    out = tmp_path / "q"
    assert main(["quantization", f"{MODELS}:build_dict", "--checkpoint",
                 str(checkpoints["late"]), "--bits", "2", "4", "--trace-matvecs", "10",
                 "--out", str(out), "--quiet", *FAST]) == 0
    doc = _strict_json((out / "report.json").read_text())
    layers = doc["quantization"]["sensitivity"]["layers"]
    assert {layer["layer"] for layer in layers} == {"0", "2"}
    assert len(doc["quantization"]["measured"]["rows"]) == 4
    assert (out / "quantization_sensitivity.png").stat().st_size > 0


# -- compare and resume -------------------------------------------------------------------------


def test_compare_ranks_checkpoints_and_writes_table_and_plot(tmp_path, checkpoints, capsys):
    paths = [str(checkpoints["early"]), str(checkpoints["late"])]
    if "safetensors" in checkpoints:
        paths.append(str(checkpoints["safetensors"]))
    out = tmp_path / "c"
    assert main(["compare", ENTRY, *paths, "--out", str(out), *FAST]) == 0
    text = capsys.readouterr().out
    assert "Ranking" in text and "early.pt" in text
    doc = _strict_json((out / "report.json").read_text())
    rows = doc["rows"]
    assert [r["rank"] for r in rows] == list(range(1, len(paths) + 1))
    by_name = {r["name"]: r for r in rows}
    assert not by_name["early.pt"]["valid"]  # 5 steps do not interpolate: ranked last
    assert rows[-1]["name"] == "early.pt"
    if "safetensors" in checkpoints:  # the same weights in two formats: the same IIC
        assert by_name["late.safetensors"]["value"] == by_name["late.pth"]["value"]
    csv_lines = (out / "ranking.csv").read_text().splitlines()
    assert csv_lines[0].startswith("rank,name,value") and len(csv_lines) == len(paths) + 1
    assert (out / "ranking.png").stat().st_size > 0


def test_compare_resumes_after_an_interruption(tmp_path, checkpoints, monkeypatch):
    import hessntk.criteria.comparison

    paths = [str(checkpoints["early"]), str(checkpoints["late"])]
    args = ["compare", ENTRY, *paths, "--quiet", *FAST]
    assert main([*args, "--out", str(tmp_path / "straight")]) == 0
    real, calls = hessntk.criteria.comparison.iic, []

    def interrupted(*a, **k):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(*a, **k)

    monkeypatch.setattr(hessntk.criteria.comparison, "iic", interrupted)
    assert main([*args, "--out", str(tmp_path / "resumed")]) == 130
    assert not (tmp_path / "resumed" / "report.json").exists()
    monkeypatch.setattr(hessntk.criteria.comparison, "iic", real)
    assert main([*args, "--out", str(tmp_path / "resumed"), "--resume"]) == 0
    straight = _strict_json((tmp_path / "straight" / "report.json").read_text())
    resumed = _strict_json((tmp_path / "resumed" / "report.json").read_text())
    assert resumed["rows"] == straight["rows"] and resumed["results"] == straight["results"]
    assert any("1 partial result(s) reused" in n for n in resumed["notes"])


def test_spectrum_slq_resumes_after_an_interruption(tmp_path, monkeypatch):
    import hessntk.spectral.quadrature

    assert main([*SPECTRUM, "--quiet", "--out", str(tmp_path / "straight")]) == 0
    real, calls = hessntk.spectral.quadrature.lanczos, []

    def interrupted(*a, **k):  # the third of three probe groups is interrupted
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(*a, **k)

    monkeypatch.setattr(hessntk.spectral.quadrature, "lanczos", interrupted)
    out = tmp_path / "resumed"
    assert main([*SPECTRUM, "--quiet", "--out", str(out)]) == 130
    assert sorted(p.name for p in (out / "partial").iterdir()) == [
        ".hessntk-partial", "hessian-group000.npz", "hessian-group001.npz"]
    monkeypatch.setattr(hessntk.spectral.quadrature, "lanczos", real)
    assert main([*SPECTRUM, "--quiet", "--out", str(out), "--resume"]) == 0
    straight = _strict_json((tmp_path / "straight" / "report.json").read_text())
    resumed = _strict_json((out / "report.json").read_text())
    assert resumed["hessian"]["density"] == straight["hessian"]["density"]
    assert resumed["hessian"]["lower_tail"] == straight["hessian"]["lower_tail"]
    assert any("2 partial result(s) reused" in n for n in resumed["notes"])
    # Resuming with other settings is refused, not merged.
    assert main([*SPECTRUM, "--steps", "11", "--quiet", "--out", str(out), "--resume"]) == 2


# -- progress bars ------------------------------------------------------------------------------


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_bars_on_a_terminal_and_silent_with_quiet(tmp_path, monkeypatch, capsys):
    term = _Terminal()
    monkeypatch.setattr(sys, "stderr", term)
    assert main([*SPECTRUM, "--out", str(tmp_path / "a"), "--json"]) == 0
    assert "Lanczos steps" in term.getvalue() and "SLQ probe groups" in term.getvalue()
    term = _Terminal()
    monkeypatch.setattr(sys, "stderr", term)
    assert main([*SPECTRUM, "--out", str(tmp_path / "b"), "--quiet"]) == 0
    assert term.getvalue() == ""
    capsys.readouterr()


# -- errors: one line, exit code 2 --------------------------------------------------------------


def test_malicious_pickle_checkpoint_is_refused(tmp_path):
    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.pt"

    class Evil:  # unpickling it would run a shell command
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    torch.save({"0.weight": Evil()}, evil)
    done = _run("spectrum", ENTRY, "--checkpoint", str(evil), "--out", str(tmp_path / "o"))
    assert done.returncode == 2
    line = _one_line_error(done.stderr)
    assert "weights_only" in line
    assert not marker.exists()


@pytest.mark.parametrize("case", ["missing", "corrupt", "truncated", "directory",
                                  "corrupt_st", "wrong", "bad_entry", "no_module",
                                  "no_function", "not_a_triple", "resume_garbage"])
def test_bad_inputs_give_one_line_errors(case, tmp_path, checkpoints, capsys):
    if case == "corrupt_st":
        pytest.importorskip("safetensors")
    out = str(tmp_path / "o")
    argv = {
        "missing": ["spectrum", ENTRY, "--checkpoint", str(tmp_path / "nope.pt")],
        "corrupt": ["spectrum", ENTRY, "--checkpoint", str(checkpoints["corrupt"])],
        "truncated": ["iic", ENTRY, "--checkpoint", str(checkpoints["truncated"])],
        "directory": ["spectrum", ENTRY, "--checkpoint", str(checkpoints["folder"])],
        "corrupt_st": ["iic", ENTRY, "--checkpoint", str(checkpoints["corrupt_st"])],
        "wrong": ["compare", ENTRY, str(checkpoints["late"]), str(checkpoints["wrong"])],
        "bad_entry": ["spectrum", "no_colon_here"],
        "no_module": ["spectrum", "surely_not_a_module_xyz:build"],
        "no_function": ["spectrum", f"{MODELS}:nope"],
        "not_a_triple": ["spectrum", f"{MODELS}:not_a_triple"],
        "resume_garbage": ["compare", ENTRY, str(checkpoints["late"]), "--resume"],
    }[case]
    if case == "resume_garbage":
        partial = tmp_path / "o" / "partial"
        partial.mkdir(parents=True)
        (partial / ".hessntk-partial").touch()
        from hessntk.report import file_digest

        digest = file_digest(checkpoints["late"])[:16]
        (partial / f"compare-{digest}.json").write_text("{truncated")
    assert main([*argv, "--out", out, *FAST]) == 2
    captured = capsys.readouterr()
    line = _one_line_error(captured.err)
    expected = {"missing": "does not exist", "corrupt": "the file is corrupt, truncated",
                "truncated": "the file is corrupt, truncated",
                "directory": "is a directory. Pass the weights file inside it",
                "corrupt_st": "corrupt.safetensors", "wrong": "does not match",
                "bad_entry": "MODULE:FUNCTION", "no_module": "cannot import",
                "no_function": "no attribute", "not_a_triple": "expected (model, loss_fn, data)",
                "resume_garbage": "unreadable"}[case]
    assert expected in line
    if case in ("corrupt", "truncated"):  # torch's advice for refused objects is not ours
        assert "weights_only" not in line and "arbitrary code" not in line


def test_argument_errors_exit_2(capsys):
    done = _run("demo", "--probes", "0")  # through the module entry point
    assert done.returncode == 2 and "expected a positive integer" in done.stderr
    with pytest.raises(SystemExit) as exit_info:
        main(["spectrum"])
    assert exit_info.value.code == 2 and "MODEL" in capsys.readouterr().err


@pytest.mark.parametrize("argv, words", [
    (["spectrum", ENTRY, "--trace-matvecs", "3"],
     "argument --trace-matvecs: expected an integer >= 4 (the smallest XTrace sketch)"),
    (["quantization", ENTRY, "--bits", "4", "--trace-matvecs", "2"],
     "argument --trace-matvecs: expected an integer >= 4"),
    (["spectrum", ENTRY, "--seed", "-1"], "argument --seed: expected an integer >= 0")])
def test_flag_values_the_computation_cannot_take_are_refused_by_the_parser(argv, words,
                                                                           capsys):
    # before any model is built, in the flag's words (they once surfaced as "use --method
    # exact", a flag spectrum does not have, and as an unnamed "non-negative integer")
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2 and words in capsys.readouterr().err


def test_float32_ntk_spectrum_and_iic_match_float64(tmp_path, checkpoints):
    """Issue 14 case 1: float32 gave tail exponent 8.56 (float64: 0.75) with most eigenvalues
    "at or below the floor", and a nan IIC with no note."""
    docs = {}
    for dtype in ("float32", "float64"):
        out = tmp_path / dtype
        assert main(["spectrum", ENTRY, "--checkpoint", str(checkpoints["late"]), "--k", "1",
                     "--probes", "2", "--steps", "6", "--trace-matvecs", "6",
                     "--ntk-samples", "40", "--ntk-outputs", "probabilities", "--dtype", dtype,
                     "--out", str(out / "s"),
                     "--quiet", *FAST]) == 0
        assert main(["iic", ENTRY, "--checkpoint", str(checkpoints["late"]), "--dtype", dtype,
                     "--out", str(out / "i"), "--quiet", *FAST]) == 0
        docs[dtype] = (_strict_json((out / "s" / "report.json").read_text()),
                       _strict_json((out / "i" / "report.json").read_text()))
    (s32, i32), (s64, i64) = docs["float32"], docs["float64"]
    # the 40 structural zeros of probabilities (one per sample), and nothing else
    assert s32["ntk"]["num_below_floor"] == s64["ntk"]["num_below_floor"] == 40
    assert s32["ntk"]["lower_tail"]["alpha"] == pytest.approx(
        s64["ntk"]["lower_tail"]["alpha"], rel=1e-3)
    assert i32["iic"]["value"] == pytest.approx(i64["iic"]["value"], rel=1e-5)
    assert not any("NTK:" in note for note in s32["notes"])


def test_an_undefined_iic_is_never_a_silent_nan(tmp_path, checkpoints, monkeypatch):
    import dataclasses

    import hessntk.criteria

    real = hessntk.criteria.iic
    monkeypatch.setattr(hessntk.criteria, "iic", lambda *a, **k: dataclasses.replace(
        real(*a, **k), value=float("nan"), reasons=("K is numerically singular",)))
    assert main(["iic", ENTRY, "--checkpoint", str(checkpoints["late"]), "--out",
                 str(tmp_path), "--quiet", *FAST]) == 0
    doc = json.loads((tmp_path / "report.json").read_text())
    assert any("undefined" in n and "numerically singular" in n and "--soft" in n
               for n in doc["notes"])


# -- issue 14 case 10: the command line's own faults ---------------------------------------------


def test_a_build_that_calls_sys_exit_is_an_error(tmp_path, capsys):
    assert main(["iic", f"{MODELS}:exits", "--out", str(tmp_path), *FAST]) == 2
    line = _one_line_error(capsys.readouterr().err)
    assert "called sys.exit(0)" in line and "must return (model, loss_fn, data)" in line


def test_prints_in_build_never_reach_json_stdout(tmp_path):
    done = _run("spectrum", f"{MODELS}:chatty", "--k", "1", "--probes", "2", "--steps", "4",
                "--trace-matvecs", "4", "--json", "--quiet", "--out", str(tmp_path),
                "--threads", "1")
    assert done.returncode == 0, done.stderr
    doc = _strict_json(done.stdout)
    assert doc["command"] == "spectrum"
    assert "loading the model ..." in done.stderr and "a line from C code" in done.stderr


def test_an_unwritable_out_is_refused_before_any_computation(tmp_path, monkeypatch, capsys):
    import hessntk.cli.entrypoints

    def never(*a, **k):
        raise AssertionError("the model was built before --out was checked")

    monkeypatch.setattr(hessntk.cli.entrypoints, "load_problem", never)
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    assert main(["iic", ENTRY, "--out", str(blocker / "sub"), *FAST]) == 2
    line = _one_line_error(capsys.readouterr().err)
    assert f"--out {blocker / 'sub'}: cannot write there" in line


def test_two_runs_into_one_out_folder(tmp_path, capsys):
    out = tmp_path / "o"
    out.mkdir()
    lock = out / ".hessntk.lock"
    lock.write_text(f"{os.getppid()}\n")  # a live process holds the folder
    argv = [*SPECTRUM, "--out", str(out), "--quiet"]
    assert main(argv) == 2
    line = _one_line_error(capsys.readouterr().err)
    assert f"in use by another hessntk run (process {os.getppid()})" in line
    assert lock.read_text() == f"{os.getppid()}\n" and not (out / "report.json").exists()
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    lock.write_text(f"{dead.pid}\n")  # left by a killed run: taken over, then released
    assert main(argv) == 0
    assert (out / "report.json").exists() and not lock.exists()


def test_more_ntk_samples_than_data_is_an_error(tmp_path, capsys):
    assert main([*SPECTRUM, "--ntk-samples", "5000", "--out", str(tmp_path / "s")]) == 2
    assert "--ntk-samples 5000 exceeds the 40 samples of the data; use --ntk-samples 40" in (
        _one_line_error(capsys.readouterr().err))
    assert main([*TINY_DEMO, "--ntk-samples", "5000", "--out", str(tmp_path / "d")]) == 2
    assert "--ntk-samples 5000 exceeds --n-train 40" in _one_line_error(capsys.readouterr().err)


def test_compare_ranks_a_non_finite_checkpoint_last_and_names_it(tmp_path, checkpoints, capsys):
    state = torch.load(checkpoints["late"], weights_only=True)["state_dict"]
    state["2.weight"][0, 0] = float("inf")
    torch.save(state, tmp_path / "diverged.pt")
    out = tmp_path / "c"
    assert main(["compare", ENTRY, str(checkpoints["late"]), str(tmp_path / "diverged.pt"),
                 "--out", str(out), *FAST]) == 0
    text = capsys.readouterr().out
    assert "diverged.pt not valid: checkpoint 'diverged.pt' has 1 non-finite value(s)" in text
    rows = _strict_json((out / "report.json").read_text())["rows"]
    assert [r["name"] for r in rows] == ["late.pth", "diverged.pt"]
    assert rows[1]["value"] is None and not rows[1]["valid"]


# -- issue 18: help, CLI words, allocation from the command line ---------------------------------


def test_every_option_states_its_default_and_seed_says_what_it_seeds():
    import argparse

    from hessntk.cli.parser import build_parser

    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    seeds = set()
    for name, parser in sub.choices.items():
        for action in parser._actions:
            if action.option_strings and not isinstance(action, argparse._HelpAction):
                assert action.help and "default" in action.help, (name, action.option_strings)
                if "--seed" in action.option_strings:
                    seeds.add(action.help)
                    assert "training" not in action.help or name == "demo"
    assert len(seeds) == len(sub.choices)


def test_quantization_average_bits_chooses_widths_checked_against_uniform(tmp_path, checkpoints,
                                                                           capsys):
    out = tmp_path / "q"
    assert main(["quantization", ENTRY, "--checkpoint", str(checkpoints["late"]), "--bits", "2",
                 "3", "4", "--granularity", "group", "--group-size", "8", "--average-bits", "3",
                 "--out", str(out), *FAST]) == 0
    text = capsys.readouterr().out
    assert "Mixed-precision allocation (checked on the measured loss)" in text
    alloc = _strict_json((out / "report.json").read_text())["quantization"]["allocation"]
    assert alloc["verified"] and alloc["size_bits"] <= alloc["budget_bits"]
    assert alloc["measured_increase"] <= alloc["uniform"]["measured_increase"]
    assert main(["quantization", ENTRY, "--bits", "2", "4", "--bit-budget", "10",
                 "--out", str(tmp_path / "low"), *FAST]) == 2
    line = _one_line_error(capsys.readouterr().err)
    assert line.startswith("hessntk: error: --bit-budget: ") and "--bits 2 4" in line


def test_library_advice_is_put_in_command_line_words(tmp_path, checkpoints):
    assert main(["iic", ENTRY, "--checkpoint", str(checkpoints["early"]), "--out",
                 str(tmp_path), "--quiet", *FAST]) == 0
    notes = " ".join(json.loads((tmp_path / "report.json").read_text())["notes"])
    assert "--soft KAPPA" in notes and "soft=kappa" not in notes


def test_a_pickled_whole_model_is_told_to_save_a_state_dict(tmp_path, capsys):
    sys.path.insert(0, str(MODELS.parent))
    try:
        import cli_models
    finally:
        sys.path.remove(str(MODELS.parent))
    torch.save(cli_models.model(), tmp_path / "whole.pt")
    assert main(["spectrum", ENTRY, "--checkpoint", str(tmp_path / "whole.pt"), "--out",
                 str(tmp_path / "o"), *FAST]) == 2
    line = _one_line_error(capsys.readouterr().err)
    assert "torch.save(model.state_dict(), path)" in line and "\x1b[" not in line
    assert "it needs torch.nn.modules.container.Sequential" in line


def test_spectrum_per_layer_and_smoothing(tmp_path, capsys):
    out = tmp_path / "s"
    assert main([*SPECTRUM, "--per-layer", "--smoothing", "0.25", "--out", str(out)]) == 0
    assert "Per-layer spectra (diagonal blocks" in capsys.readouterr().out
    doc = _strict_json((out / "report.json").read_text())
    layers = doc["hessian"]["layers"]
    assert set(layers) == {"0", "2"} and layers["2"]["n"] == 170
    lo, hi = layers["0"]["negative_mass"]["interval"]
    assert 0 <= lo <= hi <= 1
    smoothed = doc["hessian"]["density"]["smoothed"]
    assert smoothed["smoothing"] == 0.25 and len(smoothed["x"]) == len(smoothed["mass"])
    assert "sd 0.25" in doc["plots"]["hessian_esd.png"]
    with pytest.raises(SystemExit):  # argparse: expected a positive number
        main([*SPECTRUM, "--smoothing", "0", "--out", str(tmp_path / "z")])


def test_spectrum_without_reorthogonalisation(tmp_path):
    docs = {}
    for reorth in ("full", "none"):
        assert main([*SPECTRUM, "--reorth", reorth, "--quiet", "--out",
                     str(tmp_path / reorth)]) == 0
        docs[reorth] = _strict_json((tmp_path / reorth / "report.json").read_text())
    full, none = (docs[r]["hessian"]["density"] for r in ("full", "none"))
    assert none["trace"]["value"] == pytest.approx(full["trace"]["value"], rel=1e-8)
    assert docs["none"]["settings"]["reorth"] == "none"


def test_quantization_memory_refusals_name_the_flag_that_sized_them(tmp_path, monkeypatch,
                                                                    capsys):
    # The per-layer Lanczos basis is sized by --metric, the block traces by --trace-matvecs.
    import hessntk._memory

    monkeypatch.setattr(hessntk._memory, "host_memory", lambda: 400)  # a quarter: 100 B
    for metric, words in (("eigenvalue", "--metric eigenvalue: the Krylov basis of a layer's "
                           "top eigenvalue would hold"),
                          ("trace", "--trace-matvecs 10: the trace estimate would hold")):
        assert main(["quantization", ENTRY, "--bits", "4", "--metric", metric,
                     "--trace-matvecs", "10", "--out", str(tmp_path / metric), *FAST]) == 2
        line = _one_line_error(capsys.readouterr().err)
        assert words in line and "max_memory" not in line


@pytest.mark.parametrize("fits", ["nothing", "the eigenvalues"])
def test_what_does_not_fit_in_memory_names_its_flag(tmp_path, monkeypatch, capsys, fits):
    import hessntk._memory

    sys.path.insert(0, str(MODELS.parent))
    try:
        import cli_models
    finally:
        sys.path.remove(str(MODELS.parent))
    net = cli_models.build()[0]
    n, s = sum(p.numel() for p in net.parameters()), next(net.parameters()).element_size()
    eigsh_bytes = (min(n, 40) + 1) * s * n + 64 * n  # ncv + 1 basis vectors, 8 float64
    trace_bytes = 4 * 15 * s * n  # XTrace with 30 products: four n x 15 arrays
    assert eigsh_bytes < trace_bytes
    budget = 0 if fits == "nothing" else eigsh_bytes
    monkeypatch.setattr(hessntk._memory, "host_memory", lambda: 4 * budget)  # a quarter
    argv = ["spectrum", ENTRY, "--trace-matvecs", "30", "--k", "2", "--out",
            str(tmp_path / "o"), *FAST]
    assert main(argv) == 2
    line = _one_line_error(capsys.readouterr().err)
    if fits == "nothing":
        assert "--k 2: the Krylov basis of the top eigenvalues would hold" in line
    else:
        assert "--trace-matvecs 30: the trace estimate would hold" in line
        assert "lower --trace-matvecs" in line
    assert "max_memory" not in line


@pytest.mark.parametrize("reorth, words", [
    ("partial", "--steps 60: the --reorth partial Lanczos basis of one SLQ probe would hold"),
    ("none", "--steps 60: the Lanczos basis of the --per-layer spectra would hold")])
def test_an_slq_basis_that_does_not_fit_names_steps_and_reorth(tmp_path, monkeypatch, capsys,
                                                               reorth, words):
    # eigsh and the traces fit; one probe's partial basis (8 n 60 bytes) does not, nor does
    # the first layer's (8 x 1040 x 60) under --per-layer; --reorth none (16 n) would.
    import hessntk._memory

    n = 1210  # tests/cli_models.py: 64-16-10, float64
    budget = (41 * 8 + 64) * n  # eigsh's ncv + 1 = 41 basis vectors and 8 float64 vectors
    monkeypatch.setattr(hessntk._memory, "host_memory", lambda: 4 * budget)  # a quarter
    argv = ["spectrum", ENTRY, "--k", "1", "--probes", "2", "--steps", "60", "--reorth",
            reorth, "--trace-matvecs", "12", "--out", str(tmp_path / "o"), *FAST]
    assert main(argv + (["--per-layer"] if reorth == "none" else [])) == 2
    line = _one_line_error(capsys.readouterr().err)
    assert words in line and "max_basis_bytes" not in line
    assert ("use --reorth none" in line) == (reorth == "partial")
    argv[argv.index(reorth)] = "none"
    assert main(argv + ["--quiet"]) == 0  # --reorth none fits (without --per-layer)
    doc = _strict_json((tmp_path / "o" / "report.json").read_text())
    assert doc["settings"]["reorth"] == "none"


def test_terminal_tables_keep_long_layer_names_apart():
    # GPT-2's "transformer.h.0.attn.c_attn" and "transformer.h.1.attn.c_attn" were both
    # printed as "transformer.h.0." / "transformer.h.1." (cut at 16 characters)
    from types import SimpleNamespace

    from hessntk.report.tables import allocation_table

    names = [f"transformer.h.{i}.{part}" for i in (0, 1)
             for part in ("attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj")]
    names.append("transformer.h.0.some.very.deeply.nested.module.name.c_attn")
    alloc = SimpleNamespace(bits=dict.fromkeys(names, 4), size_bits=1, average_bits=4.0,
                            budget_bits=4.0, predicted_increase=0.1, predictor="direct",
                            verified=False, uniform=None, notes=())
    text = allocation_table(alloc)
    rows = text.splitlines()[1 : 1 + len(names)]
    labels = [row.rsplit(None, 1)[0] for row in rows]
    assert labels[:8] == names[:8]  # whole where they fit
    assert labels[8].startswith("...") and names[8].endswith(labels[8][3:])
    assert len(set(labels)) == len(names)
    assert len({len(row) for row in rows}) == 1  # one column width
    alike = {f"{side}_model.encoder.layers.11.self_attn.out_proj": 4 for side in ("text",
                                                                              "vision")}
    alike["x"] = 8  # tails that would read alike: the full names
    text = allocation_table(SimpleNamespace(**{**vars(alloc), "bits": alike}))
    assert all(name in text for name in alike)


def test_low_precision_advice_is_given_in_flags():
    from hessntk._checks import refuse_low_precision
    from hessntk.cli.text import one_line

    with pytest.raises(ValueError) as info:
        refuse_low_precision(7.8e-3, "torch.bfloat16", "eigsh")
    line = one_line(info.value)
    assert "(--dtype float32)" in line and "model." not in line


def test_counts_beyond_the_model_size_are_capped_with_a_note(tmp_path):
    # --k and --steps above n = 1210 (tests/cli_models.py) use n, and the report says so
    out = tmp_path / "o"
    assert main(["spectrum", ENTRY, "--k", "1300", "--probes", "1", "--steps", "1500",
                 "--trace-matvecs", "8", "--quiet", "--out", str(out), *FAST]) == 0
    notes = _strict_json((out / "report.json").read_text())["notes"]
    assert any("--k 1300 is more than the model's n = 1210 parameters" in n for n in notes)
    assert any("--steps 1500 is more than the model's n = 1210" in n for n in notes)
