"""The CUDA fast path of droplab.train, on a real GPU (skipped without one).

``scripts/gpu_check.sh`` runs this file on the GPU machine (``pytest -m gpu``); on a
machine without CUDA every test is skipped, so CI stays green and says so. What is
checked, each on small synthetic data (:func:`droplab.data.synthetic`):

- ``fit`` trains in bf16 autocast (``History.precision``, ``model.fast_path`` and the
  dtype a conv actually produced) with fp32 weights;
- channels_last weights and inputs;
- fused SGD (the optimizer ``fit`` made, caught on its way in);
- ``deterministic=True`` repeats a run exactly on the GPU;
- ``Recipe(compile=True)`` trains through ``torch.compile`` and learns;
- a NaN loss (a huge learning rate) ends the run as ``diverged``;
- ``recalibrate_bn`` leaves the BN buffers on the GPU with new running statistics;
- a sweep's ``run_one`` on CUDA records the bf16 fast path and the GPU's name.
"""

from __future__ import annotations

import json
import math

import pytest
import torch
from torch import nn

from droplab import records, sweep, train

DEVICE = "cuda"

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (torch sees none here)"),
]


# A recipe that learns the synthetic set in a few seconds (measured on the CPU in fp32:
# test accuracy 0.82 without dropout, 0.59 with P6, after 6 epochs; chance is 0.1).
LEARNS = {"batch_size": 64, "lr": 0.2, "augment": False, "flip": False}


@pytest.fixture(scope="module")
def trained(synthetic, small_resnet):
    """One fit on CUDA with the default fast path, watched: the optimizers ``fit`` built and
    what a conv (one with several input channels, so that channels_last means something)
    saw and produced during training."""
    made: list[torch.optim.Optimizer] = []

    class WatchedSGD(torch.optim.SGD):
        def __init__(self, *a, **kw):
            super().__init__(*a, **kw)
            made.append(self)

    model = small_resnet(width=8, dropout_at="P6", p=0.2)
    seen: dict[str, object] = {}

    def hook(module, inputs, output):
        if module.training:
            seen.setdefault("out_dtype", output.dtype)
            seen.setdefault("in_channels_last", inputs[0].is_contiguous(memory_format=torch.channels_last))

    conv = next(m for m in model.modules() if isinstance(m, nn.Conv2d) and m.in_channels > 1)
    handle = conv.register_forward_hook(hook)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(torch.optim, "SGD", WatchedSGD)
        hist = train.fit(model, *synthetic, 6, device=DEVICE, progress=False, **LEARNS)
    handle.remove()
    return model, hist, made, seen


def test_fit_trains_in_bf16_autocast_on_cuda(trained):
    model, hist, _, seen = trained
    assert hist.precision == "bf16"
    assert model.fast_path.precision == "bf16" and model.fast_path.autocast_dtype == torch.bfloat16
    assert "cuda" in model.fast_path.reason
    assert seen["out_dtype"] == torch.bfloat16            # autocast was on inside the training step
    assert all(p.dtype == torch.float32 for p in model.parameters())   # weights stay fp32
    assert not hist.diverged and hist.final_test_acc > 0.3              # chance is 0.1


def test_fit_uses_channels_last_on_cuda(trained):
    model, hist, _, seen = trained
    assert hist.channels_last and model.fast_path.channels_last
    convs = [p for p in model.parameters() if p.dim() == 4]
    assert convs and all(p.is_cuda and p.is_contiguous(memory_format=torch.channels_last) for p in convs)
    assert seen["in_channels_last"] is True


def test_fit_uses_fused_sgd_on_cuda(trained):
    _, _, made, _ = trained
    assert len(made) == 1
    opt = made[0]
    assert opt.defaults.get("fused") is True
    assert all(g.get("fused") is True for g in opt.param_groups)
    assert all(g["nesterov"] and g["momentum"] == 0.9 for g in opt.param_groups)
    buffers = [s["momentum_buffer"] for s in opt.state.values() if s.get("momentum_buffer") is not None]
    assert buffers and all(b.is_cuda for b in buffers)    # the fused step ran


