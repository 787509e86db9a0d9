"""droplab.sweep: a killed sweep (or one of its workers) loses and doubles nothing and resumes,
shards partition the work, one sweep writes into a folder at a time, bad input is refused."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from droplab import compare, data, experiments, records, sweep

CMD = [sys.executable, "-m", "droplab.sweep", "run", "residual", "--scale", "smoke", "--dataset", "synthetic",
       "--seeds", "2", "--only", "none,P6", "--workers", "1"]


def _env() -> dict[str, str]:
    return {**os.environ, "DROPLAB_SCALE": "smoke", "DROPLAB_DEVICE": "cpu", "OMP_NUM_THREADS": "1"}


def _kill_after_first_record(cmd: list[str], folder: Path) -> None:
    """Start the sweep ``cmd`` and SIGKILL it as soon as its first record appears in ``folder``."""
    proc = subprocess.Popen(cmd, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 180
    while not list(folder.glob("*.json")) and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the sweep finished before it could be killed"


@pytest.mark.slow                    # sweeps in their own processes, killed mid-run and resumed
def test_a_sweep_killed_mid_run_resumes_with_one_complete_record_per_run(tmp_path):
    folder = tmp_path / "residual" / "smoke" / "synthetic"
    _kill_after_first_record(CMD + ["--results", str(tmp_path)], folder)
    first = {p.name: p.stat().st_mtime_ns for p in folder.glob("*.json")}
    assert 1 <= len(first) < 4

    # what a crash can leave behind: a half-written record and a temporary file
    todo = sorted({"none-seed0.json", "none-seed1.json", "P6-seed0.json", "P6-seed1.json"} - set(first))
    (folder / todo[0]).write_text('{"status": "complete", "config": {"na')
    (folder / f".{todo[-1]}.12345.tmp").write_text("{")

    rerun = subprocess.run(CMD + ["--results", str(tmp_path)], env=_env(), capture_output=True, text=True,
                           timeout=120, check=False)
    assert rerun.returncode == 0, rerun.stderr
    files = sorted(p.name for p in folder.iterdir() if not p.name.startswith(".sweep.lock"))
    assert files == ["P6-seed0.json", "P6-seed1.json", "none-seed0.json", "none-seed1.json"]
    for name in files:
        rec = json.loads((folder / name).read_text())
        assert rec["status"] == "complete" and f"{rec['config']['name']}-seed{rec['seed']}.json" == name
        assert rec["provenance"]["torch"] and rec["history"]["epochs_run"] == 1
    assert all((folder / n).stat().st_mtime_ns == t for n, t in first.items())   # finished runs not redone
    assert len(records.load_whole("residual", "smoke", "synthetic", tmp_path)) == 4


def test_shards_partition_the_runs():
    everything = experiments.plan("head", seeds=3)
    shards = [experiments.plan("head", seeds=3, shard=f"{i}/4") for i in range(4)]
    keys = [{r.key for r in s} for s in shards]
    assert set().union(*keys) == {r.key for r in everything}
    assert sum(len(k) for k in keys) == len(everything)
    assert len(everything) == 3 * len(experiments.get("head").configs)


def test_the_plan_runs_all_configs_of_a_seed_first():
    runs = experiments.plan("residual", seeds=2, only=["P6", "none"])
    assert [r.key for r in runs] == ["none-seed0", "P6-seed0", "none-seed1", "P6-seed1"]


@pytest.mark.parametrize("call, says", [
    (lambda: experiments.get("residuals"), "residual, residual-56, head"),
    (lambda: experiments.plan("residual", only=["P9"]), "none, P0, P1"),
    (lambda: experiments.parse_shard("2/2"), "0 <= i < n"),
    (lambda: experiments.parse_shard("first"), "i/n"),
    (lambda: sweep.run("residual", scale="huge"), "smoke, class, paper"),
])
def test_bad_names_say_what_is_valid(call, says):
    with pytest.raises(ValueError) as err:
        call()
    assert says in str(err.value)


def test_cli_lists_experiments_and_rejects_bad_names(capsys):
    assert sweep.main(["list"]) == 0
    assert "residual" in capsys.readouterr().out
    assert sweep.main(["run", "nope"]) == 2
    assert "valid experiments are" in capsys.readouterr().err


def test_python_api_runs_and_tables_a_small_sweep(tmp_path, capsys):
    recs = sweep.run("head", scale="smoke", seeds=1, only=["none", "H4"], dataset="synthetic",
                     results_dir=tmp_path, device="cpu")
    assert [r["config"]["name"] for r in recs] == ["none", "H4"]
    acc = {r["config"]["name"]: r["final_test_acc"] for r in recs}
    (c,) = compare.against_baselines(recs)
    assert (c.config, c.baseline, c.n) == ("H4", "none", 1) and c.mean == pytest.approx(acc["H4"] - acc["none"])
    for rec in recs:   # a count of right answers out of test_size
        right = rec["final_test_acc"] * rec["test_size"]
        assert right == pytest.approx(round(right), abs=1e-9)
    out_csv = tmp_path / "out" / "table.csv"
    assert sweep.main(["table", "head", "--scale", "smoke", "--dataset", "synthetic", "--results", str(tmp_path),
                       "--csv", str(out_csv)]) == 0
    printed = capsys.readouterr().out
    assert f"{100 * acc['H4']:.2f}" in printed and "vs none" in printed
    with open(out_csv, newline="") as f:
        (written,) = list(csv.DictReader(f))
    assert (written["config"], written["baseline"], float(written["mean"])) == ("H4", "none", pytest.approx(c.mean))
    assert not list(records.record_dir("head", "smoke", "synthetic", tmp_path).glob("*.csv"))


@pytest.mark.slow                    # sweeps in their own processes, killed mid-run and resumed
def test_a_sweep_with_two_workers_killed_mid_run_resumes_without_losing_or_doubling_a_run(tmp_path):
    folder = tmp_path / "head" / "smoke" / "synthetic"
    cmd = [sys.executable, "-m", "droplab.sweep", "run", "head", "--scale", "smoke", "--dataset", "synthetic",
           "--seeds", "1", "--only", "none,H1,H2,H3,H4,H5", "--workers", "2", "--results", str(tmp_path)]
    _kill_after_first_record(cmd, folder)
    time.sleep(3)                       # the workers die with the sweep: nothing is written after the kill
    first = {p.name: p.stat().st_mtime_ns for p in folder.glob("*.json")}
    assert 1 <= len(first) < 6
    time.sleep(2)
    assert {p.name: p.stat().st_mtime_ns for p in folder.glob("*.json")} == first

    rerun = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=300, check=False)
    assert rerun.returncode == 0, rerun.stderr
    assert sorted(p.name for p in folder.iterdir() if not p.name.startswith(".sweep.lock")) == sorted(
        f"{c}-seed0.json" for c in ("none", "H1", "H2", "H3", "H4", "H5"))
    assert all((folder / n).stat().st_mtime_ns == t for n, t in first.items())   # finished runs not redone
    assert "6 runs complete" in rerun.stdout


def test_a_record_holds_train_val_and_test_accuracy_and_its_spec(tmp_path):
    rec = sweep.run_one("residual", "P6", 0, scale="smoke", dataset="synthetic", results_dir=tmp_path,
                        device="cpu")
    for split in ("train", "val", "test"):
        assert 0 <= rec[f"final_{split}_acc"] <= 1
    assert (rec["train_size"], rec["val_size"]) == (256, 128)
    assert rec["spec"] == experiments.spec("residual", "P6", "smoke", "synthetic").to_dict()
    assert rec["spec"]["net"]["dropout_at"] == "P6" and rec["fast_path"]["precision"] in ("fp32", "bf16")


def test_validation_images_are_held_out_of_the_training_images():
    tr, va, te = data.splits(data.DataSpec("synthetic", 200, 100, 64))
    seen = {bytes(x.numpy()) for x in tr.images}
    assert len(tr.labels) == 200 and len(va.labels) == 100 and len(te.labels) == 64
    assert not any(bytes(x.numpy()) in seen for x in va.images)


def _make_records(tmp_path, only=("none", "H4")):
    return sweep.run("head", scale="smoke", seeds=2, only=list(only), dataset="synthetic", results_dir=tmp_path,
                     device="cpu")


def test_a_stale_record_is_redone_by_the_next_sweep(tmp_path):
    _make_records(tmp_path, only=("none",))
    path = records.record_dir("head", "smoke", "synthetic", tmp_path) / "none-seed0.json"
    stale = json.loads(path.read_text())
    stale["spec"]["net"]["width"] = 99
    path.write_text(json.dumps(stale))
    _make_records(tmp_path, only=("none",))
    assert json.loads(path.read_text())["spec"]["net"]["width"] == experiments.spec("head", "none", "smoke",
                                                                             "synthetic").net.width


def test_a_field_added_with_its_default_leaves_records_current():
    expected = experiments.spec("head", "none", "smoke", "synthetic")
    older = expected.to_dict()
    del older["recipe"]["compile"]                  # as if written before the field existed (default False)
    del older["data"]["label_noise"]
    assert expected.stale_fields(older) == []
    older["recipe"]["lr"] = 0.5
    assert expected.stale_fields(older) == ["recipe.lr"]


def test_past_the_time_limit_no_new_run_starts(tmp_path):
    recs = sweep.run("head", scale="smoke", seeds=1, only=["none", "H4"], dataset="synthetic",
                        results_dir=tmp_path, device="cpu", time_limit=0)
    assert recs == [] and not list(records.record_dir("head", "smoke", "synthetic", tmp_path).glob("*.json"))


def test_a_record_made_again_on_the_same_machine_reproduces_to_rounding(tmp_path):
    kept = sweep.run_one("head", "H4", 0, scale="smoke", dataset="synthetic", results_dir=tmp_path / "a",
                         device="cpu")
    check = sweep.reproduce("head", kept, tmp_path / "b")
    assert check["same_machine"] and check["tolerance"] == 1e-6
    assert max(check["gaps"].values()) <= 1e-6 and check["again"]["seed"] == 0


def test_a_record_is_made_again_in_its_own_precision_whatever_this_cpu_would_choose(tmp_path):
    kept = sweep.run_one("head", "H4", 0, scale="smoke", dataset="synthetic", results_dir=tmp_path / "a",
                         device="cpu", path={"precision": "bf16", "channels_last": False})
    assert kept["fast_path"]["precision"] == "bf16" and kept["spec"]["recipe"]["precision"] == "auto"
    check = sweep.reproduce("head", kept, tmp_path / "b")
    assert check["again"]["fast_path"]["precision"] == "bf16"
    assert check["same_machine"] and max(check["gaps"].values()) <= check["tolerance"]
    assert "cpu_capability" in check["again"]["provenance"]


def test_the_reproduction_check_reproduces_at_the_records_scale_and_rehearses_at_another(tmp_path):
    kept = sweep.run_one("head", "H4", 0, scale="smoke", dataset="synthetic", results_dir=tmp_path / "a",
                         device="cpu")
    check = sweep.reproduction_check("head", kept, ["none", "H4"], tmp_path / "b")  # the tests run at smoke
    assert check["ok"] and check["same_machine"] and max(check["gaps"].values()) <= check["tolerance"]
    assert check["summary"].startswith(f"H4, seed 0: committed {100 * kept['final_test_acc']:.2f} %, again ")
    check = sweep.reproduction_check("head", dict(kept, scale="class"), ["none", "H4"], tmp_path / "c")
    assert check["ok"] and [r["config"]["name"] for r in check["live"]] == ["none", "H4"]
    assert all(r["scale"] == "smoke" and r["dataset"] == "synthetic" for r in check["live"])
    assert check["summary"].startswith("smoke scale: 2 runs through the same code path, test accuracy none ")
    assert "gaps" not in check  # nothing was reproduced


def test_a_sweep_can_be_held_to_one_precision_and_refuses_another(tmp_path):
    recs = sweep.run("head", "smoke", 1, only=["none"], dataset="synthetic", results_dir=tmp_path,
                     device="cpu", progress=False, precision="fp32")
    assert [r["fast_path"]["precision"] for r in recs] == ["fp32"]
    with pytest.raises(ValueError, match="fp32 or bf16"):
        sweep.run("head", "smoke", 1, only=["none"], dataset="synthetic", results_dir=tmp_path,
                  precision="fp16")




HEAD6 = [sys.executable, "-m", "droplab.sweep", "run", "head", "--scale", "smoke", "--dataset", "synthetic",
         "--seeds", "1", "--only", "none,H1,H2,H3,H4,H5", "--workers", "2"]


def _children(pid: int) -> list[int]:
    """The worker processes a sweep spawned (their command line runs multiprocessing's spawn_main)."""
    out = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
            cmd = (stat.parent / "cmdline").read_bytes()
        except OSError:
            continue
        if int(fields[1]) == pid and b"spawn_main" in cmd:
            out.append(int(stat.parent.name))
    return out


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="finds the workers through /proc (Linux)")
@pytest.mark.slow                    # a sweep in its own processes, a worker killed, the sweep rerun
def test_a_killed_worker_ends_the_sweep_which_a_rerun_completes_without_doubling_a_run(tmp_path):
    """A worker killed by the OOM killer or a signal used to hang the sweep for ever."""
    folder = tmp_path / "head" / "smoke" / "synthetic"
    proc = subprocess.Popen(HEAD6 + ["--results", str(tmp_path)], env=_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 180
    while not list(folder.glob("*.json")) and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    workers = _children(proc.pid)
    assert workers, "the sweep has no worker processes to kill"
    os.kill(workers[0], signal.SIGKILL)
    _, err = proc.communicate(timeout=240)          # before the fix: never returns
    if proc.returncode == 0:
        pytest.skip("the sweep finished its runs before the worker was killed")
    assert proc.returncode == 2 and "a worker process died" in err, err
    first = {p.name: p.stat().st_mtime_ns for p in folder.glob("*.json")}
    rerun = subprocess.run(HEAD6 + ["--results", str(tmp_path)], env=_env(), capture_output=True, text=True,
                           timeout=300, check=False)
    assert rerun.returncode == 0, rerun.stderr
    assert sorted(p.name for p in folder.glob("*.json")) == sorted(
        f"{c}-seed0.json" for c in ("none", "H1", "H2", "H3", "H4", "H5"))
    assert all((folder / n).stat().st_mtime_ns == t for n, t in first.items())   # finished runs not redone


def test_a_second_sweep_into_the_same_folder_is_refused_naming_the_first(tmp_path):
    folder = records.record_dir("head", "smoke", "synthetic", tmp_path)
    holder = subprocess.Popen([sys.executable, "-c", (
        "import sys, time; from pathlib import Path; from droplab import sweep\n"
        f"with sweep.folder_lock(Path({str(folder)!r})):\n"
        "    print('held', flush=True); time.sleep(60)")], env=_env(), stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        second = subprocess.run(CMD[:4] + ["head", "--scale", "smoke", "--dataset", "synthetic", "--only", "none",
                                           "--results", str(tmp_path)], env=_env(), capture_output=True, text=True,
                                timeout=120, check=False)
        assert second.returncode == 2
        assert f"{folder} is being written by process {holder.pid}" in second.stderr, second.stderr
        assert "another --results folder" in second.stderr
        assert not list(folder.glob("*.json"))
    finally:
        holder.kill()
        holder.wait()


def test_a_live_sweeps_temporary_file_is_left_alone_and_a_dead_ones_removed(tmp_path):
    folder = records.record_dir("head", "smoke", "synthetic", tmp_path)
    folder.mkdir(parents=True)
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True, check=False)
    dead = folder / f".none-seed0.json.{int(gone.stdout)}.tmp"
    live = folder / f".H4-seed0.json.{os.getpid()}.tmp"
    dead.write_text("{")
    live.write_text("{")
    assert sweep.remove_dead_temporaries(folder) == [dead]
    assert live.exists() and not dead.exists()


def test_repeated_configs_are_run_once_and_an_empty_list_is_refused(capsys):
    assert [r.key for r in experiments.plan("residual", 1, only=["none", "none", "P0"])] == ["none-seed0", "P0-seed0"]
    assert sweep.main(["run", "residual", "--scale", "smoke", "--only", " , "]) == 2
    assert "no config named; valid configs of 'residual' are none, P0" in capsys.readouterr().err


def test_repeated_configs_are_checked_once(tmp_path):
    sweep.run("head", "smoke", 1, only=["none", "H4"], dataset="synthetic", results_dir=tmp_path, device="cpu")
    recs = records.check_records("head", "smoke", 1, only=["H4", "H4", "none"], dataset="synthetic",
                                 results_dir=tmp_path)
    assert [r["config"]["name"] for r in recs] == ["none", "H4"]


def test_the_scale_flag_wins_over_a_bad_environment_variable(tmp_path):
    run = subprocess.run(CMD[:4] + ["head", "--scale", "smoke", "--dataset", "synthetic", "--only", "none",
                                    "--workers", "1", "--results", str(tmp_path)],
                         env={**_env(), "DROPLAB_SCALE": "bogus"}, capture_output=True, text=True, timeout=120, check=False)
    assert run.returncode == 0, run.stderr


def test_a_data_set_name_that_is_a_path_is_refused(capsys):
    assert sweep.main(["table", "head", "--scale", "smoke", "--dataset", "../../x"]) == 2
    assert "unknown data set '../../x'" in capsys.readouterr().err
