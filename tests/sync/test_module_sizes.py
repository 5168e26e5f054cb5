"""The sync core stays readable: no module in `crmsync/sync` over 400 lines, no function there
over 60 (decorators and docstring included)."""

from __future__ import annotations

import ast
from pathlib import Path

import crmsync.sync

SYNC = Path(crmsync.sync.__file__).parent
MAX_MODULE_LINES = 400
MAX_FUNCTION_LINES = 60


def _modules() -> list[Path]:
    return sorted(SYNC.glob("*.py"))


def test_no_sync_module_is_over_400_lines() -> None:
    long = {
        path.name: n
        for path in _modules()
        if (n := len(path.read_text().splitlines())) > MAX_MODULE_LINES
    }
    assert not long


def test_no_sync_function_is_over_60_lines() -> None:
    long: dict[str, int] = {}
    for path in _modules():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                start = min([node.lineno, *(d.lineno for d in node.decorator_list)])
                assert node.end_lineno is not None
                if (n := node.end_lineno - start + 1) > MAX_FUNCTION_LINES:
                    long[f"{path.name}:{node.name}"] = n
    assert not long
