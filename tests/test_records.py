"""Checks on the committed run records themselves (they run in CI at every scale)."""

from __future__ import annotations

from droplab import metrics, records


def test_bf16_with_channels_last_learns_what_fp32_learns_on_the_committed_precision_records():
    """Issue 17: at class scale, paired by seed, bf16 autocast + channels_last against fp32
    contiguous for none, P0 and P6: every paired 95 % CI contains 0, and the bf16 runs were
    faster on the CPU that made them (one with native bf16)."""
    recs = records.check_records("precision", "class", 5)
    rows = {r.config: r for r in records.table(recs)}
    for pos in ("none", "P0", "P6"):
        row = rows[f"{pos}-bf16"]
        assert row.baseline == f"{pos}-fp32" and row.n_paired == 5
        assert metrics.resolved_sign(row.diff, row.diff_ci95) == 0, (pos, row)
        assert abs(row.diff) < 0.01, (pos, row)                      # under a point either way
    ran = {(r["config"]["name"], r["fast_path"]["precision"], r["fast_path"]["channels_last"]) for r in recs}
    assert ran == {(f"{p}-{x}", x, x == "bf16") for p in ("none", "P0", "P6") for x in ("fp32", "bf16")}
    secs = {x: sum(r["train_seconds"] for r in recs if r["fast_path"]["precision"] == x) for x in ("fp32", "bf16")}
    assert secs["bf16"] < secs["fp32"], secs


def test_the_evidence_records_compared_in_chapters_3_4_and_6_were_all_made_in_fp32():
    """A paired difference between a bf16 and an fp32 run would mix precision into position."""
    for exp, seeds in (("residual", 5), ("head", 5), ("residual-p", 2), ("head-p", 2), ("norm", 5), ("vit", 5),
                       ("early", 5)):
        recs = records.load_records(exp, "class", results_dir=records.REPO_RESULTS)
        assert len(recs) >= seeds, exp
        assert {r["fast_path"]["precision"] for r in recs} == {"fp32"}, exp


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


def test_a_missing_paper_scale_set_is_reported_with_the_command_that_makes_it(tmp_path, monkeypatch):
    monkeypatch.setattr(records, "REPO_RESULTS", tmp_path)  # an empty repository results folder
    text = records.paper_scale_report("head", "cifar10")
    assert text.startswith("no paper-scale records of head on cifar10 yet")
    assert "python -m droplab.sweep run head --scale paper --seeds 3 --dataset cifar10 --results data/results" in text
