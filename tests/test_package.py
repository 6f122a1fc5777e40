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
