"""The README's "Use it as a library" code blocks run as written (one process, shared imports)."""
import pathlib
import re

import pytest

README = pathlib.Path(__file__).resolve().parents[1] / "README.md"


def _library_blocks() -> list[str]:
    text = README.read_text()
    start = text.index("## Use it as a library")
    end = text.find("\n## ", start + 1)
    section = text[start:] if end < 0 else text[start:end]
    return re.findall(r"```python\n(.*?)```", section, flags=re.S)


def test_readme_has_the_four_library_examples():
    assert len(_library_blocks()) == 4


@pytest.mark.parametrize("index", range(4))
def test_readme_library_example_runs(index, capsys):
    code = _library_blocks()[index]
    namespace: dict = {}
    exec(compile(code, f"README.md:library[{index}]", "exec"), namespace)
    if index == 0:  # DP-SGD: the ledger holds the run, at a finite ε
        assert 0 < namespace["ledger"].epsilon(accountant="pld") < float("inf")
    if index == 2:
        assert namespace["vog"].shape == (64,) and namespace["plis"].shape == (64,)
    if index == 3:
        assert len(set(map(int, namespace["idx"]))) == 100
