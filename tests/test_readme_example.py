"""README.md's "Worked example", run exactly as written against a real ``batchd serve
--demo`` (the embedded default: SQLite + the in-process runner), so the guide cannot
drift from the code.

What is run: every fenced ```` ```sh ```` block from ``## Worked example`` up to
``### Excel templates`` (the steps 1-7 and "From a terminal"), in order, in one bash
session whose working directory is a temporary one holding a ``.venv`` link to the
project's virtualenv (so ``.venv/bin/batchd`` and ``$PWD/.venv/bin`` work as they do
in a checkout). Before running, the README's placeholders are replaced:
``http://127.0.0.1:8000`` by the test server's address, ``bd_FZIi…`` by the manager
token and ``bd_TWT6…`` by the admin token that the server printed. Blocks in other
languages (``js``, ``text``) are not run; the first ``text`` block, the banner of
``make run``, is compared line by line with what the server printed (tokens aside).

How a block is read:

- A *command* is a non-comment line plus its continuation lines (a trailing ``\\``, or
  an open single-quoted string). Each command must exit 0 (a command that shows a
  failure does so with ``; echo $?`` and prints the code).
- The comment lines right after a command (no blank line between) are its *shown
  output*. A comment line after a blank line, or before the first command, is prose
  and is not checked. Each shown-output line is checked against what the command
  printed (stdout and stderr together):

  - ``...`` or ``…`` alone: nothing.
  - a leading HTTP status (``# 202 {...}`` or ``# 204``): the output has a line that
    starts with that status (``curl -w '%{http_code}'`` prints it; the example's
    ``created`` helper prints ``<status> <body>``);
  - ``"key": value`` pairs whose value is a JSON string, number, ``true``, ``false``
    or ``null``: each pair occurs in the output (JSON spacing ignored). Pairs with
    ``…``, lists or objects as values are not compared;
  - any other line (the CLI's sentences): it occurs in the output, with ``…`` matching
    anything and runs of spaces matching any spacing.
"""

from __future__ import annotations

import os
import queue
import re
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from tests.conftest import ON_POSTGRES, free_port

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
SECTION_START = "## Worked example"
SECTION_END = "### Excel templates"
DEMO_URL = "http://127.0.0.1:8000"
MANAGER_PLACEHOLDER = "bd_FZIi…"
ADMIN_PLACEHOLDER = "bd_TWT6…"
DEMO_LINE = re.compile(r"^\s*(admin|manager|finance|employee)\s+(admin|user)\s+(bd_\S+)\s*$")
STATUS = re.compile(r"^(\d{3})(?:\s|$)")
PAIR = re.compile(r'"(\w+)":\s*("(?:[^"\\]|\\.)*"|-?\d+(?:\.\d+)?|true|false|null)(?=\s*[,}\]]|$)')
COMMAND_TIMEOUT_S = 60


@dataclass
class Command:
    text: str
    shown: list[str] = field(default_factory=list)


def worked_example(readme: str) -> str:
    start = readme.index(SECTION_START)
    return readme[start : readme.index(SECTION_END, start)]


def sh_blocks(section: str) -> list[str]:
    return re.findall(r"^```sh\n(.*?)^```$", section, flags=re.MULTILINE | re.DOTALL)


def _open_quote(text: str) -> bool:
    """Whether ``text`` ends inside a single-quoted string (double-quoted parts are
    skipped; good enough for shell as the README writes it)."""
    quote = None
    comment = False
    for i, ch in enumerate(text):
        if comment:
            comment = ch != "\n"
        elif quote is None and ch == "#" and (i == 0 or text[i - 1].isspace()):
            comment = True  # a shell comment: its apostrophes quote nothing
        elif quote is None and ch in "'\"":
            quote = ch
        elif ch == quote:
            quote = None
    return quote == "'"


