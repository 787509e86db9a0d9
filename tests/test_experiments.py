"""droplab.experiments: one run spec, configs as a name, a baseline and overrides, seeds that
draw their own images, and the contrasts an experiment declares before its runs."""

from __future__ import annotations

import pytest
import torch

from droplab import data, experiments
from droplab.experiments import Config, Contrast, PerScale, RunSpec


def test_a_spec_survives_its_json_form():
    s = experiments.spec("control", "noisy-P6-p0.3", "class", seed=203)
    assert RunSpec.from_dict(s.to_dict()) == s
    assert (s.net.dropout_at, s.net.p, s.data.label_noise, s.data.split_seed, s.recipe.epochs) == (
        "P6", 0.3, 0.3, 203, 60)


def test_a_spec_with_an_unknown_section_or_field_is_refused_by_name():
    d = experiments.spec("head", "none", "smoke").to_dict()
    with pytest.raises(ValueError, match=r"unknown spec section\(s\) \['optimizer'\]"):
        RunSpec.from_dict({**d, "optimizer": {}})
    with pytest.raises(ValueError, match=r"unknown recipe field\(s\) \['epoch'\]"):
        RunSpec.from_dict({**d, "recipe": {"epoch": 3}})


def test_a_config_overrides_its_section_only_and_names_a_wrong_field():
    exp = experiments.Experiment("t", "test", (Config("none"), Config("wide", net={"width": 32}),
                                               Config("bad", recipe={"width": 32})),
                                 {"smoke": experiments.SMOKE})
    assert experiments.spec(exp, "wide", "smoke").net.width == 32
    with pytest.raises(ValueError, match=r"unknown recipe field\(s\) \['width'\]"):
        experiments.spec(exp, "bad", "smoke")


def test_a_per_scale_override_takes_its_value_at_each_scale():
    assert [experiments.spec("residual", "bottleneck-P6", sc).net.depth for sc in ("smoke", "class", "paper")] == [
        11, 11, 20]
    assert PerScale(1, 2, 3).at("paper") == 3


def test_an_experiment_refuses_a_config_named_twice_and_an_undeclared_contrast():
    with pytest.raises(ValueError, match="names a config twice"):
        experiments.Experiment("t", "", (Config("a"), Config("a")), {})
    with pytest.raises(ValueError, match="has no config 'P9'"):
        experiments.Experiment("t", "", (Config("none"),), {}, primary=(Contrast("P9", "none", "claim"),))


def test_each_seed_draws_its_own_training_images_where_the_experiment_says_so():
    a, b = (experiments.spec("control", "long-none", "smoke", "synthetic", seed=s).data for s in (200, 201))
    assert (a.split_seed, b.split_seed) == (200, 201)
    tr_a, _, _ = data.splits(a)
    tr_b, _, _ = data.splits(b)
    assert not torch.equal(tr_a.images, tr_b.images)
    with pytest.raises(ValueError, match="needs the seed"):
        experiments.spec("control", "long-none", "smoke")
    assert experiments.spec("residual", "none", "class").data.split_seed == experiments.SPLIT_SEED


def test_runs_that_choose_on_validation_never_see_the_test_split():
    _, va, te = data.splits(experiments.spec("control", "long-none", "smoke", "synthetic", seed=200).data)
    assert len(te.labels) == 0 and len(va.labels) == 256


def test_label_noise_replaces_that_share_of_labels_each_with_another_class():
    clean = data.synthetic("train", n=1000)
    noisy = data.with_label_noise(clean, 0.3, 10, seed=1)
    changed = noisy.labels != clean.labels
    assert int(changed.sum()) == 300 and torch.equal(noisy.images, clean.images)
    assert torch.equal(data.with_label_noise(clean, 0.3, 10, seed=1).labels, noisy.labels)
    with pytest.raises(ValueError, match=r"in \[0, 1\)"):
        data.with_label_noise(clean, 1.0, 10)


def test_the_noisy_regime_keeps_its_validation_labels_clean():
    spec = experiments.spec("control", "noisy-none", "smoke", "synthetic", seed=200).data
    tr, va, _ = data.splits(spec)
    clean_tr, clean_va = data.holdout(data.load("synthetic", "train"), spec.train_size, spec.val_size,
                                      seed=spec.split_seed)
    assert torch.equal(va.labels, clean_va.labels)
    assert int((tr.labels != clean_tr.labels).sum()) == round(0.3 * spec.train_size)


def test_the_control_pilot_compares_each_regularizer_with_no_regularizer_in_its_regime():
    exp = experiments.get("control")
    for cfg in exp.configs:
        regime = cfg.name.split("-")[0]
        assert cfg.baseline == f"{regime}-none"
    assert exp.first_seed >= 100 and exp.split_per_seed
