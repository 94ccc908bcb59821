"""The runtime (``kd_components``: what the bundles, ``brats-kd`` and ``deploy/`` import) stays apart from the lab
(``kd_lab``: benchmarks, the main job, results pages), which may import the runtime but never the other way."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RUNTIME = ("kd_components", "deploy", "bundles")


def _imported_modules(path: Path) -> set[str]:
    """Every module an ``import`` or ``from ... import`` statement of ``path`` names (top level or nested)."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
    return names


def test_no_runtime_file_imports_or_names_the_lab() -> None:
    offenders = []
    for folder in RUNTIME:
        for path in sorted((REPO / folder).rglob("*.py")):
            if any(name.split(".")[0] == "kd_lab" for name in _imported_modules(path)):
                offenders.append(str(path.relative_to(REPO)))
        for path in sorted((REPO / folder).rglob("*.json")):  # a _target_ or $import in a bundle config
            if "kd_lab" in path.read_text():
                offenders.append(str(path.relative_to(REPO)))
    assert not offenders, f"runtime files that import the lab: {offenders}"


def test_importing_every_runtime_module_loads_no_lab_module() -> None:
    """Every module of ``kd_components`` imported in a fresh interpreter, then the ``brats-kd`` parser built: no
    ``kd_lab`` module is loaded (catches an import hidden in a function or a dynamic import too, when it runs)."""
    code = (
        "import importlib, json, pkgutil, sys\n"
        "import kd_components\n"
        "names = [m.name for m in pkgutil.walk_packages(kd_components.__path__, 'kd_components.')]\n"
        "for name in names:\n"
        "    importlib.import_module(name)\n"
        "from kd_components.cli import build_parser\n"
        "build_parser()\n"
        "lab = sorted(m for m in sys.modules if m.split('.')[0] == 'kd_lab')\n"
        "print(json.dumps({'imported': len(names), 'lab': lab}))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["imported"] > 50  # the walk found the package's modules
    assert report["lab"] == []


def test_the_detector_sees_a_lab_import(tmp_path: Path) -> None:
    """The static check is not vacuous: an import of the lab, nested in a function, is found."""
    module = tmp_path / "m.py"
    module.write_text("def f():\n    from kd_lab.measure import GIB\n    return GIB\n")
    assert "kd_lab.measure" in _imported_modules(module)
