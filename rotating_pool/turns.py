"""Taking turns across processes: one lock file per agent and secret, in a private directory.

The worker processes behind one Secrets Manager Agent take turns for the reads
that may miss its cache (`rotating_pool.agent`): an exclusive `fcntl.flock` on
a file that they all open. Anyone who can open that file can hold the turn, so
it lives where no other local user can reach it:

- ``$XDG_RUNTIME_DIR/rotating_pool`` when ``XDG_RUNTIME_DIR`` is set (systemd's
  per-user runtime directory), else ``rotating_pool-<uid>`` in the temporary
  directory; or the directory the application names;
- each directory is checked with `os.lstat` before use: a directory (not a
  symlink), owned by this process's user, that no one else may write to (mode
  0700 for the ones made here). Another user can pre-create the predictable
  name in a shared ``/tmp``; the check then fails, and the process reads without
  taking turns (one warning): slower for Secrets Manager, never delayed;
- lock files are opened with ``O_NOFOLLOW`` and checked with `os.fstat` (a
  regular file of this user's), so that no symlink makes this process create
  or lock a file elsewhere.

The kernel's ``fs.protected_symlinks`` and ``fs.protected_regular`` would stop
some of this in a sticky ``/tmp``, but many hosts and containers run with both
off (see the kernel's ``Documentation/admin-guide/sysctl/fs.rst``).

A turn is released on every exit path (the descriptor is closed), and a
process forked while its parent holds one closes its copy (see `TurnFile`).
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import stat
import tempfile
import threading
import time
from collections.abc import Iterator

try:
    import fcntl
except ImportError:  # not on Windows: reads there are not coordinated across processes
    fcntl = None  # type: ignore[assignment]

__all__ = ["TurnFile", "private_lock_dir"]

logger = logging.getLogger("rotating_pool")

XDG_RUNTIME_DIR = "XDG_RUNTIME_DIR"
_SUBDIR = "rotating_pool"
# How often a waiting process tries the lock: flock has no timed wait.
_POLL = (0.002, 0.02)

# Directories and files already warned about: one warning per process each.
_warned: set[str] = set()
_warned_lock = threading.Lock()


class UnsafeLockPlace(Exception):
    """A lock directory or file fails the check; the message says why."""


def _warn_once(where: str, message: str, *args: object) -> None:
    with _warned_lock:
        if where in _warned:
            return
        _warned.add(where)
    logger.warning(message, *args)


def _check(path: str, info: os.stat_result, *, kind: str, private: bool) -> None:
    """Refuse what another user could have made or could write to."""
    is_kind = stat.S_ISDIR if kind == "directory" else stat.S_ISREG
    if stat.S_ISLNK(info.st_mode):
        raise UnsafeLockPlace(f"{path} is a symlink")
    if not is_kind(info.st_mode):
        raise UnsafeLockPlace(f"{path} is not a {kind}")
    if info.st_uid != os.geteuid():
        raise UnsafeLockPlace(f"{path} belongs to uid {info.st_uid}, not {os.geteuid()}")
    forbidden = 0o077 if private else 0o022
    if info.st_mode & forbidden:
        raise UnsafeLockPlace(
            f"{path} has mode {stat.S_IMODE(info.st_mode):04o} "
            f"({'0700' if private else 'no group or other write'} needed)"
        )


def _own_directory(path: str, *, private: bool, create: bool) -> str:
    if create:
        try:
            os.mkdir(path, 0o700)
        except FileExistsError:
            pass  # checked below, whoever made it
        except OSError as error:
            raise UnsafeLockPlace(
                f"cannot create {path}: {error.strerror or type(error).__name__}"
            ) from None
    try:
        info = os.lstat(path)
    except OSError as error:
        raise UnsafeLockPlace(f"{path}: {error.strerror or type(error).__name__}") from None
    _check(path, info, kind="directory", private=private)
    return path


def private_lock_dir(lock_dir: bool | str | os.PathLike[str]) -> str:
    """The checked directory for lock files: ``True`` the default place (see the
    module docstring), else the directory given (which must be this user's, and
    writable by no one else; it is not created).

    Raises:
        UnsafeLockPlace: the directory fails its check.
    """
    if lock_dir is not True:
        assert lock_dir is not False
        return _own_directory(os.fspath(lock_dir), private=False, create=False)
    runtime = os.environ.get(XDG_RUNTIME_DIR)
    if runtime:
        _own_directory(runtime, private=True, create=False)
        return _own_directory(os.path.join(runtime, _SUBDIR), private=True, create=True)
    name = f"{_SUBDIR}-{os.geteuid()}"
    return _own_directory(os.path.join(tempfile.gettempdir(), name), private=True, create=True)


class TurnFile:
    """The turn the processes behind one agent take for one secret.

    Args:
        lock_dir: True the default private directory, a path a directory of
            this user's, False no turn-taking.
        key: what the turn is for (the agent endpoint and the secret id); the
            file is named by its digest, since it may hold any character.

    Nothing is touched until the first `turn`.
    """

    def __init__(self, lock_dir: bool | str | os.PathLike[str], key: str) -> None:
        self._lock_dir = lock_dir
        digest = hashlib.sha256(key.encode()).hexdigest()[:24]
        self._name = f"rotating_pool-agent-{digest}.lock"

    @property
    def enabled(self) -> bool:
        """Whether turns are taken at all (not with ``lock_dir=False``, nor on Windows)."""
        return self._lock_dir is not False and fcntl is not None

    def path(self) -> str | None:
        """The lock file, in its checked directory; None (with one warning) when
        the directory fails its check, or when turns are not taken."""
        if not self.enabled:
            return None
        try:
            directory = private_lock_dir(self._lock_dir)
        except UnsafeLockPlace as error:
            _warn_once(
                f"dir:{self._lock_dir}",
                "reading the Secrets Manager Agent without taking turns with the other "
                "processes behind it: the lock directory is not safe to use (%s)",
                error,
            )
            return None
        return os.path.join(directory, self._name)

    @contextlib.contextmanager
    def turn(self, patience: float) -> Iterator[bool | None]:
        """Hold the turn, waiting at most `patience` seconds for it; yields True
        when held, False when waited for in vain, None when no turn is taken
        here (``lock_dir=False``, Windows, or an unsafe place: warned once).

        The lock file is closed, and the turn released, however the block ends.
        """
        path = self.path()
        fd = _open_turn(path) if path is not None else None
        if fd is None:
            yield None
            return
        try:
            try:
                held: bool | None = _lock(fd, patience)
            except OSError as error:  # ENOLCK on some network file systems
                _warn_once(
                    f"flock:{path}",
                    "reading the Secrets Manager Agent without taking turns: cannot lock %s (%s)",
                    path,
                    error.strerror or type(error).__name__,
                )
                held = None
            yield held
        finally:
            _close_turn(fd)


# The lock files this process has open, so that a child forked meanwhile (a
# pre-forking server's new worker) closes its copies: a flock belongs to the
# open file, which the child shares, and the child never runs the code that
# would close it, so it would hold the turn for its whole life.
_turns_open: set[int] = set()
_turns_lock = threading.Lock()

# O_NONBLOCK: opening whatever sits at the name must never block.
_OPEN_FLAGS = os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NONBLOCK | getattr(os, "O_NOFOLLOW", 0)


def _open_turn(path: str) -> int | None:
    """The lock file, opened and checked; None (with one warning) when unsafe."""
    try:
        # Opened and noted under the lock that fork() takes first (below): a
        # child never gets a lock file's descriptor that is not in the set.
        with _turns_lock:
            fd = os.open(path, _OPEN_FLAGS, 0o600)
            _turns_open.add(fd)
    except OSError as error:
        # ELOOP: a symlink where the file should be (O_NOFOLLOW refused it).
        _warn_once(
            f"file:{path}",
            "reading the Secrets Manager Agent without taking turns: cannot open %s (%s)",
            path,
            error.strerror or type(error).__name__,
        )
        return None
    try:
        _check(path, os.fstat(fd), kind="regular file", private=False)
    except UnsafeLockPlace as error:
        _close_turn(fd)
        _warn_once(
            f"file:{path}",
            "reading the Secrets Manager Agent without taking turns: the lock file is not "
            "safe to use (%s)",
            error,
        )
        return None
    return fd


def _close_turn(fd: int) -> None:
    with _turns_lock:
        _turns_open.discard(fd)
        os.close(fd)


def _close_turns_in_child() -> None:
    for fd in _turns_open:
        with contextlib.suppress(OSError):
            os.close(fd)
    _turns_open.clear()
    _turns_lock.release()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(
        before=_turns_lock.acquire,
        after_in_parent=_turns_lock.release,
        after_in_child=_close_turns_in_child,
    )


def _lock(fd: int, patience: float) -> bool:
    """Take an exclusive `flock` on `fd`, waiting at most `patience` seconds.

    flock has no timed wait: it is tried without blocking, at short intervals.
    """
    assert fcntl is not None
    give_up = time.monotonic() + patience
    pause = _POLL[0]
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            left = give_up - time.monotonic()
            if left <= 0:
                return False
            time.sleep(min(pause, left))
            pause = min(pause * 2, _POLL[1])
        else:
            return True
