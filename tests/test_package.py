"""The package as users meet it: its public names, types and import weight."""

from __future__ import annotations

import importlib.resources
import inspect
import subprocess
import sys

import rotating_pool


def test_every_public_name_resolves_and_has_a_docstring():
    for name in rotating_pool.__all__:
        value = getattr(rotating_pool, name)
        if inspect.isclass(value) or inspect.isfunction(value):
            assert inspect.getdoc(value), f"{name} has no docstring"


def test_an_unknown_name_is_an_attribute_error():
    try:
        rotating_pool.create_engin  # noqa: B018
    except AttributeError as error:
        assert "create_engin" in str(error)
    else:
        raise AssertionError("no AttributeError")


def test_the_package_ships_py_typed():
    assert importlib.resources.files("rotating_pool").joinpath("py.typed").is_file()


def test_the_rotation_side_does_not_load_sqlalchemy():
    # A rotation Lambda's zip and cold start need not carry the client side.
    code = (
        "import sys, rotating_pool.rotation; "
        "print('sqlalchemy' in sys.modules, 'rotating_pool.engine' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False"]


def test_the_core_loads_no_io_threads_boto3_or_sqlalchemy():
    # rotating_pool.core decides; the shells do the I/O and the waiting.
    modules = ("classify", "ledger", "plan", "reads", "retirement")
    forbidden = ("asyncio", "boto3", "botocore", "psycopg", "socket", "sqlalchemy", "threading")
    code = (
        "import sys; "
        + "; ".join(f"import rotating_pool.core.{name}" for name in modules)
        + f"; print(sorted(m for m in {forbidden!r} if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
    core = importlib.resources.files("rotating_pool") / "core"
    assert sorted(p.name for p in core.iterdir() if p.name.endswith(".py")) == sorted(
        [*(f"{name}.py" for name in modules), "__init__.py"]
    )
