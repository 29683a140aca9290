"""The sweep's records: one JSON line per finished item, repaired after an interruption, and a lock so that one
process at a time writes into a results folder."""

from __future__ import annotations

import json
import os
import socket
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
                if host == socket.gethostname() and pid > 0 and not _pid_alive(pid):
                    self.path.unlink(missing_ok=True)  # stale: its process is gone
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
