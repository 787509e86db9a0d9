"""droplab.sweep: a killed sweep resumes, shards partition the work, tables report mean +- 95% CI."""

from __future__ import annotations

import csv
import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from droplab import experiments, metrics, records, sweep


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
                           timeout=120)
    assert rerun.returncode == 0, rerun.stderr
    files = sorted(p.name for p in folder.iterdir())
    assert files == ["P6-seed0.json", "P6-seed1.json", "none-seed0.json", "none-seed1.json"]
    for name in files:
        rec = json.loads((folder / name).read_text())
        assert rec["status"] == "complete" and f"{rec['config']['name']}-seed{rec['seed']}.json" == name
        assert rec["provenance"]["torch"] and rec["history"]["epochs_run"] == 1
    assert all((folder / n).stat().st_mtime_ns == t for n, t in first.items())   # finished runs not redone
    assert len(records.load_records("residual", "smoke", "synthetic", tmp_path)) == 4


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


def _record(config: str, seed: int, acc: float | None, baseline: str = "none") -> dict:
    return {"status": "complete", "config": {"name": config, "baseline": baseline}, "seed": seed,
            "final_test_acc": acc, "history": {"diverged": acc is None}}


def test_table_mean_and_95_ci_on_known_numbers():
    recs = [_record("none", s, a) for s, a in enumerate((0.90, 0.92, 0.94))]
    recs += [_record("P6", s, a) for s, a in enumerate((0.93, 0.95, 0.97))]
    rows = {r.config: r for r in records.table(recs)}
    # s = 0.02, n = 3: half-width = t_{0.975,2} * 0.02 / sqrt(3) = 4.303 * 0.011547
    assert rows["none"].n == 3 and rows["none"].mean == pytest.approx(0.92)
    assert rows["none"].ci95 == pytest.approx(4.303 * 0.02 / math.sqrt(3))
    assert rows["P6"].diff == pytest.approx(0.03)
    assert rows["none"].diff == pytest.approx(0.0)


def test_one_seed_gives_no_ci_and_says_so():
    rows = records.table([_record("none", 0, 0.9)])
    assert math.isnan(rows[0].ci95)
    assert "n/a (n=1)" in records.format_table(rows)


def test_diverged_runs_are_counted_not_averaged():
    rows = {r.config: r for r in records.table([_record("P7", 0, None), _record("P7", 1, 0.8)])}
    assert rows["P7"].n == 1 and rows["P7"].diverged == 1 and rows["P7"].mean == pytest.approx(0.8)


def test_t_quantiles():
    assert metrics.t975(1) == pytest.approx(12.706)
    assert metrics.t975(30) == pytest.approx(2.042)
    assert metrics.t975(60) == pytest.approx(2.000, abs=0.002)
    assert metrics.t975(120) == pytest.approx(1.980, abs=0.002)
    assert metrics.t975(10**6) == pytest.approx(1.960, abs=0.001)


def test_partial_or_temporary_files_are_never_read_as_records(tmp_path):
    folder = records.record_dir("head", "smoke", "synthetic", tmp_path)
    folder.mkdir(parents=True)
    (folder / "none-seed0.json").write_text('{"status": "complete"')         # truncated
    (folder / "H4-seed0.json").write_text(json.dumps({**_record("H4", 0, 0.5), "status": "running"}))
    (folder / ".H5-seed0.json.1.tmp").write_text(json.dumps(_record("H5", 0, 0.5)))
    records.write_atomic(folder / "H6-seed0.json", _record("H6", 0, 0.5))
    assert [r["config"]["name"] for r in records.load_records("head", "smoke", "synthetic", tmp_path)] == ["H6"]


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


def test_python_api_runs_and_tables_a_small_sweep(tmp_path):
    recs = sweep.run("head", scale="smoke", seeds=1, only=["none", "H4"], dataset="synthetic",
                        results_dir=tmp_path, device="cpu")
    assert [r["config"]["name"] for r in recs] == ["none", "H4"]
    rows = records.table(recs)
    assert [r.config for r in rows] == ["none", "H4"] and all(0 <= r.mean <= 1 for r in rows)
    # one seed: each mean is that run's test accuracy, a count of right answers out of test_size,
    # with no CI; H4 differs from its baseline "none" by exactly the difference of the two runs
    acc = {r["config"]["name"]: r["final_test_acc"] for r in recs}
    for row, rec in zip(rows, recs):
        assert (row.n, row.mean, row.baseline, row.n_paired) == (1, acc[row.config], "none", 1)
        right = row.mean * rec["test_size"]
        assert math.isnan(row.ci95) and right == pytest.approx(round(right), abs=1e-9)
    assert rows[0].diff == 0.0 and rows[1].diff == pytest.approx(acc["H4"] - acc["none"])
    assert sweep.main(["table", "head", "--scale", "smoke", "--dataset", "synthetic",
                       "--results", str(tmp_path)]) == 0
    csv_path = Path(records.record_dir("head", "smoke", "synthetic", tmp_path)) / "table.csv"
    with open(csv_path, newline="") as f:
        written = list(csv.DictReader(f))
    assert [(w["config"], int(w["n"]), float(w["mean"]), float(w["diff"])) for w in written] == [
        (r.config, r.n, r.mean, r.diff) for r in rows]


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

    rerun = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr
    assert sorted(p.name for p in folder.iterdir()) == sorted(f"{c}-seed0.json" for c in
                                                             ("none", "H1", "H2", "H3", "H4", "H5"))
    assert all((folder / n).stat().st_mtime_ns == t for n, t in first.items())   # finished runs not redone
    assert "6 runs complete" in rerun.stdout


