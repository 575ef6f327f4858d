"""CPU time and memory of the processes under test, read from ``/proc`` (Linux).

A *group* is a named set of root pids (the ingress; the workers of every tier; the
simulator; Redis) together with their live descendants. Its CPU time is the sum of
``utime + stime + cutime + cstime`` (``/proc/<pid>/stat``, fields 14-17: every thread,
plus children already reaped) over the group; its memory is the sum of ``VmRSS`` (now)
or ``VmHWM`` (the peak of each process's life) from ``/proc/<pid>/status``.
:class:`RssSampler` samples ``VmRSS`` in a thread to get the peak of one phase.
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

PROC = Path("/proc")
TICK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def _stat_fields(pid: int) -> list[str] | None:
    try:
        raw = (PROC / str(pid) / "stat").read_text()
    except OSError:
        return None
    # the command name (field 2) may hold spaces and parentheses: split after the last ')'
    return raw[raw.rfind(")") + 2:].split()


def cpu_seconds(pid: int) -> float:
    """CPU seconds of ``pid`` (all threads) and of its reaped children; 0 when gone."""
    f = _stat_fields(pid)
    if f is None:
        return 0.0
    return (int(f[11]) + int(f[12]) + int(f[13]) + int(f[14])) / TICK


def status_kib(pid: int, field: str) -> int:
    """A ``kB`` field of ``/proc/<pid>/status`` (``VmRSS``, ``VmHWM``); 0 when gone."""
    try:
        with (PROC / str(pid) / "status").open() as fh:
            for line in fh:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return 0


def children_map() -> dict[int, list[int]]:
    """ppid -> pids, for every process now."""
    out: dict[int, list[int]] = {}
    for entry in PROC.iterdir():
        if not entry.name.isdigit():
            continue
        f = _stat_fields(int(entry.name))
        if f is not None:
            out.setdefault(int(f[1]), []).append(int(entry.name))
    return out


def with_descendants(roots: Iterable[int], tree: Mapping[int, list[int]] | None = None
                     ) -> list[int]:
    tree = tree if tree is not None else children_map()
    seen: list[int] = []
    stack = list(roots)
    while stack:
        pid = stack.pop()
        if pid in seen:
            continue
        seen.append(pid)
        stack.extend(tree.get(pid, ()))
    return seen


@dataclass(frozen=True, slots=True)
class Snapshot:
    """CPU seconds per group at one moment."""

    cpu: dict[str, float]


class Groups:
    """Named groups of processes: CPU snapshots and memory readings."""

    def __init__(self, roots: Mapping[str, list[int]]) -> None:
        self.roots = {name: list(pids) for name, pids in roots.items() if pids}
        self._members: dict[str, list[int]] | None = None

    def members(self, *, fresh: bool = True) -> dict[str, list[int]]:
        """The pids of each group; ``fresh=False`` reuses the last scan of ``/proc``."""
        if fresh or self._members is None:
            tree = children_map()
            self._members = {name: with_descendants(pids, tree)
                             for name, pids in self.roots.items()}
        return self._members

    def snapshot(self) -> Snapshot:
        return Snapshot({name: sum(cpu_seconds(p) for p in pids)
                         for name, pids in self.members().items()})

    def rss_mib(self, field: str = "VmRSS", *, fresh: bool = True) -> dict[str, float]:
        return {name: sum(status_kib(p, field) for p in pids) / 1024
                for name, pids in self.members(fresh=fresh).items()}


class RssSampler:
    """Samples the groups' ``VmRSS`` every ``interval`` seconds; keeps the peak of each."""

    def __init__(self, groups: Groups, interval: float = 0.1) -> None:
        self._groups = groups
        self._interval = interval
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.peak: dict[str, float] = {}

    def _sample(self) -> None:
        # the process tree was scanned when the phase began: sampling stays cheap
        for name, mib in self._groups.rss_mib(fresh=False).items():
            if mib > self.peak.get(name, 0.0):
                self.peak[name] = mib

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            with contextlib.suppress(Exception):
                self._sample()

    def __enter__(self) -> RssSampler:
        self._sample()
        self._thread = threading.Thread(target=self._run, name="bench-rss", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(2)
        self._sample()


def listening_pid(port: int) -> int | None:
    """The pid of the process listening on TCP ``port`` here, if it is visible."""
    inodes: set[str] = set()
    for table in ("tcp", "tcp6"):
        try:
            lines = (PROC / "net" / table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            cols = line.split()
            if len(cols) > 9 and cols[3] == "0A" and int(cols[1].rsplit(":", 1)[1], 16) == port:
                inodes.add(cols[9])
    if not inodes:
        return None
    wanted = {f"socket:[{i}]" for i in inodes}
    for entry in PROC.iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            for fd in (entry / "fd").iterdir():
                with contextlib.suppress(OSError):
                    if os.readlink(fd) in wanted:
                        return int(entry.name)
    return None


def pids_by_cmdline(*needles: str) -> list[int]:
    """Pids whose command line contains every one of ``needles`` (not this process)."""
    found = []
    for entry in PROC.iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmd = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if all(n in cmd for n in needles):
            found.append(int(entry.name))
    return found
