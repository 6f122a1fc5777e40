"""The reference pages cover the code: every public name has its directive in
docs/reference/api.md, and docs/reference/cli.md shows every option of every
command. When either fails: `python -m tests.docs_reference`, then review the diff.
"""

from __future__ import annotations

import importlib
import re

import pytest

from tests import docs_reference as ref

REGENERATE = "run `python -m tests.docs_reference` (it rewrites docs/reference/api.md and cli.md)"


def documented() -> dict[str, str]:
    """Name -> the dotted path of each `::: path` directive of the API page."""
    paths = re.findall(r"^::: (\S+)$", ref.API_PAGE.read_text(), re.M)
    return {path.rsplit(".", 1)[1]: path for path in paths}


def resolve(path: str) -> object:
    module, name = path.rsplit(".", 1)
    return getattr(importlib.import_module(module), name)


@pytest.mark.parametrize("package", ref.PACKAGES)
def test_every_public_name_has_a_directive(package: str):
    exported = importlib.import_module(package).__all__
    assert ref.public_names(package) == list(exported)
    pages = documented()
    missing = [name for name in exported if name not in pages]
    assert not missing, (
        f"docs/reference/api.md lacks {package}'s public names {missing}: add "
        + "; ".join(f"`{ref.directive(package, name)}`" for name in missing)
        + f", or {REGENERATE}"
    )


@pytest.mark.parametrize("package", ref.PACKAGES)
def test_each_directive_documents_the_object_the_package_exports(package: str):
    # A directive naming a stale module (a name moved) would render something else.
    pkg = importlib.import_module(package)
    pages = documented()
    wrong = [
        pages[name] for name in pkg.__all__
        if name in pages and resolve(pages[name]) is not getattr(pkg, name)
    ]
    assert not wrong, f"these directives name another object than {package} exports: {wrong}"


def test_no_directive_names_something_that_is_not_public():
    public = {name for package in ref.PACKAGES for name in importlib.import_module(package).__all__}
    extra = sorted(set(documented()) - public)
    assert not extra, f"docs/reference/api.md documents names no package exports: {extra}"


ERRORS_PAGE = ref.ROOT / "docs" / "reference" / "errors.md"


def exported_errors() -> dict[str, type[BaseException]]:
    found = {}
    for package in ("rotating_pool", "rotating_pool.rotation"):
        pkg = importlib.import_module(package)
        for name in pkg.__all__:
            value = getattr(pkg, name)
            if isinstance(value, type) and issubclass(value, BaseException):
                found[name] = value
    return found


def test_the_errors_page_names_every_error_with_its_base_classes():
    text = ERRORS_PAGE.read_text()
    tree = text[text.index("```text\n") : text.index("```\n", text.index("```text\n") + 8)]
    problems = []
    for name, error in exported_errors().items():
        line = next((ln for ln in tree.splitlines() if re.search(rf"\b{name}\b", ln)), None)
        if line is None:
            problems.append(f"{name} is not in the hierarchy")
            continue
        builtins = [
            b.__name__ for b in error.__bases__ if b.__module__ == "builtins" and b is not Exception
        ]
        if builtins and f"({', '.join(builtins)})" not in line:
            problems.append(f"{name}: its line should say ({', '.join(builtins)})")
        if not re.search(rf"`[\w.]*\b{name}`", text):
            problems.append(f"{name} is in the tree but nothing on the page says when it is raised")
    assert not problems, "docs/reference/errors.md: " + "; ".join(problems)


def cli_sections() -> dict[str, str]:
    """Command ("" for rotating-pool itself) -> its section of the CLI page."""
    text = ref.CLI_PAGE.read_text()
    sections = {}
    for name, heading in ref.CLI_SECTIONS.items():
        start = text.index(heading + "\n")
        end = text.find("\n## ", start + len(heading))
        sections[name] = text[start : end if end > 0 else None]
    return sections


def test_the_cli_page_has_a_section_per_command():
    assert set(ref.commands()) == set(ref.CLI_SECTIONS), REGENERATE


@pytest.mark.parametrize("command", list(ref.CLI_SECTIONS))
def test_the_cli_page_shows_every_option(command: str):
    parser = ref.commands()[command]
    section = cli_sections()[command]
    missing = [opt for opt in ref.options(parser) if not re.search(rf"{re.escape(opt)}\b", section)]
    name = f"rotating-pool {command}".strip()
    assert not missing, f"docs/reference/cli.md's `{name}` lacks options {missing}: {REGENERATE}"


LAMBDA_PAGE = ref.ROOT / "docs" / "reference" / "lambda-environment.md"
HANDLER = ref.ROOT / "rotating_pool" / "rotation" / "handler.py"


def test_the_lambda_environment_page_lists_what_the_handler_reads():
    # tests/test_deploy_templates.py checks the template against the same table.
    code = HANDLER.read_text()
    read = set(re.findall(r'\bget\("([A-Z][A-Z0-9_]+)"', code))
    read |= set(re.findall(r'\b(?:_number|_flag)\(env, "([A-Z][A-Z0-9_]+)"', code))
    documented_names = set(re.findall(r"^\| `([A-Z][A-Z0-9_]+)` \|", LAMBDA_PAGE.read_text(), re.M))
    assert len(read) >= 8
    assert read == documented_names, (
        f"read but not documented: {sorted(read - documented_names)}; "
        f"documented but not read: {sorted(documented_names - read)}"
    )
