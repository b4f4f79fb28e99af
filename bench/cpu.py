"""CPU time of a process tree by kind of process, read from /proc, for per-message figures."""

from __future__ import annotations

import os
from collections import defaultdict
from pathlib import Path

_TICK = os.sysconf("SC_CLK_TCK")

# The kinds a benchmark run reports, in print order.
KINDS = ("sender", "campaigns", "PostgreSQL", "NATS", "other services", "supervisor", "sink")


def _stat(pid: int) -> tuple[int, float] | None:
    """(parent pid, user + system CPU seconds) of a live process, None once it is gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name may hold spaces and parentheses: the fields start after the last ')'.
    fields = text[text.rindex(")") + 2 :].split()
    return int(fields[1]), (int(fields[11]) + int(fields[12])) / _TICK


def kind_of(pid: int) -> str:
    """The kind of process, from its command line."""
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return "other services"
    line = b" ".join(argv)
    if b"services.sender" in line:
        return "sender"
    if b"services.campaigns" in line:
        return "campaigns"
    if b"postgres" in argv[0]:
        return "PostgreSQL"
    if b"nats-server" in argv[0]:
        return "NATS"
    if b"dev.run" in line:
        return "supervisor"
    if b"bench.sink" in line:
        return "sink"
    return "other services"


def tree(root: int) -> list[int]:
    """The root and every live descendant."""
    children: dict[int, list[int]] = defaultdict(list)
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            stat = _stat(int(entry))
            if stat is not None:
                children[stat[0]].append(int(entry))
    found, todo = [], [root]
    while todo:
        pid = todo.pop()
        found.append(pid)
        todo.extend(children.get(pid, ()))
    return found


class CpuSnapshot:
    """CPU seconds used so far by each process of some trees, with each process's kind."""

    def __init__(self, roots: list[int]) -> None:
        self.used: dict[int, tuple[str, float]] = {}
        for root in roots:
            for pid in tree(root):
                stat = _stat(pid)
                if stat is not None:
                    self.used[pid] = (kind_of(pid), stat[1])

    def since(self, before: CpuSnapshot) -> dict[str, float]:
        """CPU seconds by kind between `before` and this snapshot (a process started meanwhile counts whole;
        one that ended meanwhile, such as a closed PostgreSQL backend, is missed)."""
        spent: dict[str, float] = defaultdict(float)
        for pid, (kind, seconds) in self.used.items():
            spent[kind] += seconds - before.used.get(pid, (kind, 0.0))[1]
        return dict(spent)
