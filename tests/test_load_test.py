"""scripts/load_test.py: jobs logging at once to a local `mlflow server`, its figures and the runs it leaves."""

import re
import subprocess
import sys

from conftest import ROOT


def test_the_load_test_reports_every_job_and_writes_its_command(tmp_path, env):
    """16 s here: the server's start and 3 jobs' logging."""
    out = tmp_path / "load.md"
    command = [sys.executable, str(ROOT / "scripts" / "load_test.py"), "--jobs", "3", "--parallel", "2", "--epochs", "4",
               "--stores", "sqlite", "--write", str(out)]
    result = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    [line] = result.stdout.splitlines()
    assert re.fullmatch(r"sqlite: 3 jobs, 2 at once, 4 epochs each: [\d.]+ jobs/min; one job's logging p50 [\d.]+ s, p95 [\d.]+ s; "
                        r"errors 0; runs lost 0, left RUNNING 0, FINISHED 3 \(wall [\d.]+ s\)", line), line
    p50, p95 = (float(value) for value in re.findall(r"p(?:50|95) ([\d.]+) s", line))
    assert 0 < p50 <= p95
    text = out.read_text()
    assert text.startswith(f"`python scripts/load_test.py --jobs 3 --parallel 2 --epochs 4 --stores sqlite --write {out}`") and line in text


def test_the_load_test_refuses_unbounded_loads(env):
    command = [sys.executable, str(ROOT / "scripts" / "load_test.py"), "--jobs", "100000"]
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and "--jobs in 1..500" in result.stderr


def test_a_load_past_its_timeout_stops_by_itself_and_counts_what_was_not_done(tmp_path, env):
    """Jobs not done at --timeout are errors; the test ends by itself, without a traceback (its workers once turned the
    pool's SIGTERM into a logged error and survived it, and the test never ended)."""
    command = [sys.executable, str(ROOT / "scripts" / "load_test.py"), "--jobs", "4", "--parallel", "2", "--epochs", "500",
               "--timeout", "2", "--stores", "sqlite"]
    result = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=180)
    assert result.returncode == 0 and "Traceback" not in result.stderr, result.stderr
    [line] = result.stdout.splitlines()
    assert "errors 4;" in line and "first error: not done within --timeout 2 s" in line, line
    assert re.search(r"runs lost \d, left RUNNING \d, FINISHED 0", line), line
