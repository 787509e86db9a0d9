"""Run records: every reader goes through one checked loader, which refuses a wrong record by
name; and checks on the committed records themselves (they run in CI at every scale)."""

from __future__ import annotations

import json
import shutil

import pytest

from droplab import compare, experiments, records, sweep

# ----------------------------------------------------------------------------- the committed records

def test_every_committed_record_passes_the_checks():
    """Each committed folder is whole: every config with a record there has one for each seed up
    to its last, and each record matches the registry (spec, config, baseline) and is well formed."""
    folders = sorted(p for p in records.COMMITTED.glob("*/*/*") if p.is_dir())
    assert folders, f"no committed records under {records.COMMITTED}"
    for folder in folders:
        exp, sc, ds = folder.relative_to(records.COMMITTED).parts
        recs = records.load_whole(exp, sc, ds)
        assert len(recs) == len(list(folder.glob("*.json"))), folder


def test_bf16_with_channels_last_learns_what_fp32_learns_on_the_committed_precision_records():
    """At class scale, paired by seed, bf16 autocast + channels_last against fp32 contiguous for
    none, P0 and P6: every paired 95 % interval contains 0, and the bf16 runs were faster on the
    CPU that made them (one with native bf16)."""
    recs = records.check_records("precision", "class", 5)
    for pos in ("none", "P0", "P6"):
        c = compare.compare(recs, f"{pos}-bf16", f"{pos}-fp32")
        assert c.n == 5 and c.resolved == 0, c
        assert abs(c.mean) < 0.01, c                                   # under a point either way
    ran = {(r["config"]["name"], r["fast_path"]["precision"], r["fast_path"]["channels_last"]) for r in recs}
    assert ran == {(f"{p}-{x}", x, x == "bf16") for p in ("none", "P0", "P6") for x in ("fp32", "bf16")}
    secs = {x: sum(r["train_seconds"] for r in recs if r["fast_path"]["precision"] == x) for x in ("fp32", "bf16")}
    assert secs["bf16"] < secs["fp32"], secs


def test_the_evidence_records_compared_in_the_chapters_were_all_made_in_fp32():
    """A paired difference between a bf16 and an fp32 run would mix precision into position."""
    for exp in ("residual", "head", "residual-p", "head-p", "norm", "vit", "early", "control"):
        recs = records.load_whole(exp, "class")
        if exp != "control" or recs:
            assert recs, exp
        assert {r["fast_path"]["precision"] for r in recs} <= {"fp32"}, exp


def _made(config: str, seed: int, device: str, commit: str, seconds: float) -> dict:
    return {"config": {"name": config}, "seed": seed, "wall_seconds": seconds,
            "provenance": {"device_name": device, "torch": "2.14.1", "git_commit": commit}}


def test_the_provenance_summary_names_every_machine_and_commit_and_sums_the_time():
    one = [_made("none", s, "CPU A", "abc", 60.0) for s in range(3)]
    assert records.provenance_summary(one) == (
        "3 records, made on CPU A with torch 2.14.1, commit abc; 3 minutes of training in all "
        "(each run on one CPU core or one GPU)")
    mixed = records.provenance_summary(one + [_made("P6", 0, "GPU B", "0123456789abcdef0123+dirty", 120.0)])
    assert mixed.startswith("4 records, made on CPU A with torch 2.14.1 and GPU B with torch 2.14.1, "
                            "commits 0123456789ab+dirty, abc;")
    assert "; 5 minutes of training in all" in mixed


# ----------------------------------------------------------------------------- refusing a wrong record

@pytest.fixture(scope="module")
def made(tmp_path_factory):
    """Two seeds of none and H4 of the head experiment (smoke, synthetic), made once."""
    root = tmp_path_factory.mktemp("made")
    sweep.run("head", "smoke", 2, only=["none", "H4"], dataset="synthetic", results_dir=root, device="cpu")
    return root


@pytest.fixture
def folder(made, tmp_path):
    shutil.copytree(made, tmp_path / "r")
    return records.record_dir("head", "smoke", "synthetic", tmp_path / "r")


