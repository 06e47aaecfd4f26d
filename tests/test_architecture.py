"""The layering the README's Architecture section draws, checked on the source.

Pages and ``views/`` may use the core; the core (``tl_dashboard/``) never imports Streamlit, the
UI layer (``views``) or the session keys (``ui_state``); no function in the core is longer than
80 lines and no module longer than 600 (issue 16: small pieces a reader takes in one at a time).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
CORE = sorted((REPO / "tl_dashboard").glob("*.py"))
UI_ONLY = {"ui_state.py"}  # the UI layer's session keys, kept in the package so they are tested plainly


def _imports(path: Path) -> set[str]:
    """Every module a file imports, relative ones with their leading dots (``.ui_state``)."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = "." * node.level + (node.module or "")
            names |= {base, *(f"{base.rstrip('.')}.{a.name}" if node.module else base + a.name for a in node.names)}
    return names


@pytest.mark.parametrize("path", CORE, ids=lambda p: p.name)
def test_core_never_imports_the_ui(path):
    def ui(name: str) -> bool:
        parts = name.split(".")
        return parts[0] in ("streamlit", "views") or ("ui_state" in parts and path.name not in UI_ONLY)

    assert not [n for n in _imports(path) if ui(n)], f"{path.name} imports the UI layer"


def test_core_pieces_stay_small():
    too_long = []
    for path in CORE:
        src = path.read_text()
        if src.count("\n") > 600:
            too_long.append(f"{path.name}: {src.count(chr(10))} lines")
        for node in ast.walk(ast.parse(src)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.end_lineno - node.lineno >= 80:
                too_long.append(f"{path.name}:{node.lineno} {node.name}() {node.end_lineno - node.lineno + 1} lines")
    assert not too_long, "split these (no function over 80 lines, no module over 600):\n" + "\n".join(too_long)


def test_readme_architecture_names_every_module():
    """The README's picture of the layers lists every module there is (and so stays true)."""
    readme = (REPO / "README.md").read_text()
    section = readme[readme.index("## Architecture") :]
    section = section[: section.index("\n## ", 3)]
    modules = [p for p in (*CORE, *(REPO / "views").glob("*.py")) if p.name != "__init__.py"]
    missing = sorted(p.relative_to(REPO).as_posix() for p in modules if p.name not in section)
    assert not missing, f"add to README.md's Architecture section: {missing}"
