"""droplab.inconsistency: the paper's module tests measure what Kim et al.'s Propositions 2-5 predict
(chapters 2-4), and the shift each dropout position P0-P7 of a residual block puts on the first
BN after it (chapter 3).

Tolerances were measured (see the module tests' docstrings): at batch 2e4 and
width 128, block_ratio lands within 0.5% of the formulas over seeds; the tests
allow 2%.
"""

from __future__ import annotations

import itertools

import pytest
import torch

from droplab import inconsistency, models
from droplab import variance as V

BATCH = 20_000
BLOCK_BATCH = 6_000  # batch of the tests of the shift at the next BN of a residual block


# --- Propositions 2 and 3: one block ---------------------------------------------------------

@pytest.mark.parametrize("q", [0.5, 0.9])
def test_prop3_nonresidual_block_matches_the_formula(q: float) -> None:
    measured = inconsistency.block_ratio(1.0, 1 - q, batch=BATCH, residual=False)
    assert measured == pytest.approx(V.ratio_nonresidual(1 - q), rel=0.02)


@pytest.mark.parametrize("q", [0.5, 0.9])
@pytest.mark.parametrize("var_x0", [0.5, 2.0])
def test_prop3_residual_block_matches_the_formula(q: float, var_x0: float) -> None:
    measured = inconsistency.block_ratio(var_x0, 1 - q, batch=BATCH, residual=True)
    assert measured == pytest.approx(V.ratio_residual(1 - q, var_x0), rel=0.02)


def test_prop3_residual_block_is_between_nonresidual_and_one() -> None:
    p = 0.5
    nonres = inconsistency.block_ratio(1.0, p, batch=BATCH, residual=False)
    res = inconsistency.block_ratio(1.0, p, batch=BATCH, residual=True)
    assert nonres < res < 1


def test_prop3_gamma_enters_as_in_the_formula() -> None:
    measured = inconsistency.block_ratio(1.0, 0.5, batch=BATCH, gamma=2.0)
    assert measured == pytest.approx(V.ratio_residual(0.5, 1.0, gamma=2.0), rel=0.02)
    assert V.ratio_residual(0.5, 1.0, gamma=2.0) < V.ratio_residual(0.5, 1.0, gamma=1.0)


@pytest.mark.parametrize("mean_w", [-0.05, 0.05])
def test_prop2_post_dropout_is_less_consistent_than_pre_dropout(mean_w: float) -> None:
    post = inconsistency.pre_post_dropout_ratio(128, mean_w, p=0.5, batch=8_000, position="post")
    pre = inconsistency.pre_post_dropout_ratio(128, mean_w, p=0.5, batch=8_000, position="pre")
    assert post < pre < 1


def test_prop2_pre_and_post_agree_for_zero_mean_weights() -> None:
    post = inconsistency.pre_post_dropout_ratio(128, 0.0, p=0.5, batch=8_000, position="post")
    pre = inconsistency.pre_post_dropout_ratio(128, 0.0, p=0.5, batch=8_000, position="pre")
    assert post == pytest.approx(pre, rel=0.05)
    assert pre == pytest.approx(V.ratio_nonresidual(0.5), rel=0.05)


@pytest.mark.parametrize("bad", [-0.5, 1.0, 2.0])
def test_a_module_test_rejects_a_bad_p_with_the_valid_range(bad: float) -> None:
    with pytest.raises(ValueError, match=r"\[0, 1\)"):
        inconsistency.block_ratio(1.0, bad, batch=16)


# --- Proposition 4: stacked blocks, and the shift at the next BN ----------------------------

def test_stacked_p6_blocks_follow_eqs_26_27() -> None:
    deltas = inconsistency.stacked_ratios(3, "P6", p=0.5, batch=10_000)["out"]
    expected = [V.ratio_residual_depth(0.5, 1.0, d) for d in (1, 2, 3)]
    assert deltas == pytest.approx(expected, rel=0.03)
    assert all(d > V.ratio_nonresidual(0.5) for d in deltas)


def test_p0_compounds_the_inconsistency_with_depth() -> None:
    deltas = inconsistency.stacked_ratios(3, "P0", p=0.5, batch=10_000)["out"]
    assert deltas[0] > deltas[1] > deltas[2]
    assert deltas[2] < inconsistency.stacked_ratios(3, "P6", p=0.5, batch=10_000)["out"][2]


def test_unknown_position_is_rejected() -> None:
    with pytest.raises(ValueError, match="P0, P1"):
        inconsistency.stacked_ratios(1, "P9", batch=16)


def test_next_bn_names_a_bn_for_every_position() -> None:
    assert set(inconsistency.NEXT_BN) == set(models.POSITION_NAMES) | {models.DROP_PATH}
    assert {inconsistency.NEXT_BN[p] for p in ("P0", "P1")} == {"BN1"}
    assert {inconsistency.NEXT_BN[p] for p in ("P2", "P3", "P4")} == {"BN2"}
    assert {inconsistency.NEXT_BN[p] for p in ("P5", "P6", "P7", "P7path")} == {"out"}


