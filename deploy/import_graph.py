"""The static import graph of a Python package, read from its source (nothing is imported).

Used by `build_lambda_zip.py` to ship only the modules the rotation handler
imports, and by tests/test_import_graph.py to hold the layout's rules (the core
and the rotation side import nothing from the test bed; no submodule imports
its own package's ``__init__`` names).

An import counts wherever it runs: at module level or inside a function
(a function-level import is still taken when that function runs). Imports
under ``if TYPE_CHECKING:`` do not count: they never run.
"""

from __future__ import annotations

import ast
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Import:
    """One import statement's target, as the module that holds it sees it.

    `target` is the module imported (``a.b`` for ``import a.b`` or
    ``from a.b import c``); `names` are the names a ``from`` import takes
    (empty for a plain ``import``).
    """

    module: str
    target: str
    names: tuple[str, ...]
    line: int


def modules(root: Path, package: str) -> dict[str, Path]:
    """Every module of `package` (its directory is `root / package`): dotted name -> file.

    A package is named by its ``__init__.py`` (``a.b`` for ``a/b/__init__.py``).
    """
    found = {}
    for path in sorted((root / package).rglob("*.py")):
        parts = list(path.relative_to(root).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        found[".".join(parts)] = path
    return found


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _runtime_nodes(node: ast.AST) -> Iterator[ast.AST]:
    """`node`'s descendants, leaving out the bodies of ``if TYPE_CHECKING:``."""
    for child in ast.iter_child_nodes(node):
        if isinstance(child, ast.If) and _is_type_checking(child.test):
            for other in child.orelse:
                yield other
                yield from _runtime_nodes(other)
            continue
        yield child
        yield from _runtime_nodes(child)


def imports_of(name: str, path: Path, *, is_package: bool) -> list[Import]:
    """The imports module `name` (source at `path`) makes when it runs."""
    tree = ast.parse(path.read_text(), filename=str(path))
    # What a relative import is relative to: the package itself, or the module's package.
    base = name.split(".") if is_package else name.split(".")[:-1]
    found = []
    for node in _runtime_nodes(tree):
        if isinstance(node, ast.Import):
            found += [Import(name, alias.name, (), node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                anchor = base[: len(base) - (node.level - 1)]
                target = ".".join([*anchor, *([node.module] if node.module else [])])
            else:
                target = node.module or ""
            names = tuple(alias.name for alias in node.names)
            found.append(Import(name, target, names, node.lineno))
    return found


def graph(root: Path, package: str) -> dict[str, list[Import]]:
    """Module -> its runtime imports, for every module of `package`."""
    found = modules(root, package)
    return {
        name: imports_of(name, path, is_package=path.name == "__init__.py")
        for name, path in found.items()
    }


def _parents(name: str) -> Iterator[str]:
    parts = name.split(".")
    for end in range(1, len(parts)):
        yield ".".join(parts[:end])


def modules_reached(imp: Import, known: Iterable[str]) -> set[str]:
    """The modules of `known` that running `imp` loads: its target, the target's
    parent packages, and each name a ``from`` import takes that is a submodule."""
    known = set(known)
    reached = {imp.target, *_parents(imp.target)}
    reached |= {f"{imp.target}.{n}" for n in imp.names}
    return reached & known


def closure(root: Path, package: str, entries: Iterable[str]) -> set[str]:
    """The modules of `package` that importing `entries` loads, transitively
    (importing a module runs its parent packages' ``__init__`` first)."""
    edges = graph(root, package)
    pending = [m for entry in entries for m in (*_parents(entry), entry)]
    unknown = [m for m in pending if m not in edges]
    if unknown:
        raise ValueError(f"not modules of {package} under {root}: {', '.join(unknown)}")
    seen: set[str] = set()
    while pending:
        current = pending.pop()
        if current in seen:
            continue
        seen.add(current)
        for imp in edges[current]:
            pending += sorted(modules_reached(imp, edges) - seen)
    return seen
