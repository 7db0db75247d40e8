"""Every file the report writes lands inside the folder it was given: a preset tag read back from a store, `--out` and
the links inside it are refused in one line (exit code 2) before anything is written."""

import subprocess
import sys
from pathlib import Path

import mlflow
import pytest
from conftest import ROOT, make_config

from aos_bench import report
from aos_bench.checks import validate
from aos_bench.errors import USAGE_EXIT, UsageError


def parent_only(folder: Path, preset: str) -> tuple[str, str]:
    """A store holding one FINISHED sweep parent run tagged with `preset` (another user's sweep, say): its URI and id."""
    uri = f"sqlite:///{folder}/mlflow.db"
    client = mlflow.MlflowClient(uri)
    experiment_id = client.create_experiment("aos_bench", artifact_location=(folder / "artifacts").as_uri())
    run_id = client.create_run(experiment_id, tags={"sweep_key": "k", "preset": preset}).info.run_id
    client.set_terminated(run_id, "FINISHED")
    return uri, run_id


def refused(capsys: pytest.CaptureFixture, *argv: str) -> str:
    """The one line `python -m aos_bench.report argv` stops with, after checking that it exits with code 2."""
    with pytest.raises(SystemExit) as stop:
        report.main(list(argv))
    assert stop.value.code == USAGE_EXIT
    err = capsys.readouterr().err
    lines = [line for line in err.strip().splitlines() if " INFO mlflow." not in line]  # the store's own log of a new file
    assert len(lines) == 1 and lines[0].startswith("aos_bench: report: ") and "Traceback" not in err, err
    return lines[0]


def files_under(folder: Path) -> set[Path]:
    """Every file and link under `folder`, less the store's own."""
    return {path for path in folder.rglob("*") if "artifacts" not in path.parts and path.name != "mlflow.db"}


@pytest.mark.parametrize("preset", ["../../escaped", "/tmp/aos_escaped_report", "a/b", ".."])
def test_a_stored_preset_that_would_leave_out_is_refused_before_any_file(tmp_path, capsys, preset):
    (tmp_path / "one" / "two").mkdir(parents=True)
    uri, sweep = parent_only(tmp_path, preset)
    before = files_under(tmp_path)
    line = refused(capsys, "--tracking-uri", uri, "--sweep", sweep, "--out", str(tmp_path / "one" / "two" / "out"))
    assert f"report name {preset!r}: a plain name" in line
    assert files_under(tmp_path) == before and not Path("/tmp/aos_escaped_report.md").exists()


def test_a_link_inside_out_that_points_outside_is_refused_and_its_target_kept(tmp_path, capsys):
    uri, sweep = parent_only(tmp_path, "smoke")
    outside = tmp_path / "outside.md"
    outside.write_text("another user's file\n")
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "smoke.md").symlink_to(outside)
    line = refused(capsys, "--tracking-uri", uri, "--sweep", sweep, "--out", str(tmp_path / "out"))
    assert f"{tmp_path / 'out' / 'smoke.md'} is a symbolic link (to {outside})" in line
    assert outside.read_text() == "another user's file\n" and sorted(p.name for p in (tmp_path / "out").iterdir()) == ["smoke.md"]


def test_out_that_is_a_file_and_a_sweep_not_found_end_in_one_line_with_exit_code_2(tmp_path, capsys):
    uri, sweep = parent_only(tmp_path, "smoke")
    (tmp_path / "file").write_text("kept\n")
    assert "--out " in refused(capsys, "--tracking-uri", uri, "--sweep", sweep, "--out", str(tmp_path / "file"))
    assert (tmp_path / "file").read_text() == "kept\n"
    assert "no run 'nosuchrun' in this store" in refused(capsys, "--tracking-uri", uri, "--sweep", "nosuchrun", "--out", str(tmp_path))
    assert "no experiment 'other'" in refused(capsys, "--tracking-uri", uri, "--experiment", "other", "--out", str(tmp_path))


@pytest.mark.parametrize("preset", ["../../escaped", "/abs/escaped", "a/b", ".hidden"])
def test_preset_must_be_a_plain_name(preset):
    with pytest.raises(UsageError, match=r"^preset=.*: a plain name"):
        validate(make_config("experiment=smoke", f"preset={preset}"))
    validate(make_config("experiment=smoke", "preset=my_study-2.1"))  # letters, digits, _ . - pass


def test_a_sweep_given_a_preset_outside_its_folder_stops_at_the_door(tmp_path):
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "PYTHONPATH": str(ROOT)}
    result = subprocess.run(
        [sys.executable, "-m", "aos_bench", "-m", "experiment=smoke", "preset=../../escaped", f"hydra.sweep.dir={tmp_path}/sweep"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == USAGE_EXIT, result.stderr[-2000:]
    assert result.stderr.strip().splitlines()[-1].startswith("aos_bench: preset=../../escaped: a plain name")
    assert not (tmp_path / "mlruns").exists() and not list(tmp_path.parent.parent.glob("escaped*"))


def test_a_sweep_whose_dir_holds_a_link_at_its_report_keeps_the_links_target(tmp_path):
    outside = tmp_path / "outside.md"
    outside.write_text("another user's file\n")
    (tmp_path / "sweep").mkdir()
    (tmp_path / "sweep" / "smoke.md").symlink_to(outside)
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    args = ["experiment=smoke", "imbalance.mu=0.3", "method=base", "seed=0", "train.max_steps=1", f"hydra.sweep.dir={tmp_path}/sweep"]
    result = subprocess.run([sys.executable, "-m", "aos_bench", "-m", *args], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == USAGE_EXIT, result.stderr[-2000:]
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith(f"aos_bench: report: {tmp_path / 'sweep' / 'smoke.md'} is a symbolic link (to {outside})"), last
    assert outside.read_text() == "another user's file\n" and not (tmp_path / "sweep" / "smoke.csv").exists()
