#!/usr/bin/env python3
"""Every Python the package declares, each in a fresh virtual environment.

    python .ci/matrix.py                 # all legs (make matrix; .ci/run calls it)
    python .ci/matrix.py --python 3.10   # one leg

Each leg installs the wheel built from this checkout (with the binary, asyncio
and testing extras) into a new venv made by pyenv's interpreter, checks that the
package and its rotation side import from there, then runs a copy of the tests
(not the checkout's package: the installed one) that need no more than the
package: the unit tests and one rotation of each strategy through the Lambda
handler. The lowest Python runs at the declared dependency floors
(`.ci/constraints-floor.txt`) and also runs the engine, async and
rotation-under-load tests. The lowest and the newest Python also run the
Django backend's and psycopg_pool's tests: the lowest Django (5.2, pinned in
the floor constraints) and the newest Django that installs on the newest
Python. It prints the seconds each leg took.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from deploy.build_lambda_zip import find_interpreter  # noqa: E402

# requires-python = ">=3.10"; the classifiers name the same (tests/test_release.py).
PYTHONS = ("3.10", "3.11", "3.12", "3.13")
FLOOR_PYTHON = PYTHONS[0]
FLOOR_CONSTRAINTS = ROOT / ".ci" / "constraints-floor.txt"
EXTRAS = "binary,asyncio,testing,django"
UNIT_TESTS = (
    "tests/test_policy.py",
    "tests/test_secret.py",
    "tests/test_store.py",
    "tests/test_rotation_settings.py",
    "tests/test_package.py",
)
ROTATION_TESTS = (
    "tests/test_rotation_rotate.py::test_lambda_handler_rotates_as_secrets_manager_drives_it",
)
FLOOR_TESTS = (
    "tests/test_engine.py",
    "tests/test_async.py",
    "tests/test_rotation_under_load.py",
)
# The Django backend and psycopg_pool (tests/test_django_backend.py,
# tests/test_psycopg_pool.py), on the lowest Django (5.2, at the floor leg's
# constraints) and the newest one that installs on the newest Python.
INTEGRATION_TESTS = (
    "tests/test_django_backend.py::test_connections_log_in_with_the_secret_and_psycopg_never_sees_its_options",
    "tests/test_django_backend.py::test_djangos_behaviour_with_credentials_rotating",
    "tests/test_django_backend.py::test_a_refused_login_fails_within_the_deadline_as_operational_error",
    "tests/test_psycopg_pool.py::test_connect_takes_host_from_the_conninfo_and_credentials_from_the_secret",
    "tests/test_psycopg_pool.py::test_a_pool_waiting_on_a_refused_login_times_out_and_does_not_hammer",
)
# What each leg prints the installed version of.
DISTRIBUTIONS = ("SQLAlchemy", "psycopg", "psycopg-binary", "boto3", "botocore",
                 "Django", "psycopg-pool")


@dataclass
class Leg:
    """One Python version: what it installs and runs, and how it went."""

    python: str
    floor: bool
    seconds: float = 0.0
    passed: bool = False
    failure: str = ""

    @property
    def name(self) -> str:
        """The version, and whether it runs at the dependency floors."""
        return f"{self.python}{' (dependency floors)' if self.floor else ''}"

    @property
    def tests(self) -> tuple[str, ...]:
        """The test files (and ids) it runs."""
        ends = self.floor or self.python == PYTHONS[-1]
        return (UNIT_TESTS + ROTATION_TESTS + (FLOOR_TESTS if self.floor else ())
                + (INTEGRATION_TESTS if ends else ()))


class LegFailed(Exception):
    """A step of a leg failed; the message says which."""


def run(command: list[str], *, cwd: Path, title: str) -> str:
    """Run a command, streaming nothing; raise LegFailed with its output's tail."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    result = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True,
                            check=False)
    if result.returncode != 0:
        output = [ln for ln in (result.stdout + result.stderr).strip().splitlines()
                  if not ln.startswith("WARNING: Location")]
        raise LegFailed(f"{title} failed ({result.returncode}):\n" + "\n".join(output[-60:]))
    return result.stdout


