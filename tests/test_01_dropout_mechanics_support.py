"""The helpers chapter 1 added to droplab.dropout, tested on the claims they support."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from droplab import dropout as D


def gen(seed: int = 0) -> torch.Generator:
    g = torch.Generator()
    g.manual_seed(seed)
    return g


def small_mlp(batch_norm: bool = False) -> nn.Sequential:
    torch.manual_seed(0)
    layers: list[nn.Module] = [nn.Linear(8, 16)]
    layers += [nn.BatchNorm1d(16)] if batch_norm else []
    layers += [nn.ReLU(), nn.Dropout(0.5), nn.Linear(16, 3)]
    return nn.Sequential(*layers)


def test_replace_dropout_swaps_every_nn_dropout_and_keeps_p() -> None:
    model = nn.Sequential(nn.Linear(4, 4), nn.Dropout(0.3), nn.Sequential(nn.ReLU(), nn.Dropout(0.6)), nn.Dropout2d(0.2))
    assert D.replace_dropout(model, "none") == 2
    ours = [m for m in model.modules() if isinstance(m, D.Dropout)]
    assert [m.p for m in ours] == [0.3, 0.6]
    assert all(m.scaling == "none" for m in ours)
    assert isinstance(model[3], nn.Dropout2d), "spatial dropout is left alone"


def test_replace_dropout_keeps_the_mode() -> None:
    model = small_mlp().eval()
    D.replace_dropout(model, "classic")
    assert not model[2].training


def test_replace_dropout_rejects_an_unknown_scaling() -> None:
    with pytest.raises(ValueError, match="scaling"):
        D.replace_dropout(small_mlp(), "weights")


def test_set_scaling_repairs_the_forgotten_scaling() -> None:
    model = small_mlp()
    D.replace_dropout(model, "none")
    x = torch.rand(64, 8)
    model.eval()
    buggy = model[:3](x)
    assert D.set_scaling(model, "classic") == 1
    assert torch.allclose(model[:3](x), buggy * 0.5), "classic multiplies by q = 0.5 at test time"


def test_mc_outputs_average_to_the_weight_scaled_logits_for_a_last_layer_dropout() -> None:
    """With dropout only before the last linear layer, E[logits] equals the eval-mode logits exactly."""
    model = small_mlp().eval()
    x = torch.rand(32, 8)
    logits = D.mc_outputs(model, x, T=4000, seed=0)
    assert logits.shape == (4000, 32, 3)
    with torch.no_grad():
        ws = model(x)
    se = logits.std(0) / 4000**0.5
    assert ((logits.mean(0) - ws).abs() < 5 * se + 1e-6).all()
    assert not model.training and not model[3].training, "modes are restored"


def test_mc_outputs_repeat_with_a_seed_and_leave_the_global_stream_alone() -> None:
    model = small_mlp()
    x = torch.rand(5, 8)
    torch.manual_seed(123)
    expected_next = torch.rand(1)
    torch.manual_seed(123)
    a = D.mc_outputs(model, x, T=3, seed=7)
    assert torch.equal(torch.rand(1), expected_next), "the global stream is where it was"
    b = D.mc_outputs(model, x, T=3, seed=7)
    assert torch.equal(a, b)
    assert not torch.equal(a[0], a[1]), "every pass draws new masks"


def test_mc_predict_train_mode_depends_on_the_batch_and_restores_the_model() -> None:
    model = small_mlp(batch_norm=True)
    model.train()
    with torch.no_grad():
        for _ in range(20):
            model(torch.randn(256, 8) + 1.0)
    model.eval()
    saved = {k: v.clone() for k, v in model.state_dict().items()}
    x = torch.randn(64, 8) + 1.0
    whole = D.mc_predict_train_mode(model, x, T=2, seed=0)
    pairs = D.mc_predict_train_mode(model, x, T=2, batch_size=2, seed=0)
    assert whole.shape == pairs.shape == (2, 64, 3)
    assert not torch.allclose(whole, pairs, atol=1e-3), "BN uses each chunk's statistics"
    for k, v in model.state_dict().items():
        assert torch.equal(v, saved[k]), f"{k} was not restored"
    assert not model.training


def test_neighbour_recovery_spatial_dropout_recovers_nothing() -> None:
    x = torch.rand(20, 4, 12, 12, generator=gen(1))
    out = D.neighbour_recovery(x, 0.4, spatial=True, generator=gen(2))
    assert out["recovered"] == pytest.approx(0.0, abs=1e-12)
    assert out["unrecoverable"] == pytest.approx(out["dropped"])


def test_neighbour_recovery_on_smooth_maps_recovers_most_of_the_dropped_variance() -> None:
    base = torch.rand(50, 3, 4, 4, generator=gen(3))
    smooth = torch.nn.functional.interpolate(base, size=(16, 16), mode="bilinear", align_corners=False)
    out = D.neighbour_recovery(smooth, 0.3, generator=gen(4))
    assert out["dropped"] == pytest.approx(0.3, abs=0.03)
    assert out["recovered"] > 0.8
    assert out["unrecoverable"] < 0.1


def test_neighbour_recovery_on_white_noise_recovers_almost_nothing() -> None:
    noise = torch.randn(50, 3, 16, 16, generator=gen(5))
    out = D.neighbour_recovery(noise, 0.3, generator=gen(6))
    assert abs(out["recovered"]) < 0.02
    assert out["unrecoverable"] == pytest.approx(out["dropped"], rel=0.03)


def test_neighbour_recovery_checks_its_input() -> None:
    with pytest.raises(ValueError, match="N, C, H, W"):
        D.neighbour_recovery(torch.rand(10, 4), 0.5)
    with pytest.raises(ValueError, match="DROPPING"):
        D.neighbour_recovery(torch.rand(2, 2, 4, 4), 1.0)