def commands(block: str) -> list[Command]:
    """Split a block into commands, each with the comment lines right after it."""
    out: list[Command] = []
    current: list[str] = []
    last: Command | None = None  # the command whose shown output may follow
    for line in block.splitlines():
        if current:
            current.append(line)
            text = "\n".join(current)
            if not (line.endswith("\\") or _open_quote(text)):
                last = Command(text)
                out.append(last)
                current = []
            continue
        stripped = line.strip()
        if not stripped:
            last = None
        elif stripped.startswith("#"):
            if last is not None:
                last.shown.append(stripped[1:].strip())
        else:
            current = [line]
            if not (line.endswith("\\") or _open_quote(line)):
                last = Command(line)
                out.append(last)
                current = []
    assert not current, f"unterminated command in README block:\n{block}"
    return out


def text_pattern(line: str) -> re.Pattern[str]:
    parts = [re.escape(p) for p in line.split("…")]
    return re.compile(r"\s+".join(".*".join(parts).split(r"\ ")))


def mismatches(shown: list[str], output: str) -> list[str]:
    """The shown-output lines the output does not bear out (see the module docstring)."""
    problems = []
    for line in shown:
        if line in ("...", "…", ""):
            continue
        status = STATUS.match(line)
        if status and not re.search(rf"(?m)^{status.group(1)}\b", output):
            problems.append(f"status {status.group(1)} not printed")
        pairs = PAIR.findall(line)
        for key, value in pairs:
            if not re.search(
                rf'"{re.escape(key)}":\s*{re.escape(value)}(?=\s*[,}}\]\n]|$)', output
            ):
                problems.append(f'"{key}": {value} not in the output')
        if not status and not pairs and not text_pattern(line).search(output):
            problems.append(f"line not in the output: {line!r}")
    return problems


