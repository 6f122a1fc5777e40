"""Every example in the docs runs: each Python and shell block of docs/**/*.md and
README.md is run here against the local bed, or is run by another test, or says
why it is not run (docs/contributing.md, "Every example is run").

Markers, on the line just before a block's fence:
``<!-- not-run: REASON -->`` (REASON required) and ``<!-- run-by: tests/x.py -->``.
"""

from __future__ import annotations

import ast
import contextlib
import doctest
import io
import json
import logging
import os
import re
import shlex
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psycopg
import pytest
from sqlalchemy import Engine
from sqlalchemy.ext.asyncio import AsyncEngine

from rotating_pool.rotation.cli import main as rotating_pool_cli
from rotating_pool.testing import LocalPostgres, LocalSecretsManager

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
PYTHON = {"python", "py"}
PYCON = {"pycon"}
SHELL = {"sh", "bash", "shell"}
CONSOLE = {"console"}
EXAMPLES = PYTHON | PYCON | SHELL | CONSOLE
_FENCE = re.compile(r"^```(\S*)\s*$")
_MARKER = re.compile(r"^<!--\s*(not-run|run-by):(.*?)-->\s*$")
# The bed's app secret's database and the table the examples write to.
PROD_DB = "prod"
EVENTS = "CREATE TABLE events (id bigserial PRIMARY KEY, kind text NOT NULL)"
# The alternating app secret, made as the contributing page says.
BOOTSTRAP = (
    "bootstrap --secret-name app/db --admin-secret-id db-admin --dbname appdb "
    "--create-database --role app"
)
SHELL_TIMEOUT = 120


@dataclass(frozen=True)
class Block:
    """One fenced block of a page."""

    page: Path
    line: int  # of the opening fence, 1-based
    lang: str
    body: str
    marker: str | None  # "not-run" or "run-by"
    detail: str  # the marker's reason or test file

    @property
    def where(self) -> str:
        return f"{self.page.relative_to(ROOT)}:{self.line}"


def blocks_of(page: Path) -> list[Block]:
    """The page's fenced blocks (top-level fences, as CommonMark reads them here)."""
    lines = page.read_text(encoding="utf-8").splitlines()
    found, i = [], 0
    while i < len(lines):
        match = _FENCE.match(lines[i])
        if not match:
            i += 1
            continue
        end = next((j for j in range(i + 1, len(lines)) if lines[j].startswith("```")), None)
        assert end is not None, f"{page.relative_to(ROOT)}:{i + 1}: a fence that never closes"
        marker = _MARKER.match(lines[i - 1]) if i else None
        found.append(Block(
            page=page,
            line=i + 1,
            lang=match.group(1).lower(),
            body="\n".join(lines[i + 1 : end]) + "\n",
            marker=marker.group(1) if marker else None,
            detail=marker.group(2).strip() if marker else "",
        ))
        i = end + 1
    return found


ALL_BLOCKS = [block for page in PAGES for block in blocks_of(page)]
EXAMPLE_BLOCKS = [block for block in ALL_BLOCKS if block.lang in EXAMPLES]
RUN_HERE = [block for block in EXAMPLE_BLOCKS if block.marker is None]


def console_commands(body: str) -> list[str]:
    """A console block's ``$ `` commands, continuation lines joined; the rest is output."""
    commands, current = [], None
    for line in body.splitlines():
        if current is not None:
            current += "\n" + line
        elif line.startswith("$ "):
            current = line[2:]
        if current is not None and not current.endswith("\\"):
            commands.append(current)
            current = None
    return commands


def test_there_are_examples_to_run():
    assert len(RUN_HERE) >= 10, [b.where for b in RUN_HERE]


def test_every_not_run_block_says_why():
    unexplained = [b.where for b in EXAMPLE_BLOCKS if b.marker == "not-run" and not b.detail]
    assert not unexplained, f"`<!-- not-run: REASON -->` needs a reason: {unexplained}"


def test_every_run_by_block_names_a_test_that_reads_its_page():
    for block in (b for b in EXAMPLE_BLOCKS if b.marker == "run-by"):
        test = ROOT / block.detail
        assert test.is_file() and test.name.startswith("test_"), f"{block.where}: no test {test}"
        page = str(block.page.relative_to(ROOT))
        assert page in test.read_text(), f"{block.where}: {block.detail} does not read {page}"


def test_no_marker_is_misspelt():
    # A marker this test cannot read would leave its block unmarked, and run.
    bad = [
        f"{page.relative_to(ROOT)}:{n}: {line.strip()}"
        for page in PAGES
        for n, line in enumerate(page.read_text(encoding="utf-8").splitlines(), 1)
        if re.match(r"\s*<!--\s*(not[ -_]?run|run[ -_]?by)", line, re.I) and not _MARKER.match(line)
    ]
    expected = "markers read `<!-- not-run: REASON -->` or `<!-- run-by: tests/x.py -->`"
    assert not bad, expected + ":\n" + "\n".join(bad)


