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
