"""Where the processes behind one agent take turns, and that no other local user can
delay them or make them create a file (`rotating_pool.turns`).

The second-user tests play the other user as `nobody` (a subprocess with that
uid) and need root to do so; CI runs as root. They use a sticky, world-writable
directory of their own as "the temporary directory", as /tmp is.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import pwd
import shutil
import stat
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from rotating_pool import AgentSource, turns
from rotating_pool.testing import LocalAgent

UNSAFE = "not safe to use"
WAITED = "kept its turn"
# A load from the agent's cache takes milliseconds; waiting for a turn held by
# someone else would take half the timeout (1 s here).
TIMEOUT = 2.0
NOT_DELAYED = 0.5


@pytest.fixture
def served(secretsmanager, sm_client) -> Iterator[tuple[LocalAgent, str]]:
    """The agent stand-in in front of moto, and the name of a secret it serves."""
    name = f"turns/{uuid.uuid4().hex[:8]}"
    sm_client.create_secret(
        Name=name, SecretString=json.dumps({"username": "u", "password": "turns-password"})
    )
    with LocalAgent(secretsmanager.client(), port=0) as agent:
        yield agent, name


@pytest.fixture(autouse=True)
def fresh_warnings(monkeypatch) -> None:
    """Each test sees its own first warning (they are given once per process)."""
    monkeypatch.setattr(turns, "_warned", set())


@pytest.fixture
def shared_tmp(monkeypatch) -> Iterator[Path]:
    """A sticky, world-writable directory standing in for /tmp; no XDG_RUNTIME_DIR."""
    path = Path(tempfile.mkdtemp(prefix="rp-shared-tmp-", dir="/tmp"))
    path.chmod(0o1777)
    monkeypatch.setattr(tempfile, "tempdir", str(path))
    monkeypatch.delenv("XDG_RUNTIME_DIR", raising=False)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def source(served: tuple[LocalAgent, str], **kwargs: object) -> AgentSource:
    agent, name = served
    return AgentSource(name, endpoint=agent.endpoint_url, token=agent.token, **kwargs)


def timed_load(agent_source: AgentSource) -> float:
    started = time.monotonic()
    assert agent_source.load().username == "u"
    return time.monotonic() - started


def lock_name(served: tuple[LocalAgent, str]) -> str:
    """The lock file's name: a digest of the endpoint and the secret (as before this change)."""
    agent, name = served
    digest = hashlib.sha256(f"{agent.endpoint_url}\0{name}".encode()).hexdigest()[:24]
    return f"rotating_pool-agent-{digest}.lock"


def warnings_about(caplog: pytest.LogCaptureFixture, needle: str) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.levelno == logging.WARNING and needle in r.getMessage()
    ]


# -- where the lock files are -------------------------------------------------


def test_lock_files_live_in_xdg_runtime_dir_when_it_is_set(served, tmp_path, monkeypatch):
    runtime = tmp_path / "run-user"
    runtime.mkdir(mode=0o700)
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(runtime))
    source(served).load()
    directory = runtime / "rotating_pool"
    assert stat.S_IMODE(directory.stat().st_mode) == 0o700
    assert [p.name for p in directory.iterdir()] == [lock_name(served)]


def test_an_xdg_runtime_dir_that_does_not_exist_means_no_turns_and_one_warning(
    served, tmp_path, monkeypatch, caplog
):
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path / "no-such-dir"))
    agent_source = source(served)
    assert timed_load(agent_source) < NOT_DELAYED
    agent_source.load()
    (warning,) = warnings_about(caplog, UNSAFE)
    assert "no-such-dir" in warning
    assert list(tmp_path.iterdir()) == []


def test_else_in_a_private_per_user_directory_of_the_temp_dir(served, shared_tmp):
    source(served).load()
    directory = shared_tmp / f"rotating_pool-{os.geteuid()}"
    info = directory.lstat()
    assert stat.S_ISDIR(info.st_mode) and info.st_uid == os.geteuid()
    assert stat.S_IMODE(info.st_mode) == 0o700
    assert [p.name for p in directory.iterdir()] == [lock_name(served)]
    assert [p.name for p in shared_tmp.iterdir()] == [directory.name]  # nothing else there


def test_a_per_user_directory_others_may_write_to_is_refused_with_one_warning(
    served, shared_tmp, caplog
):
    directory = shared_tmp / f"rotating_pool-{os.geteuid()}"
    directory.mkdir()
    directory.chmod(0o777)
    agent_source = source(served)
    agent_source.load()
    agent_source.load()
    (warning,) = warnings_about(caplog, UNSAFE)
    assert "mode 0777" in warning
    assert list(directory.iterdir()) == []  # no turn-taking: no lock file made there


def test_a_symlink_in_place_of_the_per_user_directory_is_refused(served, shared_tmp, caplog):
    elsewhere = shared_tmp / "elsewhere"
    elsewhere.mkdir(mode=0o700)
    (shared_tmp / f"rotating_pool-{os.geteuid()}").symlink_to(elsewhere)
    source(served).load()
    assert "is a symlink" in warnings_about(caplog, UNSAFE)[0]
    assert list(elsewhere.iterdir()) == []