def test_chapter_3s_stacked_blocks_are_the_block_outputs() -> None:
    ratios = inconsistency.stacked_ratios(3, "P6", p=0.5, batch=BLOCK_BATCH, seed=4)
    assert set(ratios) == {"BN1", "BN2", "out"} and all(len(v) == 3 for v in ratios.values())


def test_the_bn_after_a_p6_dropout_follows_eq_31() -> None:
    measured = inconsistency.shift_at_next_bn(3, "P6", p=0.5, batch=BLOCK_BATCH)
    expected = [V.ratio_residual_depth(0.5, 1.0, d) for d in (1, 2, 3)]
    assert measured == pytest.approx(expected, rel=0.02)


@pytest.mark.parametrize("position", ["P2", "P3", "P4"])
def test_p2_to_p4_shift_bn2_by_the_nonresidual_ratio(position: str) -> None:
    measured = inconsistency.shift_at_next_bn(3, position, p=0.5, batch=BLOCK_BATCH)
    assert measured == pytest.approx([V.ratio_nonresidual(0.5)] * 3, abs=0.03)


def test_batch_statistics_hide_a_p2_dropout_from_the_block_output() -> None:
    ratios = inconsistency.stacked_ratios(2, "P2", p=0.5, batch=BLOCK_BATCH)
    assert all(r > 0.97 for r in ratios["out"])
    assert all(r < 0.45 for r in ratios["BN2"])


def test_p6_shift_is_closer_to_one_than_p1_to_p4() -> None:
    p6 = inconsistency.shift_at_next_bn(4, "P6", p=0.5, batch=BLOCK_BATCH)
    for position in ("P1", "P2", "P4"):
        other = inconsistency.shift_at_next_bn(4, position, p=0.5, batch=BLOCK_BATCH)
        assert all(a > b for a, b in zip(p6, other)), (position, p6, other)


def test_p0_compounds_the_shift_at_bn1() -> None:
    p0 = inconsistency.shift_at_next_bn(4, "P0", p=0.5, batch=BLOCK_BATCH)
    assert p0[0] == pytest.approx(0.5, abs=0.02)  # dropout on a zero-mean input: Delta = q
    assert all(b < a for a, b in itertools.pairwise(p0))
    assert p0[-1] < 0.2


def test_without_dropout_no_bn_input_is_shifted() -> None:
    ratios = inconsistency.stacked_ratios(2, "P6", p=0.0, batch=2_000)
    assert all(r == pytest.approx(1.0, abs=1e-12) for v in ratios.values() for r in v)


def test_stacked_ratios_leave_the_global_random_state_alone() -> None:
    torch.manual_seed(123)
    before = torch.random.get_rng_state()
    inconsistency.stacked_ratios(2, "P1", batch=1_000)
    assert torch.equal(before, torch.random.get_rng_state())


def test_stacked_ratios_refuse_an_unknown_position_or_p() -> None:
    with pytest.raises(ValueError, match="P0, P1"):
        inconsistency.stacked_ratios(2, "P8", batch=100)
    with pytest.raises(ValueError, match="probability of dropping"):
        inconsistency.shift_at_next_bn(2, "P6", p=1.0, batch=100)


# --- Proposition 5: the head ------------------------------------------------------------------

@pytest.mark.parametrize("S,mu,sigma2,p", [(16, 1.0, 1.0, 0.5), (49, 0.5, 2.0, 0.2)])
def test_gap_formulas_match_measurement(S: int, mu: float, sigma2: float, p: float) -> None:
    r = inconsistency.head_variances_iid(S, mu, sigma2, p, n=40_000)
    assert r["H4"] == pytest.approx(r["H4_formula"], rel=0.04)
    assert r["H5"] == pytest.approx(r["H5_formula"], rel=0.04)
    assert r["no_dropout"] == pytest.approx(sigma2 / S, rel=0.04)
    assert r["H4"] < r["H5"]  # Proposition 5


def test_dropout_before_gap_varies_less_on_a_correlated_feature_map() -> None:
    g = torch.Generator().manual_seed(0)
    common = torch.randn(32, 16, 1, 1, generator=g)
    feats = torch.relu(common + 0.5 * torch.randn(32, 16, 6, 6, generator=g) + 0.3)
    r = inconsistency.head_variances_on(feats, 0.5, samples=64)
    assert r["H4_total"] < r["H5_total"]
    assert r["H4_noise"] == pytest.approx(r["H4_noise_formula"], rel=0.1)
    assert r["H5_noise"] == pytest.approx(r["H5_noise_formula"], rel=0.1)
