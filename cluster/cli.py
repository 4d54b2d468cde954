"""`yard`: one command, one subcommand per job.

    yard <job> [args...]          e.g. yard zoo build, yard demo, yard status
    yard config check configs/

User errors (bad config, impossible load, unreachable store) print one line and exit 2; a crash
of our own code keeps its traceback (exit 1) so it can be fixed.
"""
from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys

from cluster.capabilities import JOB_HELP, JOBS


def _resolve(target: str):
    module, _, attr = target.partition(":")
    return getattr(importlib.import_module(module), attr)


def usage() -> str:
    width = max(len(j) for j in JOBS)
    lines = ["usage: yard <job> [args...]", "", "modelyard: fingerprint, compress, fine-tune and judge LLMs on Ray.", "", "jobs:"]
    lines += [f"  {job:<{width}}  {JOB_HELP.get(job, '')}" for job in JOBS]
    lines += ["", "`yard <job> --help` for a job's options. Overrides: key.sub=value after the config."]
    return "\n".join(lines)


def setup_logging(verbose: bool = False) -> None:
    from cluster.joblog import StderrHandler, make_logging_unbuffered

    make_logging_unbuffered()
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
        handlers=[StderrHandler()],
        force=True,
    )
    for noisy in ("urllib3", "botocore", "filelock", "httpx", "matplotlib", "PIL"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def config_main(argv: list[str]) -> int:
    """`yard config check PATH...`: validate config files or directories of them."""
    from cluster.config import check_paths

    parser = argparse.ArgumentParser(prog="yard config", description="validate config files")
    sub = parser.add_subparsers(dest="action", required=True)
    check = sub.add_parser("check", help="validate YAML config files or directories")
    check.add_argument("paths", nargs="+")
    args = parser.parse_args(argv)
    results = check_paths(args.paths)
    bad = [(f, err) for f, err in results if err]
    for f, err in results:
        if err is None:
            print(f"ok    {f}")
    for _, err in bad:
        print(err, file=sys.stderr)
    print(f"{len(results) - len(bad)} ok, {len(bad)} invalid")
    return 2 if bad else 0


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    verbose = "-v" in argv or "--verbose" in argv
    argv = [a for a in argv if a not in ("-v", "--verbose")]
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(usage())
        return 0 if argv else 2
    job, rest = argv[0], argv[1:]
    if job not in JOBS:
        print(f"yard: unknown job {job!r} (jobs: {', '.join(JOBS)})", file=sys.stderr)
        return 2
    if verbose:  # the job log, Ray's workers and the frameworks stream to the console too
        os.environ["YARD_LOG"] = "debug"
    setup_logging(verbose or os.environ.get("YARD_LOG", "").lower() == "debug")
    from cluster.joblog import quiet_progress_bars

    quiet_progress_bars()  # no loading / download bars on the console (unless verbose)
    from cluster.config import UserError

    try:
        return int(_resolve(JOBS[job])(rest) or 0)
    except UserError as exc:
        print(f"yard {job}: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"yard {job}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