def run_leg(leg: Leg, interpreter: Path, wheel: Path, work: Path) -> None:
    """Make the venv, install, check the import, run the tests (raises LegFailed)."""
    env_dir = work / f"venv-{leg.python}"
    run([str(interpreter), "-m", "venv", str(env_dir)], cwd=work, title="venv")
    python = env_dir / "bin" / "python"
    constraints = ["--constraint", str(FLOOR_CONSTRAINTS)] if leg.floor else []
    run([str(python), "-m", "pip", "install", "--quiet", *constraints,
         f"{wheel}[{EXTRAS}]", "pytest"], cwd=work, title="pip install")
    versions = run([str(python), "-I", "-c", (
        "import importlib.metadata as m, rotating_pool, rotating_pool.rotation, sys; "
        f"assert rotating_pool.__file__.startswith(sys.prefix), rotating_pool.__file__; "
        f"print(' '.join(f'{{d}}=={{m.version(d)}}' for d in {DISTRIBUTIONS!r}))"
    )], cwd=work, title="import")
    print(f"  {leg.name}: {versions.strip()}", flush=True)
    out = run([str(python), "-m", "pytest", "-q", "-p", "no:cacheprovider", *leg.tests],
              cwd=work, title="pytest")
    print(f"  {leg.name}: {out.strip().splitlines()[-1]}", flush=True)


def main(argv: list[str] | None = None) -> int:
    """Run the legs; print each one's seconds; exit 1 if one failed, 2 if one cannot run."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--python", action="append", choices=PYTHONS,
                        help="run this leg only (repeatable)")
    args = parser.parse_args(argv)
    legs = [Leg(p, floor=p == FLOOR_PYTHON) for p in args.python or PYTHONS]

    interpreters = {leg.python: find_interpreter(leg.python) for leg in legs}
    missing = [p for p, found in interpreters.items() if found is None]
    if missing:
        for python in missing:
            print(f"matrix: Python {python} is not installed (looked for pyenv's "
                  f"~/.pyenv/versions/{python}.N): `pyenv install {python}`, or leave it out "
                  "with --python", file=sys.stderr)
        return 2

    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="rotating-pool-matrix-") as scratch:
        work = Path(scratch)
        # The tests, apart from the package they test (and the pytest settings).
        shutil.copytree(ROOT / "tests", work / "tests",
                        ignore=shutil.ignore_patterns("__pycache__"))
        shutil.copy(ROOT / "pyproject.toml", work / "pyproject.toml")
        # The Django tests install the example project's app (examples.django_app).
        (work / "examples").mkdir()
        (work / "examples" / "__init__.py").touch()
        shutil.copytree(ROOT / "examples" / "django_app", work / "examples" / "django_app",
                        ignore=shutil.ignore_patterns("__pycache__"))
        run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps",
             "--wheel-dir", str(work / "wheel"), str(ROOT)], cwd=work, title="pip wheel")
        (wheel,) = (work / "wheel").glob("rotating_pool-*.whl")
        print(f"matrix: {wheel.name} built in {time.monotonic() - started:.0f} s", flush=True)
        for leg in legs:
            leg_started = time.monotonic()
            print(f"matrix: Python {leg.name}, {len(leg.tests)} test files/ids", flush=True)
            try:
                run_leg(leg, interpreters[leg.python], wheel, work)  # type: ignore[arg-type]
                leg.passed = True
            except LegFailed as error:
                leg.failure = str(error)
                print(f"  {leg.name}: {error}", flush=True)
            leg.seconds = time.monotonic() - leg_started
            shutil.rmtree(work / f"venv-{leg.python}", ignore_errors=True)

    print("\nmatrix summary")
    for leg in legs:
        print(f"  Python {leg.name:<28} {'passed' if leg.passed else 'FAILED':<7} "
              f"{leg.seconds:6.0f} s")
    print(f"  total {time.monotonic() - started:.0f} s")
    return 0 if all(leg.passed for leg in legs) else 1


if __name__ == "__main__":
    sys.exit(main())