class Bash:
    """One bash session; each command's output (stdout + stderr) and exit code."""

    def __init__(self, cwd: Path, env: dict[str, str]) -> None:
        self.proc = subprocess.Popen(
            ["bash", "--noprofile", "--norc"],
            cwd=cwd,
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        self.lines: queue.Queue[str | None] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()
        self.serial = 0

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.put(line)
        self.lines.put(None)

    def run(self, command: str) -> tuple[int, str]:
        assert self.proc.stdin is not None
        self.serial += 1
        marker = f"__README_STEP_DONE_{self.serial}__"
        self.proc.stdin.write(f"{command}\nprintf '\\n{marker} %d\\n' $?\n")
        self.proc.stdin.flush()
        deadline = time.monotonic() + COMMAND_TIMEOUT_S
        output: list[str] = []
        while True:
            try:
                line = self.lines.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                raise AssertionError(
                    f"no end within {COMMAND_TIMEOUT_S} s:\n{command}\n{''.join(output)}"
                ) from None
            if line is None:
                raise AssertionError(f"bash ended during:\n{command}\n{''.join(output)}")
            if line.startswith(marker):
                text = "".join(output)
                return int(line.split()[1]), text[:-1] if text.endswith("\n") else text
            output.append(line)

    def close(self) -> None:
        if self.proc.poll() is None:
            assert self.proc.stdin is not None
            self.proc.stdin.close()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


@dataclass
class DemoServer:
    url: str
    tokens: dict[str, str]
    log_path: Path


@pytest.fixture
def demo_server(tmp_path: Path) -> Iterator[DemoServer]:
    """``batchd serve --demo`` on a free port with its own SQLite file and cwd; yields
    its URL, the tokens from its banner and its log."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    server_dir = tmp_path / "server"
    server_dir.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith("BATCH")}
    env["BATCH_DATABASE_URL"] = f"sqlite+aiosqlite:///{server_dir / 'demo.db'}"
    env["PYTHONUNBUFFERED"] = "1"
    log_path = server_dir / "serve.log"
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "app.cli", "serve", "--demo", "--port", str(port)],
            cwd=server_dir,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        yield DemoServer(url, _wait_for_tokens(proc, url, log_path), log_path)
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def _wait_for_tokens(proc: subprocess.Popen[bytes], url: str, log_path: Path) -> dict[str, str]:
    deadline = time.monotonic() + 60
    with httpx.Client(base_url=url, timeout=2) as client:
        while time.monotonic() < deadline:
            log = log_path.read_text(errors="replace")
            if proc.poll() is not None:
                pytest.fail(f"serve --demo exited with {proc.returncode}:\n{log}")
            tokens = {m.group(1): m.group(3) for m in map(DEMO_LINE.match, log.splitlines()) if m}
            if len(tokens) == 4:
                try:
                    if client.get("/health").status_code == 200:
                        return tokens
                except httpx.TransportError:
                    pass
            time.sleep(0.1)
    pytest.fail(f"serve --demo did not come up within 60 s:\n{log_path.read_text()}")


def banner_lines(section: str) -> list[str]:
    """The lines of the first ```` ```text ```` block: what ``make run`` prints."""
    match = re.search(r"^```text\n(.*?)^```$", section, flags=re.MULTILINE | re.DOTALL)
    assert match, "the worked example no longer shows the demo banner"
    return [line for line in match.group(1).splitlines() if line.strip()]


def test_shown_output_checks_can_fail() -> None:
    """The checker itself: a wrong status, value or sentence is reported."""
    out = '{"id":1,"status":"completed","total":150}\n202\nBatch 1 completed: 140 success.'
    assert mismatches(['202 {"id": 1, "status": "completed", ...}'], out) == []
    assert mismatches(["Batch 1 completed: … success."], out) == []
    assert mismatches(['{"total": 15, ...}'], out) == ['"total": 15 not in the output']
    assert mismatches(["204"], out) == ["status 204 not printed"]
    assert mismatches(["Batch 2 completed"], out) == ["line not in the output: 'Batch 2 completed'"]
    parsed = commands('A=$(x \\\n  \'{"a":\n 1}\')\n# 202 {"id": 1}\n\n# prose\nb  # it\'s\n')
    assert [(c.text.count("\n"), c.shown) for c in parsed] == [(2, ['202 {"id": 1}']), (0, [])]


@pytest.mark.skipif(
    ON_POSTGRES, reason="the worked example runs the embedded default (serve --demo, SQLite)"
)
def test_readme_worked_example_runs_as_written(demo_server: DemoServer, tmp_path: Path) -> None:
    url, tokens = demo_server.url, demo_server.tokens
    section = worked_example(README.read_text())
    log = demo_server.log_path.read_text(errors="replace")
    for line in banner_lines(section):  # the banner as shown, with any tokens
        words = line.replace(DEMO_URL, url).split()
        pattern = r"\s+".join(r"bd_\S+" if w.startswith("bd_") else re.escape(w) for w in words)
        assert re.search(pattern, log), f"banner line not printed: {line!r}\n{log}"
    blocks = sh_blocks(section)
    assert len(blocks) >= 10, "the worked example lost its sh blocks"
    script = "\n".join(blocks)
    for placeholder in (DEMO_URL, MANAGER_PLACEHOLDER, ADMIN_PLACEHOLDER):
        assert placeholder in script, f"the example no longer uses {placeholder}"

    work = tmp_path / "user"
    work.mkdir()
    (work / ".venv").symlink_to(ROOT / ".venv")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("BATCH", "BATCHD_"))}
    env.update(NO_COLOR="1", COLUMNS="120", TZ="UTC")
    bash = Bash(work, env)
    try:
        for block in blocks:
            for command in commands(block):
                text = (
                    command.text.replace(DEMO_URL, url)
                    .replace(MANAGER_PLACEHOLDER, tokens["manager"])
                    .replace(ADMIN_PLACEHOLDER, tokens["admin"])
                )
                code, output = bash.run(text)
                assert code == 0, f"exit {code}:\n{command.text}\n--- output:\n{output}"
                problems = mismatches(command.shown, output)
                assert not problems, (
                    f"{command.text}\n--- README shows:\n"
                    + "\n".join(command.shown)
                    + f"\n--- got:\n{output}\n--- "
                    + "; ".join(problems)
                )
    finally:
        bash.close()
