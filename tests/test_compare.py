"""droplab.compare: paired comparisons, Holm's correction, verdicts as data, choices on validation."""

from __future__ import annotations

import math

import numpy as np
import pytest

from droplab import compare, experiments


def _rec(config: str, seed: int, acc: float | None, val: float | None = None, experiment: str = "head") -> dict:
    return {"experiment": experiment, "config": {"name": config}, "seed": seed, "final_test_acc": acc,
            "final_val_acc": val, "final_test_loss": None if acc is None else 1 - acc,
            "history": {"diverged": acc is None}}


def test_a_paired_interval_matches_students_t_on_known_numbers():
    c = compare.of_values([0.92, 0.95, 0.96], [0.90, 0.92, 0.94])
    diffs = [0.02, 0.03, 0.02]
    sd = math.sqrt(sum((d - sum(diffs) / 3) ** 2 for d in diffs) / 2)
    assert c.mean == pytest.approx(sum(diffs) / 3)
    assert c.half_width == pytest.approx(4.302653 * sd / math.sqrt(3), rel=1e-6)   # t_{0.975, 2}
    assert c.level == 0.95 and c.p == pytest.approx(0.0198, abs=1e-4)   # t = 7, df = 2
    assert c.verdict is compare.Verdict.SUPPORTS


def test_an_interval_that_contains_zero_is_unresolved_and_says_what_it_rules_out():
    c = compare.of_values([0.90, 0.93, 0.91], [0.91, 0.91, 0.91], claim="a beats b", sign=+1)
    assert c.low < 0 < c.high and c.verdict is compare.Verdict.UNRESOLVED
    assert c.rules_out == pytest.approx(c.high)
    assert compare.of_values([0.90, 0.93, 0.91], [0.91, 0.91, 0.91], sign=-1).rules_out == pytest.approx(-c.low)


def test_a_lower_loss_is_better():
    c = compare.of_values([0.30, 0.31, 0.29], [0.40, 0.42, 0.41], metric="final_test_loss", sign=+1)
    assert c.resolved == -1 and c.verdict is compare.Verdict.SUPPORTS


def test_one_seed_has_no_interval_and_no_verdict():
    c = compare.of_values([0.9], [0.8])
    assert math.isnan(c.low) and c.verdict is compare.Verdict.UNRESOLVED and "one seed" in c.text()


def test_holm_adjusts_the_smallest_p_by_m_and_keeps_the_order_monotone():
    assert compare.holm([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.06, 0.06])
    assert compare.holm([0.5, 0.001]) == pytest.approx([0.5, 0.002])


def test_a_holm_interval_excludes_zero_exactly_when_holm_rejects():
    """Three comparisons: strong, borderline, null. Holm's stepped intervals agree with its
    adjusted p-values, and are never narrower than the uncorrected 95 % ones."""
    raw = [compare.of_values([0.5 + 0.01 * i for i in range(10)], [0.45 + 0.011 * i for i in range(10)]),
           compare.of_values([0.5, 0.52, 0.49, 0.53, 0.51, 0.5, 0.52, 0.51, 0.5, 0.53],
                             [0.49, 0.5, 0.5, 0.51, 0.5, 0.49, 0.5, 0.5, 0.5, 0.51]),
           compare.of_values([0.5, 0.51, 0.49, 0.5, 0.52, 0.48, 0.5, 0.51, 0.49, 0.5], [0.5] * 10)]
    held = compare.correct(raw)
    for r, h in zip(raw, held):
        assert h.primary and h.correction == "Holm over 3" and h.half_width >= r.half_width
        assert (h.resolved != 0) == (h.p_adjusted <= 0.05), h
    assert held[0].level == pytest.approx(1 - 0.05 / 3) and held[0].half_width > raw[0].half_width
    assert held[2].verdict is compare.Verdict.UNRESOLVED


def test_primary_contrasts_come_from_the_registry_and_are_corrected_together():
    exp = experiments.Experiment(
        "t", "test", (experiments.Config("none"), experiments.Config("a"), experiments.Config("b")),
        {"smoke": experiments.SMOKE},
        primary=(experiments.Contrast("a", "none", "a beats none"), experiments.Contrast("b", "a", "b beats a")))
    recs = [_rec(c, s, v) for s in range(5) for c, v in (("none", 0.80 + 0.01 * s), ("a", 0.83 + 0.01 * s + 0.001 * s * s),
                                                          ("b", 0.83 + 0.012 * s))]
    got = compare.primary(recs, exp, planning_sd=0.01)
    assert [c.name for c in got] == ["a − none", "b − a"] and all(c.correction == "Holm over 2 primary contrasts"
                                                                  for c in got)
    assert got[0].verdict is compare.Verdict.SUPPORTS
    # a priori: from the planning SD, at the Bonferroni level of the first Holm step
    assert got[0].detectable == pytest.approx(compare.detectable_effect(0.01, 5, 1 - 0.05 / 2))
    with pytest.raises(ValueError, match="declares no primary contrasts"):
        compare.primary(recs, "head")


