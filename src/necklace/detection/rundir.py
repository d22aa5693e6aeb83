"""Output directories of runs: created with plain errors, and locked so that one run at a time writes into them.

:func:`prepare_output_dir` makes the directory (and its parents) and turns what goes wrong into one sentence that
names the path and the fix: a file in the way, a parent that is a file, no permission, a read-only disk.

:class:`RunLock` keeps a second writer out. ``acquire`` creates ``<dir>/.necklace.lock`` with ``O_CREAT | O_EXCL``
(atomic: of two processes exactly one succeeds) and writes who holds it: process id, host, boot id, the process's
start time and the command. A process that finds the lock checks the holder: alive on this machine (``os.kill(pid,
0)``, with the start time guarding against a reused pid) means the directory is busy and :class:`RunDirLocked`
is raised; dead (a run killed with SIGKILL, a machine rebooted) means the lock is stale and is taken over. A lock
held on another host cannot be checked and is respected; the message says which file to delete when that run is
known to be gone. ``release`` (or leaving the ``with`` block) removes the lock if it is still this process's.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import sys
import time
from pathlib import Path
from typing import Any

__all__ = ["LOCK_NAME", "RunDirLocked", "RunLock", "prepare_output_dir"]

LOCK_NAME = ".necklace.lock"
_TAKEOVER_STALE_S = 10.0  # a takeover guard older than this was left by a process killed mid-takeover


def prepare_output_dir(path: str | Path, what: str = "output") -> Path:
    """Create the directory ``path`` (with parents) for a run's files; return it.

    Raises ``ValueError`` with the path, what is wrong and the fix when ``path`` is a file, a parent is a file, or
    the directory cannot be created or written (permission, read-only disk).

    Example:
        >>> import tempfile
        >>> root = Path(tempfile.mkdtemp())
        >>> prepare_output_dir(root / "runs" / "a").is_dir()
        True
        >>> _ = (root / "notes.txt").write_text("x")
        >>> prepare_output_dir(root / "notes.txt")
        Traceback (most recent call last):
        ...
        ValueError: output '.../notes.txt' is a file, not a directory: ...
    """
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise ValueError(
            f"{what} {str(path)!r} is a file, not a directory: a run writes several files into its {what} "
            "directory. Give a directory path (it is created when missing), e.g. runs/train."
        )
    try:
        path.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        blocker = next((p for p in path.parents if p.exists() and not p.is_dir()), None)
        raise ValueError(
            f"{what} {str(path)!r} cannot be created: {str(blocker or path.parent)!r} is a file, not a directory. "
            "Give a path whose parents are directories."
        ) from None
    except OSError as e:
        existing = next((p for p in path.parents if p.exists()), Path("."))
        raise ValueError(
            f"{what} {str(path)!r} cannot be created in {str(existing)!r}: {e.strerror or e}. Choose a location "
            "you can write to."
        ) from None
    if not os.access(path, os.W_OK | os.X_OK):
        raise ValueError(f"{what} {str(path)!r} is not writable by this user; choose a location you can write to.")
    return path


class RunDirLocked(FileExistsError):
    """Raised when another live run holds the lock of an output directory (see :class:`RunLock`).

    Example:
        >>> issubclass(RunDirLocked, OSError)  # the CLI reports it as one line, exit status 2
        True
    """

    def __init__(self, message: str, holder: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.holder = holder or {}


class RunLock:
    """An exclusive, stale-aware lock on a run's output directory (see the module docstring).

    Example:
        >>> import tempfile
        >>> out = Path(tempfile.mkdtemp())
        >>> with RunLock(out) as lock:
        ...     (out / LOCK_NAME).is_file(), lock.holder()["pid"] == os.getpid()
        (True, True)
        >>> (out / LOCK_NAME).exists()  # released on leaving the block
        False
    """

    def __init__(self, directory: str | Path, what: str = "output") -> None:
        self.directory = Path(directory)
        self.path = self.directory / LOCK_NAME
        self.what = what
        self._mine: dict[str, Any] | None = None

    # ---------------------------------------------------------------------------------------------- public
    def acquire(self) -> RunLock:
        """Take the lock, taking over a stale one; raise :class:`RunDirLocked` when a live run holds it."""
        if self._mine is not None:
            return self
        for _ in range(5):
            if self._create():
                return self
            info = self._read()
            if info is not None and self._alive(info):
                raise RunDirLocked(self._busy_message(info), info)
            self._take_over(info)  # stale (or unreadable): remove it under a guard, then try again
        raise RunDirLocked(
            f"could not lock {self.what} {str(self.directory)!r}: other processes keep taking {str(self.path)!r}; "
            "make sure a single run uses this directory."
        )

    def release(self) -> None:
        """Remove the lock file if this process still holds it."""
        mine, self._mine = self._mine, None
        if mine is not None and self._read() == mine:
            with contextlib.suppress(FileNotFoundError):
                self.path.unlink()

    def holder(self) -> dict[str, Any] | None:
        """What the lock file says (``None`` when there is none or it cannot be read)."""
        return self._read()

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()

    # ---------------------------------------------------------------------------------------------- internals
    def _create(self) -> bool:
        info = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "boot_id": _boot_id(),
            "process_start": _process_start(os.getpid()),
            "started": time.strftime("%Y-%m-%d %H:%M:%S %z"),
            "command": _command(),
        }
        try:
            fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            return False
        except OSError as e:
            raise ValueError(
                f"cannot create the lock file {str(self.path)!r}: {e.strerror or e}. The {self.what} directory must "
                "be writable."
            ) from None
        with os.fdopen(fd, "w") as f:
            json.dump(info, f)
            f.flush()
            os.fsync(f.fileno())
        self._mine = info
        return True

    def _read(self) -> dict[str, Any] | None:
        for attempt in range(5):  # a lock just created may not hold its text yet
            try:
                data = json.loads(self.path.read_text())
            except FileNotFoundError:
                return None
            except (OSError, ValueError):
                data = None
            if isinstance(data, dict) and isinstance(data.get("pid"), int):
                return data
            if attempt < 4:
                time.sleep(0.05)
        return None

    def _alive(self, info: dict[str, Any]) -> bool:
        """Whether the holder may still be running (a holder on another host cannot be checked: assume so)."""
        if info.get("host") != socket.gethostname():
            return True
        boot = _boot_id()
        if boot and info.get("boot_id") and info["boot_id"] != boot:
            return False  # written before this machine last booted
        pid = int(info["pid"])
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True  # a process of another user
        start = info.get("process_start")
        now = _process_start(pid)
        return not (start is not None and now is not None and start != now)  # a different process with that pid

    def _take_over(self, seen: dict[str, Any] | None) -> None:
        guard = self.path.with_name(self.path.name + ".takeover")
        try:
            fd = os.open(guard, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            with contextlib.suppress(OSError):
                if time.time() - guard.stat().st_mtime > _TAKEOVER_STALE_S:
                    guard.unlink()  # left by a process killed while taking over
            time.sleep(0.05)
            return
        try:
            if self._read() == seen:  # nobody took it meanwhile: remove the stale lock
                with contextlib.suppress(FileNotFoundError):
                    self.path.unlink()
        finally:
            os.close(fd)
            with contextlib.suppress(FileNotFoundError):
                guard.unlink()

    def _busy_message(self, info: dict[str, Any]) -> str:
        here = info.get("host") == socket.gethostname()
        who = f"process {info.get('pid')} on {'this machine' if here else 'host ' + repr(info.get('host'))}"
        since = f", started {info['started']}" if info.get("started") else ""
        cmd = f" (`{info['command']}`)" if info.get("command") else ""
        gone = (
            ""
            if here
            else f" If that run is gone (its machine cannot be checked from here), delete {str(self.path)!r}."
        )
        return (
            f"{self.what} {str(self.directory)!r} is in use by another run: {who}{since}{cmd}. Two runs writing one "
            f"directory overwrite each other's checkpoint; wait for it to finish or choose another {self.what} "
            f"directory.{gone}"
        )


def _command() -> str:
    """The command line of this process, as a user would have typed it (``python -m necklace`` -> ``necklace``)."""
    if not sys.argv or not sys.argv[0]:
        return "python"
    name = Path(sys.argv[0]).name
    return " ".join(["necklace" if name == "__main__.py" else name, *sys.argv[1:]])


def _boot_id() -> str | None:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip() or None
    except OSError:
        return None


def _process_start(pid: int) -> int | None:
    """The process's start time in clock ticks since boot (Linux), or ``None`` where it cannot be read."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
        return int(text.rpartition(")")[2].split()[19])
    except (OSError, ValueError, IndexError):
        return None