def test_a_symlink_in_place_of_the_lock_file_is_not_followed(served, tmp_path, caplog):
    target = tmp_path / "created-through-the-link"
    (tmp_path / lock_name(served)).symlink_to(target)
    assert timed_load(source(served, lock_dir=tmp_path)) < NOT_DELAYED
    assert not target.exists()
    assert warnings_about(caplog, "cannot open")


def test_a_lock_dir_others_may_write_to_is_refused(served, tmp_path, caplog):
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o777)
    source(served, lock_dir=shared).load()
    assert "no group or other write" in warnings_about(caplog, UNSAFE)[0]
    assert list(shared.iterdir()) == []


def test_lock_dir_false_takes_no_turns_and_touches_nothing(served, shared_tmp, caplog):
    source(served, lock_dir=False).load()
    assert list(shared_tmp.iterdir()) == []
    assert not warnings_about(caplog, "")


# -- another local user --------------------------------------------------------

AS_THE_OTHER_USER = """
import fcntl, os, sys
action, path, extra = sys.argv[1:4]
if action == "hold-file":  # pre-create the lock file, open to all, and hold its lock
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    os.fchmod(fd, 0o666)
    fcntl.flock(fd, fcntl.LOCK_EX)
elif action == "symlink":  # plant a symlink to a file of the attacker's choosing
    os.symlink(extra, path)
elif action == "hold-dir":  # take the per-user directory's name, and a lock file in it
    os.mkdir(path)
    os.chmod(path, 0o777)
    fd = os.open(os.path.join(path, extra), os.O_RDWR | os.O_CREAT, 0o666)
    os.fchmod(fd, 0o666)
    fcntl.flock(fd, fcntl.LOCK_EX)
elif action == "symlink-dir":  # the per-user directory's name, a link to the attacker's
    os.mkdir(extra)
    os.chmod(extra, 0o777)
    os.symlink(extra, path)
print("ready", flush=True)
sys.stdin.read()  # hold until the test ends
"""


@contextlib.contextmanager
def other_user(action: str, path: Path, extra: str | Path = "") -> Iterator[None]:
    """Run `action` as `nobody`, which holds what it made until the block ends."""
    if os.geteuid() != 0:
        pytest.skip("playing a second local user (nobody) needs root; CI runs as root")
    try:
        nobody = pwd.getpwnam("nobody")
    except KeyError:
        pytest.skip("no user 'nobody' to play a second local user")
    # The test's own interpreter may sit where nobody cannot reach (~root/.pyenv);
    # the script needs only the standard library.
    python = next(
        (p for p in ("/usr/bin/python3", "/usr/local/bin/python3") if Path(p).exists()), None
    )
    if python is None:
        pytest.skip("no system python3 that the user nobody can run")
    process = subprocess.Popen(
        [python, "-I", "-c", AS_THE_OTHER_USER, action, str(path), str(extra)],
        user=nobody.pw_uid,
        group=nobody.pw_gid,
        extra_groups=[],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
    )
    assert process.stdin is not None and process.stdout is not None
    try:
        assert process.stdout.readline() == b"ready\n", "the other user's set-up failed"
        yield
    finally:
        process.stdin.close()
        process.wait(10)


def test_another_users_held_lock_file_in_the_old_place_does_not_delay_loads(
    served, shared_tmp, caplog
):
    old_place = shared_tmp / lock_name(served)
    with other_user("hold-file", old_place):
        assert old_place.stat().st_uid != os.geteuid()
        agent_source = source(served, timeout=TIMEOUT)
        assert timed_load(agent_source) < NOT_DELAYED
        assert timed_load(source(served, timeout=TIMEOUT)) < NOT_DELAYED
    assert not warnings_about(caplog, WAITED)


def test_another_users_symlink_in_the_old_place_creates_nothing(served, shared_tmp):
    target = shared_tmp / "the-attackers-choice"
    with other_user("symlink", shared_tmp / lock_name(served), target):
        assert timed_load(source(served, timeout=TIMEOUT)) < NOT_DELAYED
    assert not target.exists()


def test_another_user_holding_the_per_user_directorys_name_does_not_delay_loads(
    served, shared_tmp, caplog
):
    taken = shared_tmp / f"rotating_pool-{os.geteuid()}"
    with other_user("hold-dir", taken, lock_name(served)):
        assert timed_load(source(served, timeout=TIMEOUT)) < NOT_DELAYED
        assert timed_load(source(served, timeout=TIMEOUT)) < NOT_DELAYED
        assert [p.name for p in taken.iterdir()] == [lock_name(served)]  # the attacker's only
    (warning,) = warnings_about(caplog, UNSAFE)
    assert "belongs to uid" in warning
    assert not warnings_about(caplog, WAITED)


def test_another_users_symlink_for_the_per_user_directory_creates_nothing(served, shared_tmp):
    attackers = shared_tmp / "attackers-dir"
    with other_user("symlink-dir", shared_tmp / f"rotating_pool-{os.geteuid()}", attackers):
        assert timed_load(source(served, timeout=TIMEOUT)) < NOT_DELAYED
        assert list(attackers.iterdir()) == []
