"""The sweep's records: one JSON line per finished item, repaired after an interruption, and a lock so that one
process at a time writes into a results folder."""

from __future__ import annotations

import json
import os
import socket
import time
from pathlib import Path

from ..errors import RestoreKitError


def repair_records(path: Path) -> None:
    """Drop a line cut short by an interruption, so that new records start on a line of their own."""
    if not path.exists():
        return
    from ..io import atomic_write_bytes

    text = path.read_text()
    good = []
    for line in text.splitlines():
        try:
            json.loads(line)
            good.append(line)
        except json.JSONDecodeError:
            pass
    fixed = "".join(line + "\n" for line in good)
    if fixed != text:
        atomic_write_bytes(path, fixed.encode())


def read_records(out: Path) -> dict:
    done = {}
    for f in sorted(out.glob("records-*.jsonl")):
        for line in f.read_text().splitlines():
            try:
                r = json.loads(line)
            except json.JSONDecodeError:
                continue  # a line cut by an interruption: that item runs again
            done[r["key"]] = r
    return done




def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _stale(path: Path, host: str, pid: int, grace: float = 10.0) -> bool:
    """A lock left behind: its process (on this host) is gone, or a newer process has its PID (the PID was reused),
    or it holds no ``host pid`` line and is older than ``grace`` seconds (its writer died between creating and
    writing it)."""
    try:
        written = path.stat().st_mtime
    except OSError:
        return True
    if pid < 0:
        return time.time() - written > grace
    if host != socket.gethostname():
        return False
    if not _pid_alive(pid):
        return True
    started = _process_start(pid)
    return started is not None and started > written + 2.0


def _process_start(pid: int) -> float | None:
    """When process ``pid`` started (seconds since the epoch, to about a second), from Linux's /proc; else None."""
    try:
        ticks = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19])  # field 22: starttime
        boot = next(int(ln.split()[1]) for ln in Path("/proc/stat").read_text().splitlines() if ln.startswith("btime"))
        return boot + ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError, StopIteration):
        return None


class BenchLock:
    """``<folder>/.bench.lock`` holding ``host pid``: a second sweep on the same folder is refused while the first
    runs. A lock left by a process that is gone (killed) is taken over."""

    def __init__(self, folder: Path):
        self.path = Path(folder) / ".bench.lock"
        self.held = False

    def acquire(self) -> "BenchLock":
        me = f"{socket.gethostname()} {os.getpid()}"
        for _ in range(2):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                try:
                    host, pid = self.path.read_text().split()
                    pid = int(pid)
                except (OSError, ValueError):
                    host, pid = "", -1
                if _stale(self.path, host, pid):
                    self.path.unlink(missing_ok=True)
                    continue
                raise RestoreKitError(
                    f"another 'restorekit bench' (process {pid} on {host or '?'}) is writing to {self.path.parent}; "
                    f"wait for it to finish, or use another --output (if no such process runs, delete {self.path})"
                ) from None
            with os.fdopen(fd, "w") as f:
                f.write(me + "\n")
            self.held = True
            return self
        raise RestoreKitError(f"could not take the lock {self.path}")

    def release(self) -> None:
        if self.held:
            self.path.unlink(missing_ok=True)
            self.held = False

    def __enter__(self):
        return self.acquire()

    def __exit__(self, *exc):
        self.release()
        return False
