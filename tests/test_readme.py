"""The README's commands and code run."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def _blocks(lang: str) -> list[str]:
    return re.findall(rf"```{lang}\n(.*?)```", README, flags=re.S)


def test_readme_opens_with_two_commands_and_ci_runs_the_test_command():
    install_demo, tests = _blocks("bash")[0].strip().splitlines()
    assert "hessntk demo" in install_demo
    assert "pytest" in tests
    assert tests in (ROOT / ".ci" / "run").read_text()


def test_readme_python_examples_run(capsys):
    blocks = _blocks("python")
    assert blocks
    x64 = _jax_x64()
    try:
        for code in blocks:
            exec(compile(code, "README.md", "exec"), {})
    finally:  # a block switches jax_enable_x64 on: give the rest of the suite its setting back
        if x64 is not None:
            import jax

            jax.config.update("jax_enable_x64", x64)


def _jax_x64() -> bool | None:
    try:
        import jax
    except ImportError:
        return None
    return bool(jax.config.jax_enable_x64)
