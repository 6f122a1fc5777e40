"""The deploy guide (docs/guides/deploy.md), run as a reader would run it, against the local bed.

Every ```sh block of the page marked `<!-- run-by: tests/test_docs_deploy.py -->`
runs in a shell from the repository's root, with the project's venv on PATH and
Secrets Manager's endpoint pointed at a local moto. The blocks marked
`<!-- not-run: ... -->` may only hold `sam deploy` / `aws cloudformation deploy`
commands. (tests/test_docs_examples.py checks that no block is left unmarked.)
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from deploy.build_lambda_zip import DEFAULT_PYTHON
from rotating_pool.testing import LocalPostgres, LocalSecretsManager

ROOT = Path(__file__).resolve().parents[1]
PAGE = ROOT / "docs" / "guides" / "deploy.md"
RUN_BY = "<!-- run-by: tests/test_docs_deploy.py -->"
NOT_RUN = "<!-- not-run: "


def shell_blocks(marker: str) -> list[str]:
    """The page's ```sh blocks whose marker line starts with `marker`."""
    pattern = rf"^{re.escape(marker)}[^\n]*\n```sh\n(.*?)```"
    return re.findall(pattern, PAGE.read_text(), re.S | re.M)


def commands(block: str) -> list[str]:
    """The block's commands: continuation lines joined, comments left out."""
    joined = block.replace("\\\n", " ")
    return [ln.strip() for ln in joined.splitlines() if ln.strip() and not ln.startswith("#")]


@pytest.fixture(scope="module")
def bed() -> Iterator[dict[str, str]]:
    """A server and a Secrets Manager of their own (the page's names are fixed),
    with the admin secret the section names; returns the environment to run in."""
    with LocalPostgres() as server, LocalSecretsManager() as sm:
        sm.client().create_secret(Name="db-admin", SecretString=json.dumps(server.admin_document()))
        env = {**os.environ, **sm.env()}
        env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}"
        yield env


def test_only_the_deploy_commands_are_left_out():
    skipped = shell_blocks(NOT_RUN)
    assert skipped, "the page has no deploy commands"
    for block in skipped:
        for command in commands(block):
            assert command.startswith(("sam deploy ", "aws cloudformation deploy ")), command
    every = re.findall(r"^```sh\n", PAGE.read_text(), re.M)
    assert len(every) == len(skipped) + len(shell_blocks(RUN_BY))


def test_every_other_command_runs(bed: dict[str, str]):
    ran = []
    assert len(shell_blocks(RUN_BY)) >= 3
    for block in shell_blocks(RUN_BY):
        run = subprocess.run(["bash", "-euo", "pipefail", "-c", block], cwd=ROOT, env=bed,
                             capture_output=True, text=True, check=False, timeout=900)
        assert run.returncode == 0, f"{block}\n{run.stdout[-2000:]}\n{run.stderr[-3000:]}"
        ran.append(run.stdout)
    output = "\n".join(ran)

    # What the commands were for: the secret, the zip the template names, the status.
    assert "app secret 'app/db': created" in output
    assert (ROOT / "dist" / "lambda" / f"rotation-py{DEFAULT_PYTHON}-x86_64.zip").is_file()
    assert "strategy  alternating" in output
    assert re.search(r"^app_a\s+yes\s+yes", output, re.M)
