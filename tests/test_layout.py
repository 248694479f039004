"""The package's shape: imports point one way, no module reaches for another's private names, and the
CLI answers without torch where no frame is made (docs/ARCHITECTURE.md)."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest
from common import repo_env

PACKAGE = Path(__file__).resolve().parents[1] / "videostyle"

# Layers, lowest first: a module may import its own layer and those below, never one above.
# (The top package's __init__ is the public facade: it may name anything, lazily.)
LAYERS = [
    {"videostyle.errors", "videostyle.faults", "videostyle.paths", "videostyle.timing", "videostyle.config",
     "videostyle.images", "videostyle.vgg_layers"},
    {"videostyle.media", "videostyle.model", "videostyle.motion", "videostyle.store"},
    {"videostyle.step"},
    {"videostyle.run"},
    {"videostyle.tools"},
    {"videostyle.cli", "videostyle.__main__"},
]


def _modules() -> dict[str, Path]:
    found = {}
    for path in PACKAGE.rglob("*.py"):
        parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        found[".".join(parts)] = path
    return found


def _imports(name: str, path: Path, modules: dict[str, Path]) -> list[tuple[str, str | None]]:
    """``(module, imported name or None)`` for every import of a package module in ``path`` (at any depth:
    an import inside a function still ties the two modules)."""
    is_package = path.name == "__init__.py"
    out = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out += [(alias.name, None) for alias in node.names if alias.name.split(".")[0] == "videostyle"]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = name.split(".") if is_package else name.split(".")[:-1]
                base = base[:len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target.split(".")[0] != "videostyle":
                continue
            for alias in node.names:
                sub = f"{target}.{alias.name}"
                out.append((sub, None) if sub in modules else (target, alias.name))
    return out


def _graph():
    modules = _modules()
    return modules, {name: _imports(name, path, modules) for name, path in modules.items()}


def _layer(module: str) -> int:
    for rank, members in enumerate(LAYERS):
        if any(module == m or module.startswith(m + ".") for m in members):
            return rank
    raise AssertionError(f"{module} is in no layer: add it to LAYERS (and to docs/ARCHITECTURE.md)")


def test_no_module_imports_another_modules_private_name():
    modules, graph = _graph()
    private = [f"{name} imports {target}.{imported}" for name, edges in graph.items()
               for target, imported in edges
               if imported and imported.startswith("_") and not imported.startswith("__") and target != name]
    private += [f"{name} imports the private module {target}" for name, edges in graph.items()
                for target, _ in edges if any(p.startswith("_") and not p.startswith("__") for p in target.split("."))]
    assert private == []


def test_the_package_has_no_import_circle():
    modules, graph = _graph()
    edges = {name: sorted({t for t, _ in targets if t in modules and t != name})
             for name, targets in graph.items() if name != "videostyle"}
    cycles = []
    state: dict[str, int] = {}  # 1: on the path, 2: done

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for nxt in edges.get(node, []):
            if state.get(nxt) == 1:
                cycles.append(" -> ".join(path[path.index(nxt):] + [node, nxt]) if nxt in path else f"{node} -> {nxt}")
            elif nxt not in state:
                visit(nxt, path + [node])
        state[node] = 2

    for name in sorted(edges):
        if name not in state:
            visit(name, [])
    assert cycles == []


def test_imports_point_down_the_layers():
    modules, graph = _graph()
    upward = [f"{name} ({_layer(name)}) imports {target} ({_layer(target)})"
              for name, targets in graph.items() if name != "videostyle"
              for target, _ in targets if target in modules and target != "videostyle"
              and _layer(target) > _layer(name)]
    assert upward == []


@pytest.mark.parametrize("argv, status", [
    (["--help"], 0),
    (["stylize", "--help"], 0),
    (["stylize", "no-such-input.mp4", "--style", "no-such-style.png"], 2),
    (["stylize", "in.mp4", "--no-such-flag"], 2),
])
def test_the_cli_answers_without_importing_torch(tmp_path, argv, status):
    """--help, a missing file and a bad flag answer before torch is imported (each process start that
    imports it costs seconds)."""
    code = ("import sys, runpy\n"
            f"sys.argv = ['videostyle', *{argv!r}]\n"
            "try:\n"
            "    runpy.run_module('videostyle', run_name='__main__')\n"
            "except SystemExit as exc:\n"
            "    code = exc.code\n"
            "else:\n"
            "    code = 0\n"
            "print('TORCH' if 'torch' in sys.modules else 'NO-TORCH', code, file=sys.stderr)\n")
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=repo_env(), capture_output=True,
                         text=True, timeout=120)
    last = out.stderr.strip().splitlines()[-1]
    assert last == f"NO-TORCH {status}", out.stderr


def test_the_config_lists_the_registered_flow_backends():
    """config.FLOWS is checked before torch is imported; motion/flow.py's registry is what runs."""
    from videostyle.config import FLOWS
    from videostyle.motion.flow import FLOW_METHODS

    assert FLOWS == FLOW_METHODS