def test_the_detectable_effect_grows_with_the_sd_and_shrinks_with_the_seeds():
    assert compare.detectable_effect(0.01, 10) == pytest.approx((2.262157 + 0.883404) * 0.01 / math.sqrt(10),
                                                                rel=1e-5)
    assert compare.detectable_effect(0.01, 20) < compare.detectable_effect(0.01, 10)
    assert math.isnan(compare.detectable_effect(0.01, 1))


@pytest.mark.parametrize("n", [5, 10])
def test_an_effect_of_the_detectable_size_is_resolved_four_times_in_five(n):
    rng = np.random.default_rng(n)
    effect = compare.detectable_effect(1.0, n)
    resolved = [compare.of_values(row, np.zeros(n)).resolved == 1 for row in rng.normal(effect, 1.0, size=(4000, n))]
    assert np.mean(resolved) == pytest.approx(0.80, abs=0.03)


def test_diverged_runs_are_counted_not_averaged():
    (s,) = compare.summarize([_rec("P7", 0, None), _rec("P7", 1, 0.8)])
    assert (s.n, s.diverged, s.mean) == (1, 1, pytest.approx(0.8))


def test_each_config_is_compared_with_the_baseline_the_registry_gives_it():
    recs = [_rec(c, s, 0.8 + 0.01 * s + (0.01 if c == "H4" else 0)) for s in range(3) for c in ("none", "H4", "H5")]
    got = compare.against_baselines(recs)
    assert [(c.config, c.baseline, c.n) for c in got] == [("H4", "none", 3), ("H5", "none", 3)]
    assert got[0].mean == pytest.approx(0.01)


def test_a_config_without_finished_records_is_named():
    with pytest.raises(ValueError, match="no finished records of c"):
        compare.compare([_rec("a", 0, 0.8)], "a", "c")


def test_each_position_gets_the_p_with_the_best_validation_accuracy_never_the_test_one():
    def rec(name, pos, p, seed, val, test):
        return {"config": {"name": name}, "spec": {"net": {"dropout_at": pos, "head_dropout_at": None, "p": p}},
                "seed": seed, "final_val_acc": val, "final_test_acc": test}
    recs = [rec("P6-p0.05", "P6", 0.05, s, 0.80, 0.90) for s in (0, 1)]
    recs += [rec("P6-p0.1", "P6", 0.1, 0, 0.82, 0.70), rec("P6-p0.1", "P6", 0.1, 1, 0.80, 0.70)]
    recs += [rec("P0-p0.05", "P0", 0.05, 0, 0.7, 0.7), rec("P0-p0.2", "P0", 0.2, 0, 0.7, 0.9)]
    recs += [rec("P6-matched", "P6", 0.5, 0, 0.99, 0.99)]              # not a grid config: ignored
    assert compare.tuned_p(recs) == {"P6": 0.1, "P0": 0.05}          # P0: a tie goes to the smaller p
    assert compare.tuned_p(recs, "final_test_acc") == {"P6": 0.05, "P0": 0.2}


def test_best_on_validation_uses_the_validation_split_and_breaks_ties_by_order():
    recs = [{"config": {"name": n}, "final_val_acc": v, "final_test_acc": t}
            for n, v, t in (("a", 0.8, 0.9), ("b", 0.9, 0.1), ("c", 0.9, 0.2), ("a", 0.8, 0.9))]
    assert compare.best_on_validation(recs, ["a", "b", "c"]) == "b"
    assert compare.best_on_validation(recs, ["c", "b"]) == "c"
    assert compare.best_on_validation(recs, ["a"], metric="final_test_acc") == "a"
    with pytest.raises(ValueError, match="no final_val_acc in the records of d"):
        compare.best_on_validation(recs, ["a", "d"])


def test_a_joint_verdict_names_the_parts_that_disagree():
    yes = compare.of_values([0.9, 0.91, 0.92], [0.8, 0.8, 0.81])
    no = compare.of_values([0.8, 0.82, 0.81], [0.81, 0.81, 0.81])
    assert compare.joint({"MLP": yes, "CNN": yes}) == "supports"
    assert compare.joint({"MLP": yes, "CNN": no}) == "MLP: supports; CNN: unresolved"


def test_the_table_and_the_forest_plot_show_the_same_comparisons():
    from droplab import plots

    cs = compare.correct([compare.of_values([0.9, 0.91, 0.93], [0.8, 0.82, 0.81], config="P6", baseline="none"),
                          compare.of_values([0.8, 0.82, 0.81], [0.81, 0.81, 0.81], config="P0", baseline="none")])
    frame = compare.frame(cs, quoted={"P6 − none": "+0.3"})
    assert list(frame["comparison"]) == ["P6 − none", "P0 − none"] and list(frame["verdict"]) == [
        str(c.verdict) for c in cs]
    _, ax = plots.forest(cs, "P6 helps", quoted={"P6 − none": [0.3]})
    assert [t.get_text() for t in ax.get_yticklabels()] == ["P6 − none", "P0 − none"][::-1] or \
        [t.get_text() for t in ax.get_yticklabels()] == ["P6 − none", "P0 − none"]
    # Holm over 2: the first step at 97.5 %; the second, which fails, at its own step's 95 %
    assert ax.get_legend().get_title().get_text() == "interval: 95 %, 97.5 %"
    assert [c.level for c in cs] == pytest.approx([0.975, 0.95])