def _edit(folder, name, change):
    path = folder / name
    rec = json.loads(path.read_text())
    change(rec)
    path.write_text(json.dumps(rec))
    return path


def _refusal(folder) -> str:
    with pytest.raises(records.RecordsError) as err:
        records.check_records("head", "smoke", 2, only=["none", "H4"], dataset="synthetic",
                              results_dir=folder.parents[2])
    return str(err.value)


def test_whole_records_pass_the_checks(folder):
    got = records.check_records("head", "smoke", 2, only=["none", "H4"], dataset="synthetic",
                                results_dir=folder.parents[2])
    assert [(r["config"]["name"], r["seed"], r["format"]) for r in got] == [
        ("none", 0, 2), ("H4", 0, 2), ("none", 1, 2), ("H4", 1, 2)]


def _set(*keys, value):
    def change(rec):
        d = rec
        for k in keys[:-1]:
            d = d[k]
        d[keys[-1]] = value
    return change


def _drop(*keys):
    def change(rec):
        d = rec
        for k in keys[:-1]:
            d = d[k]
        del d[keys[-1]]
    return change


@pytest.mark.parametrize("change, says", [
    (_set("config", "baseline", value="P6"), "baseline 'P6', the registry says 'none'"),
    (_set("format", value=3), "format 3 is newer than this droplab reads (up to 2): update droplab"),
    (_set("format", value="2"), "format '2' is not a format version"),
    (_set("spec", "future", value={"x": 1}), "future (unknown section)"),
    (_set("spec", "recipe", "epochs", value=7), "made with other settings than the registry's (recipe.epochs)"),
    (_set("final_test_acc", value=7.5), "final_test_acc 7.5 is not an accuracy in [0, 1]"),
    (_set("final_test_acc", value="0.9"), "final_test_acc '0.9' is not an accuracy in [0, 1]"),
    (_set("final_test_acc", value=None), "final_test_acc None is not an accuracy in [0, 1]"),
    (_drop("final_test_acc"), "final_test_acc None is not an accuracy in [0, 1]"),
    (_set("final_val_loss", value=-1.0), "final_val_loss -1.0 is not a finite loss"),
    (_set("config", value="H4"), "its config is not an object with a name"),
    (_set("seed", value="0"), "seed '0' is not a non-negative int"),
    (_set("history", value=[1, 2]), "its history is not an object"),
    (_set("scale", value="class"), "scale is 'class', but the file sits in the folder of 'smoke'"),
    (_set("status", value="running"), "status 'running': the run did not finish"),
    (_set("extra", value=1), "unknown field(s) ['extra']"),
    (_set("wall_seconds", value="slow"), "wall_seconds 'slow' is not a duration"),
    (_set("provenance", value=None), "its provenance does not name the device and torch"),
])
def test_a_tampered_record_is_refused_by_file_name_with_the_reason(folder, change, says):
    _edit(folder, "H4-seed1.json", change)
    msg = _refusal(folder)
    assert "H4-seed1.json (" in msg and says in msg, msg
    assert "make them with: python -m droplab.sweep run head --scale smoke --seeds 2 --only none,H4" in msg


def test_a_diverged_run_may_lack_accuracies_but_says_so_in_its_history(folder):
    def diverge(rec):
        rec["history"]["diverged"] = True
        for split in ("train", "val", "test"):
            rec[f"final_{split}_acc"] = rec[f"final_{split}_loss"] = None
    _edit(folder, "H4-seed1.json", diverge)
    recs = records.check_records("head", "smoke", 2, only=["none", "H4"], dataset="synthetic",
                                 results_dir=folder.parents[2])
    assert compare.summarize(recs)[1].diverged == 1


def test_missing_truncated_and_misnamed_records_are_each_named(folder):
    (folder / "none-seed1.json").unlink()
    (folder / "H4-seed0.json").write_text('{"status": "complete", "con')
    shutil.copy(folder / "none-seed0.json", folder / "H4-seed1.json")
    msg = _refusal(folder)
    assert "missing: none-seed1.json" in msg
    assert "H4-seed0.json (is not JSON (truncated or corrupt" in msg
    assert "H4-seed1.json (it is the record of none-seed0, not of its file name)" in msg


