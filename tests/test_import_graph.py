"""The layout's rules, read from the source's import graph (ast; nothing is imported).

- The core (the sans-I/O decisions) and the rotation side import nothing from
  the test bed, directly or through another module; nor does any other module
  outside it: a production process never loads moto's patches or a stand-in.
- The core stays a core: what it loads of the package is the core, and it
  imports no I/O, thread or client library.
- No upward import: a submodule does not import names from its own package's
  ``__init__`` (or the package itself), which would tie the module to
  everything the package re-exports and invite import cycles. The exceptions
  are listed in `UPWARD_ALLOWED`, each with its reason.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from deploy.import_graph import Import, closure, graph, modules, modules_reached

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = "rotating_pool"
# The test bed's package (moto's patches, the stand-ins). One name, so that a
# rename of the package is a change of this line.
STAND_INS = "rotating_pool.testing"

# The core: modules that decide and do no I/O. An entry is a module, or a
# package followed by ".*" for everything under it (which may not exist yet).
CORE = (
    "rotating_pool.core.*",
    "rotating_pool.errors",
    "rotating_pool.policy",
    "rotating_pool.reads",
    "rotating_pool.secret",
)
# The rotation side, deployed as the Lambda.
ROTATION = ("rotating_pool.rotation.*",)
# What the core never imports (top-level names): I/O, threads, the clients.
NOT_IN_CORE = frozenset({
    "asyncio", "boto3", "botocore", "fcntl", "http", "multiprocessing", "os", "psycopg",
    "psycopg_pool", "socket", "sqlalchemy", "subprocess", "threading", "urllib", "urllib3",
})

# (module, what it imports from its package) -> why that upward import is kept.
UPWARD_ALLOWED: dict[tuple[str, str], str] = {}


def expand(entries: tuple[str, ...], known: set[str]) -> set[str]:
    """The modules `entries` name (see `CORE`); an entry that names no module fails."""
    found = set()
    for entry in entries:
        if entry.endswith(".*"):
            package = entry[: -len(".*")]
            found |= {m for m in known if m == package or m.startswith(f"{package}.")}
        elif entry in known:
            found.add(entry)
        else:
            pytest.fail(f"{entry} is not a module of {PACKAGE}: update the list in {__file__}")
    return found


def in_package(module: str, package: str) -> bool:
    """Whether `module` is `package` or under it."""
    return module == package or module.startswith(f"{package}.")


def stand_in_imports(root: Path, starts: set[str]) -> list[str]:
    """Every import that loads a stand-in module, in the modules `starts` load
    (other than the stand-ins themselves)."""
    edges = graph(root, PACKAGE)
    found = []
    for module in sorted(closure(root, PACKAGE, starts)):
        if in_package(module, STAND_INS):
            continue
        for imp in edges[module]:
            reached = modules_reached(imp, edges) | {imp.target}
            if any(in_package(m, STAND_INS) for m in reached):
                found.append(f"{module} (line {imp.line}) imports {imp.target}")
    return found


def upward_imports(root: Path) -> dict[tuple[str, str], Import]:
    """(module, package.name) -> the import, for each name a module takes from an
    ancestor package's ``__init__`` (a bare ``import package`` counts as the package)."""
    edges = graph(root, PACKAGE)
    found = {}
    for module, imports in edges.items():
        parts = module.split(".")
        ancestors = {".".join(parts[:end]) for end in range(1, len(parts))}
        for imp in imports:
            if imp.target not in ancestors:
                continue
            names = imp.names or ("",)
            for name in names:
                if name and f"{imp.target}.{name}" in edges:
                    continue  # a submodule, not an __init__ name
                found[(module, f"{imp.target}.{name}" if name else imp.target)] = imp
    return found


def known_modules() -> set[str]:
    return set(modules(ROOT, PACKAGE))


def test_the_lists_name_modules_that_exist():
    known = known_modules()
    assert expand(CORE, known) >= {"rotating_pool.policy", "rotating_pool.secret"}
    assert "rotating_pool.rotation.handler" in expand(ROTATION, known)
    assert any(in_package(m, STAND_INS) for m in known), f"{STAND_INS} is gone: rename it here"


@pytest.mark.parametrize("side", ["core", "rotation", "library"])
def test_the_core_and_the_rotation_side_import_nothing_from_the_test_bed(side: str):
    known = known_modules()
    starts = {
        "core": expand(CORE, known),
        "rotation": expand(ROTATION, known),
        "library": {m for m in known if not in_package(m, STAND_INS)},
    }[side]
    assert stand_in_imports(ROOT, starts) == []


def test_the_core_loads_only_the_core_and_no_io_library():
    known = known_modules()
    core = expand(CORE, known)
    loaded = closure(ROOT, PACKAGE, core)
    # Importing any submodule runs the package's __init__, which reads the
    # version from `_version` (a constant, no imports of its own).
    assert loaded - core - {PACKAGE, f"{PACKAGE}._version"} == set()
    edges = graph(ROOT, PACKAGE)
    found = sorted(
        f"{module} (line {imp.line}) imports {imp.target}"
        for module in core
        for imp in edges[module]
        if imp.target.split(".")[0] in NOT_IN_CORE
    )
    assert found == []


def test_no_module_imports_its_own_packages_init_names():
    found = upward_imports(ROOT)
    unexplained = {
        key: f"{key[0]} (line {imp.line}) imports {key[1]}"
        for key, imp in found.items()
        if key not in UPWARD_ALLOWED
    }
    assert unexplained == {}
    # An exception nobody needs any more is dropped from the list.
    assert set(UPWARD_ALLOWED) <= set(found)


# -- the checks catch what they are for (a small package written for the purpose) --------


def write_package(root: Path, files: dict[str, str]) -> None:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)


def test_a_stand_in_reached_through_another_module_is_found(tmp_path: Path):
    write_package(tmp_path, {
        "rotating_pool/__init__.py": "",
        "rotating_pool/policy.py": "from rotating_pool import helper\n",
        "rotating_pool/helper.py": "def f():\n    from rotating_pool.testing.postgres import X\n",
        "rotating_pool/clean.py": (
            "from typing import TYPE_CHECKING\n"
            "if TYPE_CHECKING:\n    from rotating_pool.testing import Y\n"
        ),
        "rotating_pool/testing/__init__.py": "",
        "rotating_pool/testing/postgres.py": "X = 1\n",
    })
    assert stand_in_imports(tmp_path, {"rotating_pool.policy"}) == [
        "rotating_pool.helper (line 2) imports rotating_pool.testing.postgres"
    ]
    # Type-checking imports never run: not a dependency.
    assert stand_in_imports(tmp_path, {"rotating_pool.clean"}) == []


def test_an_upward_import_is_found_and_a_submodule_import_is_not(tmp_path: Path):
    write_package(tmp_path, {
        "rotating_pool/__init__.py": "from rotating_pool.errors import E\n__version__ = '1'\n",
        "rotating_pool/errors.py": "E = 1\n",
        "rotating_pool/telemetry.py": "from rotating_pool import errors\n",
        "rotating_pool/rotation/__init__.py": "from rotating_pool.rotation.cli import main\n",
        "rotating_pool/rotation/cli.py": (
            "import rotating_pool\nfrom .. import __version__\nfrom . import main\n"
        ),
    })
    assert set(upward_imports(tmp_path)) == {
        ("rotating_pool.rotation.cli", "rotating_pool"),
        ("rotating_pool.rotation.cli", "rotating_pool.__version__"),
        ("rotating_pool.rotation.cli", "rotating_pool.rotation.main"),
    }
