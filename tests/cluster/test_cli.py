"""cluster/cli.py: `yard`'s usage, job dispatch and exit codes (a user error is one line and exit 2,
an interrupt 130, our own crash keeps its traceback), `yard config check` and the logging setup.
The bad-input corpus through every job is tests/cluster/test_bad_input.py."""
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest

from cluster import cli
from cluster.capabilities import JOB_HELP, JOBS
from cluster.config import ConfigError

REPO = Path(__file__).resolve().parents[2]
GOOD = "kind: models\nmodels:\n  tiny:\n    source: org/tiny\n    params_b: 0.1\n    load_in: bf16\n"
BAD = GOOD.replace("bf16", "2bit")
NOISY = ("urllib3", "botocore", "filelock", "httpx", "matplotlib", "PIL")


# Jobs for the dispatch tests, registered in JOBS as "tests.cluster.test_cli:<name>".
def echo_job(argv):
    print("echo:", " ".join(argv))
    return len(argv)


def silent_job(argv):
    return None


def refusing_job(argv):
    raise ConfigError("x.yaml: port: -1 must be >= 0")


def interrupted_job(argv):
    raise KeyboardInterrupt


def crashing_job(argv):
    raise RuntimeError("a bug of ours")


@pytest.fixture
def cli_state(monkeypatch):
    """main() configures the process (root logging, a few environment variables): put them back."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    levels = {n: logging.getLogger(n).level for n in NOISY}
    env = {k: os.environ.get(k) for k in ("YARD_LOG", "PYTHONUNBUFFERED", "HF_HUB_DISABLE_PROGRESS_BARS")}
    monkeypatch.delenv("YARD_LOG", raising=False)
    for name in ("echo", "silent", "refusing", "interrupted", "crashing"):
        monkeypatch.setitem(JOBS, f"t-{name}", f"tests.cluster.test_cli:{name}_job")
    yield
    root.handlers[:] = handlers
    root.setLevel(level)
    for n, lv in levels.items():
        logging.getLogger(n).setLevel(lv)
    for k, v in env.items():
        os.environ.pop(k, None) if v is None else os.environ.__setitem__(k, v)


def lines(text: str) -> list[str]:
    return [ln for ln in text.splitlines() if ln.strip()]


def yard(*args, cwd=REPO):
    return subprocess.run([sys.executable, "-m", "cluster", *args], cwd=cwd, capture_output=True, text=True, timeout=120)


# --- usage -------------------------------------------------------------------------------------
def test_usage_lists_every_job_with_its_help_line():
    text = cli.usage()
    assert text.startswith("usage: yard <job> [args...]")
    for job in JOBS:
        assert f"\n  {job} " in text and JOB_HELP[job] in text, job


@pytest.mark.parametrize(("argv", "code"), [([], 2), (["--help"], 0), (["-h"], 0), (["help"], 0)])
def test_no_job_prints_usage(argv, code, capsys, cli_state):
    assert cli.main(argv) == code
    out, err = capsys.readouterr()
    assert out.strip() == cli.usage() and err == ""


def test_unknown_job_is_one_line_naming_the_jobs(capsys, cli_state):
    assert cli.main(["frobnicate", "x"]) == 2
    (line,) = lines(capsys.readouterr().err)
    assert line == f"yard: unknown job 'frobnicate' (jobs: {', '.join(JOBS)})"


def test_yard_help_lists_the_jobs():
    r = subprocess.run([sys.executable, "-m", "cluster", "--help"], cwd=REPO, capture_output=True, text=True)
    assert r.returncode == 0
    for job in ("zoo", "config", "status", "demo"):
        assert f"\n  {job} " in r.stdout
    bad = subprocess.run([sys.executable, "-m", "cluster", "frobnicate"], cwd=REPO, capture_output=True, text=True)
    assert bad.returncode == 2 and "unknown job 'frobnicate'" in bad.stderr


# --- dispatch and exit codes -------------------------------------------------------------------
def test_a_job_gets_the_rest_of_the_command_line_and_its_return_is_the_exit_code(capsys, cli_state):
    assert cli.main(["t-echo", "cfg.yaml", "a.b=1", "--flag"]) == 3
    assert capsys.readouterr().out == "echo: cfg.yaml a.b=1 --flag\n"
    assert cli.main(["t-silent"]) == 0  # None is success


def test_verbose_is_taken_out_of_the_arguments_anywhere_and_turns_debug_on(capsys, cli_state):
    assert cli.main(["-v", "t-echo", "x", "--verbose"]) == 1
    assert capsys.readouterr().out == "echo: x\n"
    assert os.environ["YARD_LOG"] == "debug" and logging.getLogger().level == logging.DEBUG


def test_a_user_error_is_one_line_prefixed_with_the_job_and_exit_2(capsys, cli_state):
    assert cli.main(["t-refusing"]) == 2
    assert lines(capsys.readouterr().err) == ["yard t-refusing: x.yaml: port: -1 must be >= 0"]


def test_a_missing_config_of_a_real_job_is_one_line(tmp_path, capsys, cli_state):
    missing = tmp_path / "missing.yaml"
    assert cli.main(["chat", str(missing)]) == 2
    (line,) = lines(capsys.readouterr().err)
    assert line.startswith(f"yard chat: {missing}") and "no such" in line


def test_an_interrupt_is_exit_130_and_our_own_crash_keeps_its_traceback(capsys, cli_state):
    assert cli.main(["t-interrupted"]) == 130
    assert lines(capsys.readouterr().err) == ["yard t-interrupted: interrupted"]
    with pytest.raises(RuntimeError, match="a bug of ours"):
        cli.main(["t-crashing"])


# --- yard config check -------------------------------------------------------------------------
def test_config_check_prints_ok_files_and_one_line_per_invalid_one(tmp_path, capsys):
    (tmp_path / "a.yaml").write_text(GOOD)
    (tmp_path / "b.yaml").write_text(BAD)
    assert cli.config_main(["check", str(tmp_path / "a.yaml")]) == 0
    assert capsys.readouterr().out == f"ok    {tmp_path / 'a.yaml'}\n1 ok, 0 invalid\n"
    assert cli.config_main(["check", str(tmp_path)]) == 2
    out, err = capsys.readouterr()
    assert out == f"ok    {tmp_path / 'a.yaml'}\n1 ok, 1 invalid\n"
    (line,) = lines(err)
    assert line.startswith(f"{tmp_path / 'b.yaml'}: models.tiny.load_in: '2bit'")


def test_config_without_an_action_or_path_is_a_usage_error(capsys):
    for argv in ([], ["check"], ["lint", "x.yaml"]):
        with pytest.raises(SystemExit) as exit_:
            cli.config_main(argv)
        assert exit_.value.code == 2, argv
    assert "usage: yard config" in capsys.readouterr().err


def test_cli_config_check_shipped_configs_pass():
    r = yard("config", "check", "configs/")
    assert r.returncode == 0, r.stderr
    assert "0 invalid" in r.stdout
    assert "ok    configs/models.yaml" in r.stdout


def test_cli_broken_config_exits_2_with_one_line_no_traceback(tmp_path):
    bad = tmp_path / "m.yaml"
    bad.write_text(BAD)
    r = yard("config", "check", str(bad))
    assert r.returncode == 2
    err = r.stderr.strip().splitlines()
    assert len(err) == 1 and "Traceback" not in r.stderr
    assert f"{bad}: models.tiny.load_in: '2bit'" in err[0]


# --- logging -----------------------------------------------------------------------------------
def test_setup_logging_levels_and_one_stderr_handler(cli_state, capsys):
    from cluster.joblog import StderrHandler

    cli.setup_logging()
    root = logging.getLogger()
    assert root.level == logging.INFO and [type(h) for h in root.handlers] == [StderrHandler]
    assert all(logging.getLogger(n).level == logging.WARNING for n in NOISY)
    logging.getLogger("yard.test").info("hello from the test")
    logging.getLogger("yard.test").debug("not shown")
    err = capsys.readouterr().err
    assert "INFO yard.test: hello from the test" in err and "not shown" not in err
    cli.setup_logging(verbose=True)
    assert root.level == logging.DEBUG and len(root.handlers) == 1
