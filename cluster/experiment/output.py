"""Reading a script's output without changing the script: lines, progress, phases, a bounded log.

Every line a condition writes, on stdout or stderr, is a heartbeat. tqdm redraws its bar with
`\\r`, not newlines, so `\\r` ends a line too. `progress` (a regex with `done` and `total`) and
`phases` (regex -> phase name) are matched on each line. The log keeps its first and last
`limit_bytes / 2` (a script printing gigabytes must not fill the disk or the store), and the last
stdout line that is a JSON object is the condition's result.
"""
from __future__ import annotations

import json
import re
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class Seen:
    """What one line told: progress (done, total), a phase name, a JSON result."""

    done: int | None = None
    total: int | None = None
    phase: str | None = None
    result: dict | None = None


class LineSplitter:
    """Bytes in, complete lines out: `\\n`, `\\r\\n` and a bare `\\r` each end a line."""

    def __init__(self, max_line: int = 65536):
        self.buf, self.max_line = b"", max_line

    def feed(self, data: bytes) -> list[str]:
        self.buf += data
        parts = re.split(rb"\r\n|\r|\n", self.buf)
        self.buf = parts.pop()
        if len(self.buf) > self.max_line:  # a line without end: take it as it is
            parts.append(self.buf)
            self.buf = b""
        return [p.decode("utf-8", "replace") for p in parts]

    def flush(self) -> list[str]:
        rest, self.buf = self.buf, b""
        return [rest.decode("utf-8", "replace")] if rest else []


@dataclass
class OutputReader:
    """Matches each line against the progress regex and the phase regexes."""

    progress: str | None
    phases: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self._progress = re.compile(self.progress) if self.progress else None
        self._phases = [(re.compile(rx), name) for rx, name in self.phases.items()]

    def read(self, line: str, stream: str = "stdout") -> Seen:
        seen = Seen()
        for rx, name in self._phases:
            if rx.search(line):
                seen.phase = name
                break
        if self._progress is not None:
            m = self._progress.search(line)
            if m:
                groups = m.groupdict()
                done = groups.get("done") if "done" in groups else m.group(1)
                total = groups.get("total") if "total" in groups else (m.group(2) if m.re.groups >= 2 else None)
                try:
                    seen.done = int(done)
                    seen.total = int(total) if total is not None else None
                except (TypeError, ValueError):
                    seen.done = seen.total = None
                if seen.total is not None and (seen.total <= 0 or seen.done > seen.total):
                    seen.done = seen.total = None  # "12/3" is a date or a ratio, not progress
        text = line.strip()
        if stream == "stdout" and text.startswith("{") and text.endswith("}"):
            try:
                value = json.loads(text)
            except ValueError:
                value = None
            if isinstance(value, dict):
                seen.result = value
        return seen


class BoundedLog:
    """A log file that keeps the first and last `limit_bytes / 2`. While the condition runs the
    file grows up to the head's size and then says where the rest went; `close()` writes the tail
    after the cut and a line saying how much was left out."""

    def __init__(self, path: Path, limit_bytes: int):
        self.path, self.half = Path(path), max(limit_bytes // 2, 1024)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.file = open(self.path, "wb")
        self.head = 0
        self.tail: deque[bytes] = deque()
        self.tail_bytes = self.cut = 0

    def write(self, data: bytes) -> None:
        if self.head < self.half:
            take = data[: self.half - self.head]
            self.file.write(take)
            self.file.flush()
            self.head += len(take)
            data = data[len(take):]
            if self.head >= self.half:
                self.file.write(b"\n[yard: the log's head ends here; its tail is added when the condition ends]\n")
                self.file.flush()
        if data:
            self.tail.append(data)
            self.tail_bytes += len(data)
            while self.tail_bytes - len(self.tail[0]) >= self.half:
                self.cut += len(self.tail[0])
                self.tail_bytes -= len(self.tail.popleft())

    def close(self) -> None:
        if self.file.closed:
            return
        if self.tail:
            tail = b"".join(self.tail)
            if self.tail_bytes > self.half:  # cut inside the oldest chunk kept
                self.cut += self.tail_bytes - self.half
                tail = tail[-self.half:]
            if self.cut:
                self.file.write(f"[yard: {self.cut} bytes of output left out]\n".encode())
            self.file.write(tail)
        self.file.close()
