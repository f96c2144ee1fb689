"""Reading py-spy's raw (collapsed) stacks: top functions by self and by inclusive
time, and self time grouped by package, as shares of all samples."""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

_LINE = re.compile(r"^(?P<stack>.*) (?P<count>\d+)$")
_LINENO = re.compile(r":\d+\)$")

PACKAGES = (
    ("_SelectorSocketTransport.write", "socket send (runnable: mostly preempted after a send)"),
    ("WriteTransport.writelines", "socket send (runnable: mostly preempted after a send)"),
    ("Selector.select", "event loop select (waking up)"),
    ("sqlalchemy/sql/", "sqlalchemy.sql (compile, cache keys, params)"),
    ("sqlalchemy/orm/", "sqlalchemy.orm (session, bulk insert)"),
    ("sqlalchemy/engine/", "sqlalchemy.engine (execute, results)"),
    ("sqlalchemy/dialects/", "sqlalchemy.dialects (asyncpg adapter)"),
    ("sqlalchemy/", "sqlalchemy (other)"),
    ("asyncpg/", "asyncpg"),
    ("pydantic", "pydantic"),
    ("arq/", "arq"),
    ("redis/", "redis"),
    ("asyncio/", "asyncio"),
    ("json/", "json"),
    ("/app/", "app (batchd)"),
    ("(app/", "app (batchd)"),
    ("/workers/", "app (batchd)"),
    ("(workers/", "app (batchd)"),
    ("greenlet", "greenlet"),
    ("uuid", "stdlib"),
    ("python3.", "stdlib"),
)


def _function(frame: str) -> str:
    """``name (path/file.py:123)`` → ``name (file.py)`` (lines merged, short path)."""
    frame = _LINENO.sub(")", frame)
    name, _, where = frame.partition(" (")
    where = where.rstrip(")")
    parts = where.split("/")
    short = "/".join(parts[-2:]) if len(parts) > 1 else where
    return f"{name} ({short})"


def _package(frame: str) -> str:
    for needle, label in PACKAGES:
        if needle in frame:
            return label
    return "other"


@dataclass
class Profile:
    samples: int
    self_time: Counter[str]
    inclusive: Counter[str]
    packages: Counter[str]

    def top(self, which: str = "self", n: int = 15) -> list[tuple[str, float]]:
        counter = self.self_time if which == "self" else self.inclusive
        total = max(self.samples, 1)
        return [(k, v / total) for k, v in counter.most_common(n)]

    def format(self, title: str, who: str = "worker", n: int = 15) -> str:
        total = max(self.samples, 1)
        lines = [f"{title}: {self.samples} non-idle samples of the {who} process"]
        lines.append("  self time by package:")
        for k, v in self.packages.most_common(12):
            lines.append(f"    {100 * v / total:5.1f}%  {k}")
        lines.append("  top functions, self time:")
        for k, share in self.top("self", n):
            lines.append(f"    {100 * share:5.1f}%  {k}")
        lines.append("  top functions, inclusive time:")
        for k, share in self.top("inclusive", n + 10):
            lines.append(f"    {100 * share:5.1f}%  {k}")
        return "\n".join(lines)


def read_raw(path: Path) -> Profile:
    samples = 0
    self_time: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    packages: Counter[str] = Counter()
    for line in path.read_text(errors="replace").splitlines():
        m = _LINE.match(line.strip())
        if not m:
            continue
        count = int(m["count"])
        frames = [f for f in m["stack"].split(";") if f]
        if not frames:
            continue
        # py-spy puts the thread name first, e.g. "process 123:\"python -m workers\"".
        if frames[0].startswith(("process ", "thread ")):
            frames = frames[1:]
        if not frames:
            continue
        samples += count
        leaf = frames[-1]
        self_time[_function(leaf)] += count
        packages[_package(leaf)] += count
        for fn in {_function(f) for f in frames}:
            inclusive[fn] += count
    return Profile(samples, self_time, inclusive, packages)