def test_every_unmarked_example_is_one_this_test_can_run():
    # Caught before anything runs: a block that is neither runnable nor marked.
    problems = []
    for block in RUN_HERE:
        if block.lang in PYTHON:
            try:
                ast.parse(block.body, filename=block.where)
            except SyntaxError as error:
                problems.append(f"{block.where}: not Python ({error.msg}); mark it not-run")
        elif block.lang in CONSOLE and not console_commands(block.body):
            problems.append(f"{block.where}: a console block without `$ ` commands: use ```text")
        elif block.lang in PYCON and ">>> " not in block.body:
            problems.append(f"{block.where}: a pycon block without `>>> ` lines")
    assert not problems, "\n".join(problems)


@pytest.fixture(scope="module")
def bed() -> Iterator[dict[str, str]]:
    """The examples' bed (docs/contributing.md): PostgreSQL, Secrets Manager and the
    secrets `prod/app/db`, `db-admin` and `app/db`; boto3's environment set meanwhile."""
    with (
        LocalPostgres() as server,
        LocalSecretsManager() as sm,
        pytest.MonkeyPatch.context() as patch,
    ):
        for name, value in sm.env().items():
            patch.setenv(name, value)
        patch.setenv("PATH", f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
        patch.delenv("ROTATING_POOL_AGENT_ENDPOINT", raising=False)
        patch.delenv("AWS_TOKEN", raising=False)
        prod = server.create_app_schema(role=PROD_DB, users=("prod_a", "prod_b"))
        user = prod.users[0]
        with psycopg.connect(host=server.host, port=server.port, dbname=PROD_DB, user=user,
                             password=prod.passwords[user], autocommit=True) as conn:
            conn.execute(EVENTS)
        client = sm.client()
        client.create_secret(Name="prod/app/db",
                             SecretString=json.dumps(prod.secret_document("single")))
        client.create_secret(Name="db-admin", SecretString=json.dumps(server.admin_document()))
        assert rotating_pool_cli(shlex.split(BOOTSTRAP)) == 0
        yield dict(os.environ)


def _dispose_engines(namespace: dict[str, object]) -> None:
    for value in namespace.values():
        if isinstance(value, AsyncEngine):
            value.sync_engine.dispose(close=False)
        elif isinstance(value, Engine):
            value.dispose()


@contextlib.contextmanager
def _logging_kept() -> Iterator[None]:
    """Put every logger's level, filters and handlers back afterwards: an example may
    configure logging for a whole process (`redact_botocore_logs`), the tests may not."""
    loggers = [logging.getLogger()] + [
        lg for lg in logging.Logger.manager.loggerDict.values() if isinstance(lg, logging.Logger)
    ]
    saved = [(lg, lg.level, list(lg.filters), list(lg.handlers)) for lg in loggers]
    try:
        yield
    finally:
        for lg, level, filters, handlers in saved:
            lg.setLevel(level)
            lg.filters[:] = filters
            lg.handlers[:] = handlers


def _run_python(block: Block) -> None:
    namespace: dict[str, object] = {"__name__": "__docs_example__"}
    code = compile(block.body, block.where, "exec")
    try:
        with _logging_kept():
            exec(code, namespace)  # the block is the docs' own text, run as a reader would
    finally:
        _dispose_engines(namespace)


def _run_pycon(block: Block) -> None:
    test = doctest.DocTestParser().get_doctest(block.body, {}, block.where, str(block.page),
                                               block.line)
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS)
    runner.run(test)
    assert runner.failures == 0, f"{block.where}: {runner.failures} doctest failures (above)"


def _run_command(where: str, command: str, env: dict[str, str]) -> None:
    """One console command; `rotating-pool` runs in this process (its `main`, what the
    installed script calls), which spares the examples a Python start-up each."""
    words = shlex.split(command.replace("\\\n", " "), comments=True)
    if words[:1] != ["rotating-pool"] or any(w in {"|", "&&", ";", ">"} for w in words):
        _run_shell(where, command, env)
        return
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = rotating_pool_cli(words[1:])
    assert code == 0, f"{where}: `{command}` exited {code}\n{out.getvalue()}\n{err.getvalue()}"
    assert out.getvalue(), f"{where}: `{command}` printed nothing"


def _run_shell(where: str, script: str, env: dict[str, str]) -> None:
    run = subprocess.run(["bash", "-euo", "pipefail", "-c", script], cwd=ROOT, env=env,
                         capture_output=True, text=True, check=False, timeout=SHELL_TIMEOUT)
    assert run.returncode == 0, (
        f"{where}: `{script}` exited {run.returncode}\n{run.stdout[-2000:]}\n{run.stderr[-3000:]}"
    )


@pytest.mark.parametrize("block", RUN_HERE, ids=[b.where for b in RUN_HERE])
def test_example_runs(block: Block, bed: dict[str, str]):
    try:
        if block.lang in PYTHON:
            _run_python(block)
        elif block.lang in PYCON:
            _run_pycon(block)
        elif block.lang in SHELL:
            _run_shell(block.where, block.body, bed)
        else:
            for command in console_commands(block.body):
                _run_command(block.where, command, bed)
    except Exception as error:
        raise AssertionError(
            f"{block.where}: the example failed ({type(error).__name__}): fix it, or mark it "
            "`<!-- not-run: REASON -->` if it cannot run on the bed (docs/contributing.md)"
        ) from error
    finally:
        # A block may point the environment elsewhere (the agent's variables): not the next.
        os.environ.clear()
        os.environ.update(bed)
