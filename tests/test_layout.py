"""The package's shape: imports run one way (cli -> web -> hooks -> fhir -> clinical; web ->
utilization), no module imports itself back through another, and the clinical core uses no web,
database or HTTP library. An AST walk over every module, imports inside functions included."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "cds_service"

# subpackage -> the subpackages its modules may import (besides its own)
ALLOWED = {
    "clinical": set(),
    "fhir": {"clinical"},
    "hooks": {"clinical", "fhir"},
    "utilization": set(),
    "web": {"hooks", "clinical", "fhir", "utilization"},
    "cli": {"web", "hooks", "clinical", "fhir", "utilization"},
}
# third-party libraries a subpackage must not use: the clinical core reads as plain Python, and
# the CDS Hooks contract knows nothing of HTTP or the database
FORBIDDEN_LIBRARIES = {
    "clinical": {
        "flask",
        "werkzeug",
        "sqlalchemy",
        "alembic",
        "psycopg",
        "requests",
        "urllib3",
        "jwt",
        "gunicorn",
        "plotly",
        "orjson",
    },
    "hooks": {"flask", "werkzeug", "sqlalchemy", "alembic", "psycopg", "gunicorn", "plotly"},
    "fhir": {"flask", "werkzeug", "sqlalchemy", "alembic", "psycopg", "gunicorn", "plotly"},
    "utilization": {"flask", "werkzeug", "requests", "urllib3", "jwt", "gunicorn"},
}


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path, module: str | None = None) -> list[tuple[str, int]]:
    """(absolute module name, line) for every import in the file, relative ones resolved;
    `module`: the file's dotted name, when it is not where the package keeps it."""
    module = module or _module_name(path)
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found += [(alias.name, node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            # "from . import fixtures" imports a module; "from .x import name" imports from x
            found.append((target, node.lineno))
            found += [
                (f"{target}.{alias.name}", node.lineno)
                for alias in node.names
                if (PACKAGE.parent / f"{target}.{alias.name}".replace(".", "/")).with_suffix(".py").exists()
                or (PACKAGE.parent / f"{target}.{alias.name}".replace(".", "/") / "__init__.py").exists()
            ]
    return found


MODULES = {_module_name(path): path for path in sorted(PACKAGE.rglob("*.py")) if "migrations" not in path.parts}


def _subpackage(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[0] == "cds_service" and parts[1] in ALLOWED else None


def test_every_module_lives_in_a_domain_subpackage():
    loose = [
        name for name in MODULES if _subpackage(name) is None and name not in ("cds_service", "cds_service.__main__")
    ]
    assert loose == []


def _violations(module: str, imports: list[tuple[str, int]]) -> list[str]:
    own = _subpackage(module)
    wrong = []
    for target, line in imports if own else ():
        other = _subpackage(target)
        if other is not None and other != own and other not in ALLOWED[own]:
            wrong.append(f"line {line}: {own} imports {target}")
        library = target.split(".")[0]
        if library in FORBIDDEN_LIBRARIES.get(own, ()):
            wrong.append(f"line {line}: {own} uses {library}")
    return wrong


@pytest.mark.parametrize("module", sorted(MODULES))
def test_imports_run_one_way(module):
    assert _violations(module, _imports(MODULES[module])) == []


def test_no_module_imports_itself_back():
    graph = {
        name: {target for target, _ in _imports(path) if target in MODULES and target != name}
        for name, path in MODULES.items()
    }
    # a package's __init__ is imported with any of its modules: it is not an edge back
    graph = {name: {t for t in targets if not name.startswith(t + ".")} for name, targets in graph.items()}
    cycles, state = [], {}

    def visit(node: str, trail: list[str]) -> None:
        state[node] = "open"
        for target in sorted(graph[node]):
            if state.get(target) == "open":
                cycles.append(" -> ".join([*trail[trail.index(target) :], target]))
            elif target not in state:
                visit(target, [*trail, target])
        state[node] = "done"

    for name in sorted(graph):
        if name not in state:
            visit(name, [name])
    assert cycles == []


def test_the_check_finds_a_forbidden_import(tmp_path):
    """The walk itself: a clinical module that uses Flask or reaches into the web layer (at the
    top or inside a function) is caught, and so is hooks importing the store."""
    bad = tmp_path / "bad.py"
    bad.write_text("import flask\n\ndef later():\n    from ..web.app import create_app\n")
    assert _violations("cds_service.clinical.bad", _imports(bad, "cds_service.clinical.bad")) == [
        "line 1: clinical uses flask",
        "line 4: clinical imports cds_service.web.app",
    ]
    bad.write_text("from ..utilization.store import Store\n")
    assert _violations("cds_service.hooks.bad", _imports(bad, "cds_service.hooks.bad")) == [
        "line 1: hooks imports cds_service.utilization.store"
    ]
