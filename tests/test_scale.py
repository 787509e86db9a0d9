import warnings

import pytest

from droplab import scale


def test_scale_is_smoke_under_pytest(monkeypatch):
    monkeypatch.delenv("DROPLAB_SCALE", raising=False)
    assert scale.current() == "smoke"


def test_scale_is_class_outside_tests(monkeypatch):
    monkeypatch.delenv("DROPLAB_SCALE", raising=False)
    monkeypatch.delenv("CI", raising=False)
    monkeypatch.setattr(scale, "_under_test", lambda: False)
    assert scale.current() == "class"


def test_scale_is_smoke_when_ci_is_set(monkeypatch):
    monkeypatch.delenv("DROPLAB_SCALE", raising=False)
    monkeypatch.setenv("CI", "true")
    assert scale._under_test() and scale.current() == "smoke"


@pytest.mark.parametrize("name", scale.SCALES)
def test_scale_variable_chooses_the_scale(monkeypatch, name):
    monkeypatch.setenv("DROPLAB_SCALE", name)
    monkeypatch.setattr(scale, "_warned_slow", True)  # the paper-scale warning is tested below
    assert scale.current() == name


def test_unknown_scale_is_an_error_that_lists_the_valid_ones(monkeypatch):
    monkeypatch.setenv("DROPLAB_SCALE", "huge")
    with pytest.raises(ValueError) as err:
        scale.current()
    message = str(err.value)
    assert "'huge'" in message and all(name in message for name in scale.SCALES)


def test_pick_returns_the_value_for_the_scale(monkeypatch):
    monkeypatch.setenv("DROPLAB_SCALE", "class")
    assert scale.pick(smoke=1, class_=2, paper=3) == 2
    assert scale.pick(smoke=1, class_=2, paper=3, scale="paper") == 3
    with pytest.raises(ValueError):
        scale.pick(smoke=1, class_=2, paper=3, scale="tiny")


@pytest.fixture
def paper_scale_not_warned_yet(monkeypatch):
    monkeypatch.setenv("DROPLAB_SCALE", "paper")
    monkeypatch.setattr(scale, "_warned_slow", False)


def test_paper_scale_without_a_gpu_warns_once_with_the_time(monkeypatch, paper_scale_not_warned_yet):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.warns(scale.SlowScaleWarning, match=r"about \d+\.\d hours on a 2-core CPU"):
        current = scale.current()
    assert current == "paper"
    with warnings.catch_warnings():
        warnings.simplefilter("error", scale.SlowScaleWarning)      # a second warning would raise
        assert scale.pick(smoke=1, class_=2, paper=3) == 3


def test_paper_scale_on_a_gpu_does_not_warn(monkeypatch, paper_scale_not_warned_yet):
    import warnings

    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    with warnings.catch_warnings():
        warnings.simplefilter("error", scale.SlowScaleWarning)
        assert scale.current() == "paper"


def test_class_scale_without_a_gpu_does_not_warn(monkeypatch):
    import warnings

    import torch

    monkeypatch.setenv("DROPLAB_SCALE", "class")
    monkeypatch.setattr(scale, "_warned_slow", False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with warnings.catch_warnings():
        warnings.simplefilter("error", scale.SlowScaleWarning)
        assert scale.current() == "class"
