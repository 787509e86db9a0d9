"""Claims of chapter 3 (dropout in residual blocks) that live in the library:
droplab.variance.bn_input_ratios / shift_at_next_bn / NEXT_BN, the variance shift
each dropout position P0-P7 puts on the first batch normalization after it."""

from __future__ import annotations

import pytest
import torch

from droplab import variance as V

BATCH = 6_000


def test_next_bn_names_a_bn_for_every_position() -> None:
    assert set(V.NEXT_BN) == set(V.POSITIONS)
    assert {V.NEXT_BN[p] for p in ("P0", "P1")} == {"BN1"}
    assert {V.NEXT_BN[p] for p in ("P2", "P3", "P4")} == {"BN2"}
    assert {V.NEXT_BN[p] for p in ("P5", "P6", "P7")} == {"out"}


def test_block_outputs_are_those_of_stacked_blocks() -> None:
    ratios = V.bn_input_ratios(3, "P6", p=0.5, batch=BATCH, seed=4)
    assert ratios["out"] == V.stacked_blocks(3, "P6", p=0.5, batch=BATCH, seed=4, bn="train")
    assert set(ratios) == {"BN1", "BN2", "out"} and all(len(v) == 3 for v in ratios.values())


def test_the_bn_after_a_p6_dropout_follows_eq_31() -> None:
    measured = V.shift_at_next_bn(3, "P6", p=0.5, batch=BATCH)
    expected = [V.ratio_residual_depth(0.5, 1.0, d) for d in (1, 2, 3)]
    assert measured == pytest.approx(expected, rel=0.02)


@pytest.mark.parametrize("position", ["P2", "P3", "P4"])
def test_p2_to_p4_shift_bn2_by_the_nonresidual_ratio(position: str) -> None:
    measured = V.shift_at_next_bn(3, position, p=0.5, batch=BATCH)
    assert measured == pytest.approx([V.ratio_nonresidual(0.5)] * 3, abs=0.03)


def test_batch_statistics_hide_a_p2_dropout_from_the_block_output() -> None:
    ratios = V.bn_input_ratios(2, "P2", p=0.5, batch=BATCH)
    assert all(r > 0.97 for r in ratios["out"])
    assert all(r < 0.45 for r in ratios["BN2"])


def test_p6_shift_is_closer_to_one_than_p1_to_p4() -> None:
    p6 = V.shift_at_next_bn(4, "P6", p=0.5, batch=BATCH)
    for position in ("P1", "P2", "P4"):
        other = V.shift_at_next_bn(4, position, p=0.5, batch=BATCH)
        assert all(a > b for a, b in zip(p6, other)), (position, p6, other)


def test_p0_compounds_the_shift_at_bn1() -> None:
    p0 = V.shift_at_next_bn(4, "P0", p=0.5, batch=BATCH)
    assert p0[0] == pytest.approx(0.5, abs=0.02)  # dropout on a zero-mean input: Delta = q
    assert all(b < a for a, b in zip(p0, p0[1:]))
    assert p0[-1] < 0.2


def test_no_dropout_no_shift() -> None:
    ratios = V.bn_input_ratios(2, "P6", p=0.0, batch=2_000)
    assert all(r == pytest.approx(1.0, abs=1e-12) for v in ratios.values() for r in v)


def test_global_random_state_is_left_alone() -> None:
    torch.manual_seed(123)
    before = torch.random.get_rng_state()
    V.bn_input_ratios(2, "P1", batch=1_000)
    assert torch.equal(before, torch.random.get_rng_state())


def test_unknown_position_is_refused_with_the_valid_ones() -> None:
    with pytest.raises(ValueError, match="P0, P1"):
        V.bn_input_ratios(2, "P8", batch=100)
    with pytest.raises(ValueError, match="DROPPING"):
        V.shift_at_next_bn(2, "P6", p=1.0, batch=100)