def test_a_record_of_the_old_format_is_read_when_it_matches_the_registry(folder):
    def to_format_1(rec):
        del rec["format"]
        rec["config"] = {"name": "H4", "arch": "preresnet", "block": "basic", "dropout_at": None,
                         "head_dropout_at": "H4", "head_conv": True, "baseline": "none", "p": None, "changes": {}}
    _edit(folder, "H4-seed1.json", to_format_1)
    recs = records.check_records("head", "smoke", 2, only=["H4"], dataset="synthetic", results_dir=folder.parents[2])
    assert [r.get("format", 1) for r in recs] == [2, 1]


def test_class_records_copied_into_a_paper_folder_beside_a_truncated_file_are_refused(tmp_path, monkeypatch):
    """What a partial or mis-copied GPU sweep looks like: the paper-scale report refuses it whole."""
    monkeypatch.setattr(records, "COMMITTED", tmp_path)
    paper = tmp_path / "residual" / "paper" / "fashion-mnist"
    paper.mkdir(parents=True)
    for name in ("none-seed0.json", "P6-seed0.json", "none-seed1.json", "P6-seed1.json"):
        shutil.copy(records.CHECKOUT / "lib/droplab/results/residual/class/fashion-mnist" / name, paper / name)
    (paper / "P0-seed0.json").write_text('{"status": "compl')
    with pytest.raises(records.RecordsError) as err:
        records.paper_scale_report("residual", "fashion-mnist")
    msg = str(err.value)
    assert "none-seed0.json (scale is 'class', but the file sits in the folder of 'paper')" in msg
    assert "P0-seed0.json (is not JSON" in msg


def test_a_file_of_an_unknown_config_is_refused_by_the_whole_folder_loader(folder):
    shutil.copy(folder / "H4-seed0.json", folder / "H9-seed0.json")
    with pytest.raises(records.RecordsError, match=r"H9 \(no such config in the registry\)"):
        records.load_whole("head", "smoke", "synthetic", folder.parents[2])


def test_a_missing_paper_scale_set_is_reported_with_the_command_that_makes_it(tmp_path, monkeypatch):
    monkeypatch.setattr(records, "COMMITTED", tmp_path)   # no committed paper-scale records
    text = records.paper_scale_report("head", "cifar10")
    assert text.startswith("no paper-scale records of head on cifar10 yet")
    assert "python -m droplab.sweep run head --scale paper --seeds 3 --dataset cifar10" in text


def test_an_installed_package_is_never_written_into(monkeypatch):
    monkeypatch.delenv("DROPLAB_RESULTS", raising=False)
    monkeypatch.setattr(records, "in_checkout", lambda: False)
    with pytest.raises(ValueError, match="--results FOLDER .* DROPLAB_RESULTS=FOLDER"):
        records.results_root()
    monkeypatch.setattr(records, "in_checkout", lambda: True)
    assert records.results_root() == records.COMMITTED
    assert records.results_root("elsewhere").name == "elsewhere"


def test_the_registry_seeds_of_tuning_and_pilot_runs_never_meet_the_test_seeds():
    """A network that chose a rate or a regime never also tests it."""
    test_seeds = set(experiments.get("placement").seeds(10))
    for name in ("control", "placement-p"):
        exp = experiments.get(name)
        assert not set(exp.seeds(50)) & test_seeds, name
    for name in ("control", "placement-p", "placement"):            # each seed draws its own images
        assert experiments.get(name).split_per_seed, name


def test_the_records_readme_lists_what_the_committed_folders_hold():
    text = (records.COMMITTED / "README.md").read_text()
    block = text.split("<!-- inventory -->\n", 1)[1].split("\n<!-- /inventory -->", 1)[0]
    assert block == records.inventory_table(), "run `python -m droplab.sweep inventory` and paste its table"
