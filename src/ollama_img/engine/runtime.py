"""The engine's files: its socket and pid file in a private runtime directory, its log in the log dir.

One engine per user is enforced by an exclusive lock on the pid file, held for the engine's whole life:
the kernel drops it when the process dies (even by `kill -9`), so a socket found while holding the lock is
known to be stale and can be replaced.
"""

import contextlib
import fcntl
import os
import socket
import stat
from pathlib import Path

from ollama_img.engine.listen import LISTEN_BACKLOG
from ollama_img.errors import UserError
from ollama_img.paths import log_dir, runtime_dir

SOCKET_NAME = "engine.sock"
PID_NAME = "engine.pid"
SPAWN_LOCK_NAME = "spawn.lock"
LOG_NAME = "engine.log"
# sockaddr_un.sun_path is 108 bytes on Linux and 104 on macOS, including the terminating NUL.
MAX_SOCKET_PATH = 103


def socket_path() -> Path:
    return runtime_dir() / SOCKET_NAME


def pid_path() -> Path:
    return runtime_dir() / PID_NAME


def spawn_lock_path() -> Path:
    return runtime_dir() / SPAWN_LOCK_NAME


def log_path() -> Path:
    return log_dir() / LOG_NAME


def ensure_private_dir(path: Path) -> Path:
    """Create `path` as 0700 (or tighten it), refusing one that belongs to another user."""
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    info = path.stat()
    if info.st_uid != os.getuid():
        raise UserError(
            f"{path} belongs to another user; set OLLAMA_IMG_RUNTIME_DIR to a directory of your own"
        )
    if stat.S_IMODE(info.st_mode) != 0o700:
        path.chmod(0o700)
    return path


class EngineRunning(UserError):
    """Another engine holds the pid lock."""

    def __init__(self, pid: int | None):
        self.pid = pid
        who = f"pid {pid}" if pid else "another process"
        super().__init__(f"an engine is already running ({who}, socket {socket_path()})")


class PidLock:
    """An exclusive lock on the pid file, held while the engine lives."""

    def __init__(self, path: Path):
        self.path = path
        self._fd: int | None = None

    def acquire(self):
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise EngineRunning(running_engine_pid(self.path)) from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._fd = fd

    def release(self):
        # The file stays: unlinking it while another process opens it could let two engines lock two files.
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


def running_engine_pid(path: Path | None = None) -> int | None:
    """The pid of the engine holding the lock, or None when no engine runs."""
    path = path or pid_path()
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            text = os.read(fd, 64).decode(errors="replace").strip()
            return int(text) if text.isdigit() else None
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)


class UnixListener:
    """A listening socket only this user can connect to (0600 in a 0700 directory).

    Create it holding the pid lock: whatever socket file is there belongs to a dead engine.
    """

    def __init__(self, path: Path):
        if len(os.fsencode(str(path))) > MAX_SOCKET_PATH:
            raise UserError(
                f"socket path too long ({path}); set OLLAMA_IMG_RUNTIME_DIR to a shorter directory, "
                "e.g. /tmp/ollama-img"
            )
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        old_umask = os.umask(0o177)  # no moment in which the socket exists with looser permissions
        try:
            sock.bind(str(path))
        finally:
            os.umask(old_umask)
        path.chmod(0o600)
        sock.listen(LISTEN_BACKLOG)  # a client connecting before the server's loop runs waits, not refused
        sock.setblocking(False)
        info = path.stat()
        self.path, self.sock, self._identity = path, sock, (info.st_dev, info.st_ino)

    def remove(self):
        """Remove the socket file on exit, unless a newer engine has already replaced it."""
        try:
            info = self.path.stat()
        except FileNotFoundError:
            return
        if (info.st_dev, info.st_ino) == self._identity:
            with contextlib.suppress(FileNotFoundError):
                self.path.unlink()
