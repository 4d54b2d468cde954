"""A spot interruption for the issue-26 round: watch a DNA job's status records and, once a host
is on MODEL (past loading, or loading for --after-s), SIGKILL that host and every process under
it (its vLLM engine): the node's work is gone at once, as when a spot instance is reclaimed.

    python3 tests/bench/device/round_kill.py --store /tmp/round-a --model qwen17-s1 --out kill.txt &

Prints (and writes to --out) what it killed and when; gives up after --timeout-s.
--engine-only kills only the vLLM processes under the host (titled VLLM::..., the engine core and
its workers) while it loads MODEL, as a worker's CUDA error would end them: issue 26 item 5, the host
must notice within a minute and retry the model, not wait out the 30-minute load-stall limit.
"""
from __future__ import annotations

import argparse
import os
import signal
import time
from pathlib import Path


def descendants(pid: int) -> list[int]:
    """pid's children, grandchildren, ... from /proc."""
    parents: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            parents.setdefault(ppid, []).append(int(entry.name))
    out, todo = [], [pid]
    while todo:
        for child in parents.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out


def _title(pid: int) -> str:
    """A process's title as ps shows it (vLLM retitles its engine processes VLLM::EngineCore, ...)."""
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0].decode(errors="replace")
    except OSError:
        return ""


def main() -> int:
    parser = argparse.ArgumentParser(description="SIGKILL the DNA host working on a model, with its engine")
    parser.add_argument("--store", required=True)
    parser.add_argument("--model", required=True)
    parser.add_argument("--after-s", type=float, default=20.0, help="kill during loading once it has lasted this long")
    parser.add_argument("--timeout-s", type=float, default=900.0)
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--engine-only", action="store_true",
                        help="kill the host's VLLM:: processes while it loads, not the host")
    args = parser.parse_args()
    from cluster.ops.status import collect
    from cluster.store.storage import open_store

    store, started, seen = open_store(args.store), time.time(), {}
    while time.time() - started < args.timeout_s:
        try:
            tasks = [t for job in collect(store) for t in job.tasks]
        except Exception:  # a record being rewritten: read again
            tasks = []
        for t in tasks:
            if t.status != "RUNNING" or t.item != args.model or not t.pid:
                continue
            first = seen.setdefault((t.task, t.pid), time.time())
            loading_long = t.phase == "loading" and time.time() - first >= args.after_s
            if args.engine_only:  # the engine's processes, not the host, once it has loaded a while
                victims = [p for p in descendants(t.pid) if _title(p).startswith("VLLM::")] if loading_long else []
                what = f"{len(victims)} vLLM processes of {t.task} ({', '.join(sorted({_title(p) for p in victims}))})"
            elif t.phase != "loading" or loading_long:
                victims = [t.pid, *descendants(t.pid)]
                what = f"{t.task} (pid {t.pid}) and {len(victims) - 1} processes under it"
            else:
                victims = []
            if not victims:
                continue
            for pid in victims:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            line = f"{time.strftime('%H:%M:%S')} killed {what}, on {args.model} in phase {t.phase}"
            print(line, flush=True)
            if args.out:
                args.out.write_text(line + "\n")
            return 0
        time.sleep(0.3)
    print(f"no host reached {args.model} in {args.timeout_s:.0f} s: nothing killed", flush=True)
    return 1


if __name__ == "__main__":
    raise SystemExit(main())