def test_deterministic_fits_repeat_exactly_on_cuda(synthetic, small_resnet):
    runs, weights = [], []
    for _ in range(2):
        model = small_resnet(width=8, dropout_at="P6", p=0.2)
        hist = train.fit(model, *synthetic, 2, seed=7, device=DEVICE, progress=False, deterministic=True,
                         **LEARNS)
        d = hist.to_dict()
        d.pop("seconds")
        runs.append(d)
        weights.append([p.detach().cpu().clone() for p in model.parameters()])
    assert torch.backends.cudnn.deterministic and not torch.backends.cudnn.benchmark
    assert runs[0] == runs[1]
    assert all(torch.equal(a, b) for a, b in zip(*weights))


def test_compile_on_request_trains_and_learns(synthetic, monkeypatch, small_resnet):
    compiled = []
    real_compile = torch.compile

    def spy(model, *a, **kw):
        compiled.append(model)
        return real_compile(model, *a, **kw)

    monkeypatch.setattr(torch, "compile", spy)
    model = small_resnet(width=8)
    recipe = train.Recipe(epochs=6, compile=True, **LEARNS)
    # no test split in fit: only the training graph is compiled (evaluation would compile
    # a second graph and double the test's time); the eager model is evaluated below
    hist = train.fit(model, synthetic[0], None, recipe, device=DEVICE, progress=False)
    assert compiled == [model] and model.fast_path.compile
    assert hist.epochs_run == 6 and not hist.diverged
    assert hist.train_loss[-1] < 0.8 * hist.train_loss[0]
    _, acc = train.evaluate(model, synthetic[1])
    assert acc > 0.4                                      # chance is 0.1


def test_a_nan_loss_ends_the_run_as_diverged_on_cuda(synthetic, small_resnet):
    hist = train.fit(small_resnet(width=8), *synthetic, 3, batch_size=64, lr=1e30, warmup_epochs=0,
                     device=DEVICE, progress=False)
    assert hist.diverged and hist.epochs_run < 3
    assert not math.isfinite(hist.train_loss[-1]) and math.isnan(hist.final_test_acc)
    json.dumps(hist.to_dict(), allow_nan=False)           # a record can still be written


def test_recalibrate_bn_on_cuda_changes_the_running_statistics(trained, synthetic):
    model = trained[0]
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    before = [(m.running_mean.clone(), m.running_var.clone()) for m in bns]
    momenta = [m.momentum for m in bns]
    train.recalibrate_bn(model, synthetic[0], batch_size=128)
    assert not model.training
    for m, momentum in zip(bns, momenta):
        assert m.running_mean.is_cuda and m.running_var.is_cuda and m.num_batches_tracked.is_cuda
        assert torch.isfinite(m.running_mean).all() and (m.running_var > 0).all()
        assert m.momentum == momentum                     # restored
    change = max(float((m.running_mean - b[0]).abs().max()) for m, b in zip(bns, before))
    assert change > 1e-4
    _, acc = train.evaluate(model, synthetic[1])
    assert acc > 0.2                                      # chance is 0.1


def test_a_sweep_run_on_cuda_records_the_gpu_fast_path(tmp_path):
    rec = sweep.run_one("residual", "P6", 0, scale="smoke", dataset="synthetic", results_dir=tmp_path,
                        device=DEVICE)
    assert rec["fast_path"]["precision"] == "bf16" and rec["fast_path"]["channels_last"]
    assert rec["provenance"]["device"].startswith("cuda")
    assert rec["provenance"]["device_name"] == torch.cuda.get_device_name()
    assert records.read_record(tmp_path / "residual" / "smoke" / "synthetic" / "P6-seed0.json", "residual", "smoke", "synthetic") is not None