def test_a_record_holds_train_val_and_test_accuracy_and_its_spec(tmp_path):
    rec = sweep.run_one("residual", "P6", 0, scale="smoke", dataset="synthetic", results_dir=tmp_path,
                        device="cpu")
    for split in ("train", "val", "test"):
        assert 0 <= rec[f"final_{split}_acc"] <= 1
    assert (rec["train_size"], rec["val_size"]) == (256, 128)
    assert rec["spec"] == experiments.spec("residual", "P6", "smoke", "synthetic")
    assert rec["spec"]["net"]["dropout_at"] == "P6" and rec["fast_path"]["precision"] in ("fp32", "bf16")


def test_validation_images_are_held_out_of_the_training_images():
    tr, va, te = experiments.splits("synthetic", 200, 100, 64)
    seen = {bytes(x.numpy()) for x in tr.images}
    assert len(tr.labels) == 200 and len(va.labels) == 100 and len(te.labels) == 64
    assert not any(bytes(x.numpy()) in seen for x in va.images)


def _make_records(tmp_path, only=("none", "H4")):
    return sweep.run("head", scale="smoke", seeds=2, only=list(only), dataset="synthetic", results_dir=tmp_path,
                     device="cpu")


def test_whole_records_pass_the_guard(tmp_path):
    made = _make_records(tmp_path)
    got = records.check_records("head", "smoke", 2, only=["none", "H4"], dataset="synthetic", results_dir=tmp_path)
    assert [r["config"]["name"] for r in got] == [r["config"]["name"] for r in made]


def test_the_guard_names_missing_corrupt_and_stale_records_and_the_command_that_makes_them(tmp_path):
    _make_records(tmp_path)
    folder = records.record_dir("head", "smoke", "synthetic", tmp_path)
    (folder / "none-seed1.json").unlink()                                   # missing
    (folder / "H4-seed0.json").write_text('{"status": "complete", "con')    # partial
    stale = json.loads((folder / "H4-seed1.json").read_text())
    stale["spec"]["recipe"]["epochs"] = 7                                   # made with other sizes
    (folder / "H4-seed1.json").write_text(json.dumps(stale))
    with pytest.raises(records.RecordsError) as err:
        records.check_records("head", "smoke", 2, only=["none", "H4"], dataset="synthetic", results_dir=tmp_path)
    msg = str(err.value)
    assert "missing: none-seed1.json" in msg
    assert "partial or corrupt: H4-seed0.json" in msg
    assert "H4-seed1.json (recipe.epochs)" in msg
    assert "python -m droplab.sweep run head --scale smoke --seeds 2 --only none,H4 --dataset synthetic" in msg


def test_a_stale_record_is_redone_by_the_next_sweep(tmp_path):
    _make_records(tmp_path, only=("none",))
    path = records.record_dir("head", "smoke", "synthetic", tmp_path) / "none-seed0.json"
    stale = json.loads(path.read_text())
    stale["spec"]["net"]["width"] = 99
    path.write_text(json.dumps(stale))
    _make_records(tmp_path, only=("none",))
    assert json.loads(path.read_text())["spec"]["net"]["width"] == experiments.spec("head", "none", "smoke",
                                                                             "synthetic")["net"]["width"]


def test_a_field_added_with_its_default_leaves_records_current():
    expected = experiments.spec("head", "none", "smoke", "synthetic")
    older = json.loads(json.dumps(expected))
    del older["recipe"]["compile"]                  # as if written before the field existed (default False)
    assert records.stale_fields(older, expected) == []
    older["recipe"]["lr"] = 0.5
    assert records.stale_fields(older, expected) == ["recipe.lr"]


def test_past_the_time_limit_no_new_run_starts(tmp_path):
    recs = sweep.run("head", scale="smoke", seeds=1, only=["none", "H4"], dataset="synthetic",
                        results_dir=tmp_path, device="cpu", time_limit=0)
    assert recs == [] and not list(records.record_dir("head", "smoke", "synthetic", tmp_path).glob("*.json"))


def test_table_reports_the_paired_difference_and_the_smallest_detectable_one():
    recs = [_record("none", s, a) for s, a in enumerate((0.90, 0.92, 0.94))]
    recs += [_record("P6", s, a) for s, a in enumerate((0.92, 0.95, 0.96))]
    row = {r.config: r for r in records.table(recs)}["P6"]
    diffs = [0.02, 0.03, 0.02]
    assert row.n_paired == 3 and row.diff == pytest.approx(sum(diffs) / 3)
    sd = math.sqrt(sum((d - sum(diffs) / 3) ** 2 for d in diffs) / 2)
    assert row.diff_ci95 == pytest.approx(4.303 * sd / math.sqrt(3))
    assert row.mde == pytest.approx((4.303 + 1.061) * sd / math.sqrt(3))


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


def test_each_position_gets_the_p_with_the_best_validation_accuracy_never_the_test_one():
    def rec(name, pos, p, seed, val, test):
        return {"config": {"name": name, "dropout_at": pos, "p": p}, "seed": seed,
                "final_val_acc": val, "final_test_acc": test}
    recs = [rec("P6-p0.05", "P6", 0.05, s, 0.80, 0.90) for s in (0, 1)]
    recs += [rec("P6-p0.1", "P6", 0.1, 0, 0.82, 0.70), rec("P6-p0.1", "P6", 0.1, 1, 0.80, 0.70)]
    recs += [rec("P0-p0.05", "P0", 0.05, 0, 0.7, 0.7), rec("P0-p0.2", "P0", 0.2, 0, 0.7, 0.9)]
    recs += [rec("P6-matched", "P6", 0.5, 0, 0.99, 0.99)]              # not a grid config: ignored
    assert records.tuned_p(recs) == {"P6": 0.1, "P0": 0.05}          # P0: a tie goes to the smaller p
    assert records.tuned_p(recs, "final_test_acc") == {"P6": 0.05, "P0": 0.2}
