"""The layers ARCHITECTURE.md promises: pure packages never reach up into orchestration.

Reads the imports of every module (no module is imported, so this costs no JAX start-up).
"""
import ast
import os

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PKG = os.path.join(ROOT, "ecos_jax")
PURE = ("data", "models.py", "per_sample.py", "features.py", "scattering.py", "training", "privacy",
        "valuation", "samplers", "ecos", "coopt", "parallel")
UPPER = ("ecos_jax.experiments", "ecos_jax.reporting")


def _modules(*parts):
    for part in parts:
        path = os.path.join(PKG, part)
        if path.endswith(".py"):
            yield path
            continue
        for d, _, files in os.walk(path):
            yield from (os.path.join(d, f) for f in sorted(files) if f.endswith(".py"))


def _imports(path):
    """(module imported, names taken) for every import statement, lazy ones included."""
    for node in ast.walk(ast.parse(open(path).read())):
        if isinstance(node, ast.Import):
            yield from ((a.name, ()) for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            yield node.module, tuple(a.name for a in node.names)


def _rel(path):
    return os.path.relpath(path, ROOT)


@pytest.mark.parametrize("path", list(_modules(*PURE)), ids=_rel)
def test_pure_packages_import_no_orchestration_and_no_plotting(path):
    for module, _ in _imports(path):
        assert not module.startswith(UPPER), f"{_rel(path)} imports {module}"
        assert module.split(".")[0] != "matplotlib", f"{_rel(path)} imports matplotlib"
        # Progress bars are hooks the experiments layer passes into the training loop.
        assert module.split(".")[0] != "tqdm", f"{_rel(path)} imports tqdm"


@pytest.mark.parametrize("path", list(_modules("experiments", "reporting", "valuation", "ecos", "utils", "training", "privacy",
                                                 "coopt", "parallel", "samplers", "data", "sweep")),
                         ids=_rel)
def test_no_private_name_is_imported_across_modules(path):
    for module, names in _imports(path):
        if module.startswith("ecos_jax"):
            private = [n for n in names if n.startswith("_")]
            assert not private, f"{_rel(path)} imports {private} from {module}"


def test_architecture_lists_every_module():
    text = open(os.path.join(ROOT, "ARCHITECTURE.md")).read()
    missing = [_rel(p) for p in _modules(".") if not p.endswith("__init__.py")
               and os.path.basename(p) not in text]
    assert not missing, f"ARCHITECTURE.md does not list {missing}"
