"""The package's layering, checked on its imports (every import, also those inside functions).

The layers and the rules are the README's "Architecture" section; an import that breaks one fails
here with the file, the line and the rule. Internal imports are relative, so static tools
(pyright, structure viewers) resolve them by file path; an absolute ``sentistream.`` import inside
the package is refused too.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

import pytest
from conftest import REPO

#: part -> the files / folders (relative to the package root) it is made of.
LAYERS: dict[str, tuple[str, ...]] = {
    "Config": ("engine/config.py", "configs/"),
    "Perception": ("perception/",),
    "Bus": (
        "engine/messages.py",
        "engine/stage.py",
        "engine/worker.py",
        "engine/supervisor.py",
        "engine/security.py",
        "engine/protocol.py",
        "engine/windowing.py",
        "engine/harness.py",  # one stage without a graph, for tests
        "pipelines/definition.py",
    ),
    "Models": ("models/",),
    "Serving": (
        "engine/backends.py",
        "engine/rpc.py",
        "engine/fusion_wire.py",
        "engine/fusion_client.py",
        "engine/fusion_server.py",
        "engine/asr_server.py",
        "engine/live_backend.py",
        "engine/ray_client.py",  # Ray Serve: the session side (no Ray import)
        "engine/ray_node.py",  # Ray Serve: loopback nodes
        "engine/ray_serve.py",  # Ray Serve: the deployment and its launcher
    ),
    "Stages": ("engine/stages/",),
    "App": (
        "cli/",
        "client.py",
        "engine/dashboard.py",
        "engine/view.py",
        "engine/doctor.py",
        "pipelines/standard.py",
        "pipelines/__init__.py",
    ),
    "Bench": ("bench/",),
    "Shared": ("provenance.py", "payloads.py", "__init__.py", "engine/__init__.py", "assets/"),
}

#: (importer, imported, why): imports that must never exist.
NEVER: tuple[tuple[str, str, str], ...] = (
    ("Perception", "Bus", "perception knows no sockets"),
    ("Perception", "Stages", "perception knows no bus"),
    ("Perception", "Serving", "the recogniser is handed its decoder"),
    ("Perception", "Models", "features come before models"),
    ("Models", "Serving", "the live model is handed its backend"),
    ("Models", "Stages", "models know no stage"),
    ("Bus", "Stages", "the runtime knows no concrete stage"),
    ("Bus", "Serving", "the runtime knows no model server"),
    ("Bus", "Models", "the runtime knows no model"),
    ("Bus", "Perception", "the runtime knows no perception"),
    ("Config", "Stages", "a config is plain data"),
    ("Config", "Models", "a config is plain data"),
    ("Shared", "*", "shared helpers import nothing of the package"),
    ("*", "Bench", "no benchmark code in the product (only the command line offers it)"),
    ("*", "App", "commands and UI sit on top"),
)

SKIP_DIRS = {"tests", "scripts", "examples", "docs", "build", ".venv", ".git"}


@dataclass(frozen=True)
class Import:
    source: str  # importing file, relative to the package root
    target: str  # imported file, relative to the package root
    line: int


def package_files(root: Path) -> list[Path]:
    return sorted(
        p
        for p in root.rglob("*.py")
        if not (set(p.relative_to(root).parts[:-1]) & SKIP_DIRS)
        and not any(part.startswith(".") for part in p.relative_to(root).parts)
    )


def _module_file(root: Path, parts: list[str]) -> str | None:
    if not parts:
        return "__init__.py"
    base = root.joinpath(*parts)
    if base.with_suffix(".py").is_file():
        return str(base.with_suffix(".py").relative_to(root))
    if (base / "__init__.py").is_file():
        return str((base / "__init__.py").relative_to(root))
    return None


def internal_imports(root: Path) -> tuple[list[Import], list[str]]:
    """Every import of one package file by another, and the absolute ``sentistream`` imports."""
    found: list[Import] = []
    absolute: list[str] = []
    for path in package_files(root):
        rel = path.relative_to(root)
        package = list(rel.parts[:-1])
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                absolute += [f"{rel}:{node.lineno}" for a in node.names if a.name.split(".")[0] == "sentistream"]
            if not isinstance(node, ast.ImportFrom):
                continue
            if node.level == 0:
                if (node.module or "").split(".")[0] == "sentistream":
                    absolute.append(f"{rel}:{node.lineno}")
                continue
            base = package[: len(package) - (node.level - 1)] if node.level > 1 else list(package)
            mod = base + (node.module.split(".") if node.module else [])
            # `from .pkg import name`: name is a submodule of pkg, or a name defined in pkg
            targets = [_module_file(root, mod + [a.name]) or _module_file(root, mod) for a in node.names]
            found += [Import(str(rel), t, node.lineno) for t in targets if t and t != str(rel)]
    return found, absolute


def part_of(file: str) -> str:
    for name, members in LAYERS.items():
        if any(file == m or (m.endswith("/") and file.startswith(m)) for m in members):
            return name
    raise KeyError(file)


def broken_rules(imports: list[Import]) -> list[str]:
    """One line per import that a NEVER rule forbids ("*" = any other part; Bench may use App, and
    App's command line registers the bench commands)."""
    out = []
    for imp in imports:
        src, dst = part_of(imp.source), part_of(imp.target)
        if src == dst:
            continue
        for a, b, why in NEVER:
            src_matches = a == src or (a == "*" and (src, b) not in (("Bench", "App"), ("App", "Bench")))
            if src_matches and b in (dst, "*"):
                out.append(f"{imp.source}:{imp.line} imports {imp.target} ({src} -> {dst}: {why})")
                break
    return out


def cycles(imports: list[Import]) -> list[list[str]]:
    """Strongly connected components with more than one file (Tarjan)."""
    graph: dict[str, set[str]] = {}
    for imp in imports:
        graph.setdefault(imp.source, set()).add(imp.target)
        graph.setdefault(imp.target, set())
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


# --------------------------------------------------------------------------- the package
@pytest.fixture(scope="module")
def package_imports():
    return internal_imports(REPO)


def test_every_file_is_on_a_layer(package_imports):
    missing = [str(p.relative_to(REPO)) for p in package_files(REPO)]
    unplaced = []
    for f in missing:
        try:
            part_of(f)
        except KeyError:
            unplaced.append(f)
    assert not unplaced, f"files on no layer (add them to LAYERS and the README): {unplaced}"


def test_internal_imports_are_relative(package_imports):
    _, absolute = package_imports
    assert not absolute, f"absolute sentistream imports inside the package (use relative ones): {absolute}"


def test_no_import_breaks_the_layering(package_imports):
    imports, _ = package_imports
    assert len(imports) > 150  # the walk found the package's imports
    assert broken_rules(imports) == []


def test_no_import_cycles(package_imports):
    imports, _ = package_imports
    assert cycles(imports) == []


# --------------------------------------------------------------------------- the checker itself
def _tree(root: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    return root


def test_the_checker_finds_a_wrong_import_and_a_cycle(tmp_path):
    root = _tree(
        tmp_path,
        {
            "__init__.py": "",
            "models/__init__.py": "",
            "models/live.py": "def f():\n    from ..engine.backends import select_backend\n",
            "engine/__init__.py": "",
            "engine/backends.py": "from ..models.live import f\n",
            "perception/asr.py": "from sentistream.engine import stage\n",
        },
    )
    imports, absolute = internal_imports(root)
    assert absolute == ["perception/asr.py:1"]
    assert broken_rules(imports) == [
        "models/live.py:2 imports engine/backends.py (Models -> Serving: the live model is handed its backend)"
    ]
    assert cycles(imports) == [["engine/backends.py", "models/live.py"]]
