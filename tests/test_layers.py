"""The folders are the stages of the pipeline, and lower stages never import higher ones.

Every import anywhere in every module of src/ (inside functions and under TYPE_CHECKING too) is parsed; each
rule names the offending import when it fails. docs/ARCHITECTURE.md draws the same map.
"""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from functools import cache
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SRC = ROOT / "src"
MAX_LINES = 500
HEAVY = ("pytorch_lightning", "lightning", "timm", "torchvision")
# Stage ranks: a module imports modules of its own rank or lower, never higher.
RANKS = (
    (0, ("src.errors", "src.util")),
    (1, ("src.contracts",)),
    (2, ("src.config", "src.data", "src.models")),
    (3, ("src.tracking", "src.estimators.base", "src.estimators.registry", "src.estimators.proxies",
         "src.estimators.subsample", "src.estimators")),
    (4, ("src.sweep", "src.training")),
    (5, ("src.estimators.turnover", "src.analyses")),
    (6, ("src.reporting",)),
)
CLI_RANK = 7  # src/<name>.py entry points and the package's notebook API
RETRAINING_ANALYSES = ("src.analyses.removal", "src.analyses.lastlayer")


def module_name(path: Path) -> str:
    return ".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")


MODULES = {module_name(path): path for path in sorted(SRC.rglob("*.py"))}


def rank(module: str) -> int:
    best = max(((len(prefix), level) for level, prefixes in RANKS for prefix in prefixes
                if module == prefix or module.startswith(prefix + ".")), default=None)
    return CLI_RANK if best is None else best[1]


@cache
def imports(module: str) -> frozenset[str]:
    """Every module named by an import statement anywhere in `module` (project modules resolved)."""
    path = MODULES[module]
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*parts, base] if base else parts)
            found.add(base)
            found |= {f"{base}.{alias.name}" for alias in node.names if f"{base}.{alias.name}" in MODULES}
    return frozenset(found)


def project_imports(module: str) -> set[str]:
    return {name for name in imports(module) if name in MODULES and name != module}


@cache
def reachable(module: str) -> frozenset[str]:
    seen: set[str] = set()
    todo = [module]
    while todo:
        for name in project_imports(todo.pop()):
            if name not in seen:
                seen.add(name)
                todo.append(name)
    return frozenset(seen)


def heavy_imports(module: str) -> list[str]:
    """Lightning, timm or torchvision imports of the module or anything it reaches, as 'module: import'."""
    return [f"{name}: {imported}" for name in sorted({module, *reachable(module)}) for imported in imports(name)
            if imported.split(".")[0] in HEAVY]


@pytest.mark.parametrize("module", sorted(MODULES))
def test_no_module_imports_a_higher_stage(module: str) -> None:
    higher = [f"{module} (stage {rank(module)}) imports {name} (stage {rank(name)})"
              for name in sorted(project_imports(module)) if rank(name) > rank(module)]
    assert not higher, higher


def test_no_import_cycles() -> None:
    cycles = [f"{a} <-> {b}" for a in MODULES for b in project_imports(a) if a in reachable(b) and a < b]
    assert not cycles, cycles


def test_contracts_import_only_errors_util_and_contracts() -> None:
    bad = [f"{module} imports {name}" for module in MODULES if module.startswith("src.contracts")
           for name in project_imports(module) if not name.startswith(("src.errors", "src.util", "src.contracts"))]
    assert not bad, bad


def test_data_imports_no_training() -> None:
    bad = [f"{module} reaches {name}" for module in MODULES if module.startswith("src.data")
           for name in reachable(module) if name.startswith(("src.training", "src.models", "src.estimators"))]
    assert not bad, bad


@pytest.mark.parametrize("module", [m for m in MODULES if m.startswith("src.estimators")
                                    and not m.startswith("src.estimators.turnover")])
def test_estimators_that_reduce_pull_no_training_libraries(module: str) -> None:
    bad = heavy_imports(module) + [f"{module} reaches {name}" for name in reachable(module)
                                   if name.startswith(("src.models", "src.training"))]
    assert not bad, bad


@pytest.mark.parametrize("module", [m for m in MODULES if m.startswith(("src.analyses", "src.reporting"))
                                    and not m.startswith(RETRAINING_ANALYSES)])
def test_analyses_that_do_not_retrain_pull_no_training(module: str) -> None:
    bad = [f"{module} reaches {name}" for name in reachable(module) if name.startswith("src.training")]
    assert not bad + heavy_imports(module), bad + heavy_imports(module)


def _string_constants(path: Path) -> list[tuple[int, str]]:
    """String constants of a module that are not docstrings, with their line numbers."""
    tree = ast.parse(path.read_text())
    docstrings = {id(node.body[0].value) for node in ast.walk(tree)
                  if isinstance(node, (ast.Module, ast.FunctionDef, ast.ClassDef, ast.AsyncFunctionDef))
                  and node.body and isinstance(node.body[0], ast.Expr)
                  and isinstance(node.body[0].value, ast.Constant)}
    return [(node.lineno, node.value) for node in ast.walk(tree) if isinstance(node, ast.Constant)
            and isinstance(node.value, str) and id(node) not in docstrings]


def test_only_the_estimates_contract_knows_the_estimates_file() -> None:
    bad = [f"{module}:{line}: {value!r}" for module, path in MODULES.items() if module != "src.contracts.estimates"
           for line, value in _string_constants(path) if "estimates.npz" in value]
    assert not bad, bad


@pytest.mark.parametrize("module", sorted(MODULES))
def test_modules_stay_short(module: str) -> None:
    lines = len(MODULES[module].read_text().splitlines())
    assert lines <= MAX_LINES, f"{module}: {lines} lines; split it by concern"


def test_the_layering_test_sees_imports_inside_functions_and_type_checking() -> None:
    assert "src.estimators.turnover.job" in imports("src.estimators.turnover.estimator")  # inside a method
    assert "src.contracts.estimates" in imports("src.estimators.base")  # under TYPE_CHECKING


def test_estimate_help_imports_no_training_library() -> None:
    result = subprocess.run([sys.executable, "-X", "importtime", "-m", "src.estimate", "--help"], cwd=ROOT,
                            capture_output=True, text=True, timeout=120, check=True)
    imported = {line.split("|")[-1].strip().split(".")[0] for line in result.stderr.splitlines() if "|" in line}
    assert "numpy" in imported and not imported & set(HEAVY), sorted(imported & set(HEAVY))


# Top-level import names of the distributions pyproject.toml declares (where the two differ).
DISTRIBUTION_OF = {"pytorch_lightning": "pytorch-lightning", "lightning": "pytorch-lightning", "hydra": "hydra-core",
                   "sklearn": "scikit-learn", "PIL": "Pillow", "hydra_plugins": "hydra-core"}


def test_every_third_party_import_is_declared() -> None:
    """A module of src/ that imports a package pyproject.toml does not declare fails on a fresh install."""
    import tomllib

    declared = {re.split(r"[<>=!~\[; ]", spec, maxsplit=1)[0].lower()
                for spec in tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]}
    undeclared = sorted(f"{module} imports {name}" for module in MODULES for name in imports(module)
                        if (top := name.split(".")[0]) != "src" and top not in sys.stdlib_module_names
                        and DISTRIBUTION_OF.get(top, top).lower() not in declared)
    assert not undeclared, f"declare in pyproject.toml: {undeclared}"
