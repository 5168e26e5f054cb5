"""Each package declares what it offers (`__all__`), and other packages use only that.

For an import in `src/crmsync` that reaches into another package: `from crmsync.P import X`
needs X in `P.__all__`; `from crmsync.P.M import X` (or `import crmsync.P.M`) needs the module M
in `P.__all__`, and X public: in `M.__all__` when M declares one, never a `_name`.
"""

from __future__ import annotations

import ast
import importlib
from collections.abc import Iterator
from pathlib import Path

import crmsync

ROOT = Path(crmsync.__file__).parent
PACKAGES = sorted(p.parent.name for p in ROOT.glob("*/__init__.py"))


def _imports() -> Iterator[tuple[str, str, list[str], str]]:
    """(importing file, package, [module, ...] path below it, imported name) per import."""
    for path in sorted(ROOT.rglob("*.py")):
        rel = path.relative_to(ROOT)
        here = rel.parts[0] if len(rel.parts) > 1 else None
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                parts = node.module.split(".")
                if parts[0] == "crmsync" and len(parts) > 1 and parts[1] in PACKAGES:
                    if parts[1] != here:
                        for alias in node.names:
                            yield str(rel), parts[1], parts[2:], alias.name
            elif isinstance(node, ast.Import):
                for alias in node.names:
                    parts = alias.name.split(".")
                    if parts[0] == "crmsync" and len(parts) > 2 and parts[1] in PACKAGES:
                        if parts[1] != here:
                            yield str(rel), parts[1], parts[2:3], ""


def test_every_package_declares_all() -> None:
    missing = [
        p for p in PACKAGES if not hasattr(importlib.import_module(f"crmsync.{p}"), "__all__")
    ]
    assert not missing


def test_other_packages_use_only_what_a_package_declares() -> None:
    wrong = []
    for where, package, modules, name in _imports():
        offered = importlib.import_module(f"crmsync.{package}").__all__
        if not modules:
            if name not in offered:
                wrong.append(f"{where}: crmsync.{package}.{name} is not in its __all__")
            continue
        if modules[0] not in offered:
            wrong.append(f"{where}: crmsync.{package}.{modules[0]} is not in its package's __all__")
        if not name:
            continue
        module = importlib.import_module(".".join(["crmsync", package, *modules]))
        declared = getattr(module, "__all__", None)
        if name.startswith("_") or (declared is not None and name not in declared):
            wrong.append(f"{where}: {module.__name__}.{name} is not public")
    assert not wrong


def test_db_knows_nothing_of_the_writer_process() -> None:
    """Imports go one way: `writer_process` uses `db`, never the reverse (no import cycle)."""
    tree = ast.parse((ROOT / "db.py").read_text())
    imported = {
        alias.name if isinstance(node, ast.Import) else f"{node.module}.{alias.name}"
        for node in ast.walk(tree)
        if isinstance(node, ast.Import | ast.ImportFrom)
        for alias in node.names
    }
    assert not any("writer_process" in name for name in imported)
