"""The release files as `make dist` builds them: wheel and sdist, their metadata, and an install.

The wheel is installed into a fresh virtual environment (its dependencies from
the package index), where the package imports and the command runs.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tarfile
import venv
import zipfile
from email.parser import Parser
from pathlib import Path

import pytest
import trove_classifiers

import rotating_pool
from deploy.import_graph import graph

ROOT = Path(__file__).resolve().parents[1]
# Each required dependency, by the name the package imports it under.
REQUIRED = {"sqlalchemy": "sqlalchemy", "psycopg": "psycopg", "boto3": "boto3"}
MATRIX = ROOT / ".ci" / "matrix.py"


@pytest.fixture(scope="module")
def dist(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Wheel and sdist, built as for a release (`python -m build`, isolated)."""
    out = tmp_path_factory.mktemp("dist")
    # setuptools adds the files an earlier build listed in the checkout's egg-info
    # to the sdist: without this, a file MANIFEST.in no longer names stays in.
    shutil.rmtree(ROOT / "rotating_pool.egg-info", ignore_errors=True)
    build = subprocess.run(
        [sys.executable, "-m", "build", "--outdir", str(out), str(ROOT)],
        capture_output=True, text=True, check=False, timeout=600,
    )
    assert build.returncode == 0, build.stdout[-2000:] + build.stderr[-2000:]
    (wheel,) = out.glob("rotating_pool-*.whl")
    (sdist,) = out.glob("rotating_pool-*.tar.gz")
    return {"wheel": wheel, "sdist": sdist}


def wheel_metadata(wheel: Path) -> dict[str, list[str]]:
    with zipfile.ZipFile(wheel) as archive:
        name = next(n for n in archive.namelist() if n.endswith(".dist-info/METADATA"))
        message = Parser().parsestr(archive.read(name).decode())
    fields: dict[str, list[str]] = {}
    for key, value in message.items():
        fields.setdefault(key, []).append(value)
    return fields


def test_twine_accepts_both(dist: dict[str, Path]):
    check = subprocess.run(
        [sys.executable, "-m", "twine", "check", "--strict", *map(str, dist.values())],
        capture_output=True, text=True, check=False,
    )
    assert check.returncode == 0, check.stdout + check.stderr
    assert check.stdout.count("PASSED") == 2


def test_the_wheel_holds_the_package_its_types_and_license(dist: dict[str, Path]):
    with zipfile.ZipFile(dist["wheel"]) as archive:
        names = archive.namelist()
    version = rotating_pool.__version__
    top = {n.split("/")[0] for n in names}
    assert top == {"rotating_pool", f"rotating_pool-{version}.dist-info"}
    assert "rotating_pool/py.typed" in names
    assert f"rotating_pool-{version}.dist-info/licenses/LICENSE" in names
    assert "rotating_pool/rotation/handler.py" in names


def test_the_sdist_carries_the_tests_and_what_they_read(dist: dict[str, Path]):
    with tarfile.open(dist["sdist"]) as archive:
        names = {n.split("/", 1)[1] for n in archive.getnames() if "/" in n}
    wanted = [p.relative_to(ROOT).as_posix() for p in (ROOT / "tests").glob("*.py")]
    wanted += [p.relative_to(ROOT).as_posix() for p in (ROOT / "deploy").glob("*.*")]
    wanted += [p.relative_to(ROOT).as_posix() for p in (ROOT / "docs").rglob("*.md")]
    wanted += ["examples/fargate_sidecar/task-definition.json", "CHANGELOG.md", "LICENSE"]
    wanted += ["README.md", "mkdocs.yml"]
    assert set(wanted) <= names, sorted(set(wanted) - names)
    assert not [n for n in names if n.endswith(".pyc")]


def test_metadata_version_classifiers_and_changelog_agree(dist: dict[str, Path]):
    meta = wheel_metadata(dist["wheel"])
    version = rotating_pool.__version__
    assert meta["Version"] == [version]
    assert meta["License-Expression"] == ["Apache-2.0"]
    assert meta["Requires-Python"] == [">=3.10"]
    for classifier in meta["Classifier"]:
        assert classifier in trove_classifiers.classifiers, classifier
    # One classifier per Python the CI matrix tests, and no other.
    declared = {c.rsplit(" :: ", 1)[1] for c in meta["Classifier"] if re.search(r":: 3\.\d+$", c)}
    matrix = re.search(r"^PYTHONS = \((.*?)\)$", MATRIX.read_text(), re.M)
    assert matrix is not None
    assert declared == set(re.findall(r'"(3\.\d+)"', matrix.group(1)))
    assert min(declared, key=lambda v: int(v.split(".")[1])) == "3.10"
    # The newest section of the changelog is this version.
    first = re.search(r"^## \[([^\]]+)\]", (ROOT / "CHANGELOG.md").read_text(), re.M)
    assert first is not None and first.group(1) == version


def requirements(meta: dict[str, list[str]]) -> dict[str, set[str]]:
    """Distribution -> the extras that require it ("" for a required dependency)."""
    found: dict[str, set[str]] = {}
    for requirement in meta["Requires-Dist"]:
        name = re.match(r"[A-Za-z0-9_.-]+", requirement)
        assert name is not None, requirement
        extra = re.search(r"extra\s*==\s*[\"']([^\"']+)", requirement)
        found.setdefault(name[0].lower(), set()).add(extra[1] if extra else "")
    return found


def test_each_required_dependency_is_one_the_package_imports(dist: dict[str, Path]):
    declared = requirements(wheel_metadata(dist["wheel"]))
    required = {name for name, extras in declared.items() if "" in extras}
    assert required == set(REQUIRED)
    imported = {
        imp.target.split(".")[0]
        for imports in graph(ROOT, "rotating_pool").values()
        for imp in imports
    }
    assert set(REQUIRED.values()) <= imported
    # A peer of the benchmarks only: behind their extra, and never imported by the package.
    assert declared["aws-secretsmanager-caching"] == {"bench"}
    assert "aws_secretsmanager_caching" not in imported


def test_the_wheel_installs_into_a_fresh_venv_and_its_command_runs(
    dist: dict[str, Path], tmp_path: Path
):
    venv.EnvBuilder(with_pip=True).create(tmp_path / "venv")
    python = tmp_path / "venv" / "bin" / "python"
    install = subprocess.run(
        [str(python), "-m", "pip", "install", "--quiet", f"{dist['wheel']}[binary]"],
        capture_output=True, text=True, check=False, timeout=600,
    )
    assert install.returncode == 0, install.stderr[-3000:]

    code = (
        "import importlib.metadata, rotating_pool, rotating_pool.rotation, sqlalchemy; "
        "engine = rotating_pool.create_engine('postgresql+psycopg://', secret_id='app/db'); "
        "assert isinstance(engine, sqlalchemy.Engine); "
        "print(importlib.metadata.version('rotating_pool'), rotating_pool.__file__)"
    )
    run = subprocess.run([str(python), "-I", "-c", code], capture_output=True, text=True,
                         check=False, cwd=tmp_path)
    assert run.returncode == 0, run.stderr
    version, location = run.stdout.split()
    assert version == rotating_pool.__version__
    assert location.startswith(str(tmp_path / "venv"))  # the installed copy, not the checkout

    cli = subprocess.run([str(tmp_path / "venv" / "bin" / "rotating-pool"), "--help"],
                         capture_output=True, text=True, check=False, cwd=tmp_path)
    assert cli.returncode == 0, cli.stderr
    assert all(command in cli.stdout for command in ("bootstrap", "rotate", "status"))
