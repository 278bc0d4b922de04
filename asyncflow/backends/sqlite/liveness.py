"""Which engines sharing an SQLite file are provably dead, so that their runs are taken over at once.

Each engine (each ``owner`` that writes through a backend) holds an
exclusive ``flock`` on a file of its own in the directory ``<db>-engines``
next to the database, as long as its backend is open. The kernel releases
the lock when the process dies, however it dies (``kill -9`` included). An
owner whose lock file can be locked by someone else is dead. An owner
without a lock file (an older asyncflow, or a directory that could not be
written) is dead when its name says it ran on this host (the engine's
default ``host:pid:...``) and no process has that pid. Anything else is
alive, and its runs wait for their lease to run out, as before.

Only the writer thread calls these (they touch the file system).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import socket
import threading
from pathlib import Path

try:
    import fcntl
except ImportError:  # (Windows: no flock; owners are never provably dead there, leases decide)
    fcntl = None  # type: ignore[assignment]

# The owners whose locks this process holds, by lock file (several backends of one process may
# share a file; a lock of this process must never be tested by opening its file again).
_HELD: dict[Path, int] = {}
_HELD_GUARD = threading.Lock()


class Liveness:
    """The lock files of the engines of one database."""

    def __init__(self, database: Path) -> None:
        self.directory = database.with_name(database.name + "-engines")
        self.mine: set[Path] = set()  # the lock files this backend took

    def lock_file(self, owner: str) -> Path:
        """The lock file of ``owner`` (a hash of its name: any text is a valid owner)."""
        return self.directory / (
            hashlib.sha256(owner.encode("utf-8", "surrogatepass")).hexdigest()[:24] + ".lock"
        )

    def hold(self, owner: str) -> None:
        """Take ``owner``'s lock, for as long as this backend is open (once; quietly, if it cannot)."""
        path = self.lock_file(owner)
        if path in self.mine or fcntl is None:
            return
        with _HELD_GUARD:
            if path in _HELD:  # (another backend of this process holds it: this process is alive)
                return
            fd = self._open_lock_file(path)
            if fd is None:
                return  # (a read-only directory: others fall back to the pid, or the lease)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                os.close(fd)  # (held by another process that names itself the same: not ours)
                return
            os.ftruncate(fd, 0)
            os.write(fd, owner.encode("utf-8", "surrogatepass") + b"\n")
            _HELD[path] = fd
            self.mine.add(path)

    def _open_lock_file(self, path: Path) -> int | None:
        """Open (creating it and its directory) the lock file ``path``; ``None`` if it cannot be."""
        for _ in range(10):
            try:
                self.directory.mkdir(exist_ok=True)
                return os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
            except FileNotFoundError:
                continue  # (the last engine of another process removed the directory meanwhile)
            except OSError:
                return None
        return None

    def release(self) -> None:
        """Give up the locks this backend took, and remove their files (its engines are closed).

        The directory goes too once no lock file is left in it (the last
        engine of the database closed): ``rmdir`` removes only an empty one,
        so a live engine's file, or a dead one's still naming runs, keeps it.
        """
        with _HELD_GUARD:
            released = False
            for path in self.mine:
                fd = _HELD.pop(path, None)
                if fd is not None:
                    with contextlib.suppress(OSError):
                        path.unlink()
                    os.close(fd)
                    released = True
            self.mine.clear()
            if released:
                with contextlib.suppress(OSError):  # (not empty: another engine's file is there)
                    self.directory.rmdir()

    def dead(self, owner: str) -> bool:
        """Whether ``owner`` is provably dead (its lock is free, or its process gone from this host)."""
        if fcntl is None or _elsewhere(owner):
            return False
        path = self.lock_file(owner)
        with _HELD_GUARD:
            if path in _HELD:
                return False
            try:
                fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
            except FileNotFoundError:
                return _gone_from_this_host(owner)
            except OSError:
                return False
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                return False  # held: the owner lives
            else:
                return True  # (closing the file below lets the lock go again)
            finally:
                os.close(fd)

    def forget(self, owner: str) -> None:
        """Remove the lock file of ``owner``, dead and left with no runs."""
        with _HELD_GUARD:
            path = self.lock_file(owner)
            if path not in _HELD:
                with contextlib.suppress(OSError):
                    path.unlink()


def _elsewhere(owner: str) -> bool:
    """Whether ``owner`` is an engine's default name (``host:pid:...``) of another host.

    Its lock may be on a network file system, where ``flock`` can be local to
    each host: only its lease tells.
    """
    host, _, rest = owner.partition(":")
    pid, _, tag = rest.partition(":")
    return bool(tag) and pid.isdigit() and host != socket.gethostname()


def _gone_from_this_host(owner: str) -> bool:
    """Whether ``owner`` is an engine's default name (``host:pid:...``) on this host whose process is gone."""
    host, _, rest = owner.partition(":")
    pid, _, _ = rest.partition(":")
    if host != socket.gethostname() or not pid.isdigit() or int(pid) == os.getpid():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except OSError:
        return False  # (it exists, owned by another user)
    return False
