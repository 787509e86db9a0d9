import torch

from droplab import repro


def test_device_falls_back_to_cpu_without_a_gpu(monkeypatch):
    monkeypatch.delenv("DROPLAB_DEVICE", raising=False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    assert repro.device().type == "cpu"


def test_device_prefers_cuda(monkeypatch):
    monkeypatch.delenv("DROPLAB_DEVICE", raising=False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert repro.device().type == "cuda"


def test_seed_everything_repeats_random_draws():
    repro.seed_everything(7)
    a = torch.rand(5), torch.randn(3)
    repro.seed_everything(7)
    b = torch.rand(5), torch.randn(3)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert torch.backends.cudnn.deterministic and not torch.backends.cudnn.benchmark


def test_provenance_names_commit_versions_device_and_date():
    record = repro.provenance(torch.device("cpu"))
    for key in ("git_commit", "torch", "cuda", "device", "device_name", "date"):
        assert key in record
    assert record["torch"] == torch.__version__ and record["device"] == "cpu"


def test_the_banner_names_the_scale_the_device_and_torch(monkeypatch):
    monkeypatch.setenv("DROPLAB_SCALE", "class")
    line = repro.banner(torch.device("cpu"))
    assert line == f"scale: class   device: {repro.device_name(torch.device('cpu'))}   torch {torch.__version__}"


def test_chapter_timings_reads_the_measured_table_and_its_machine(tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text("# Book\n\n<!-- chapter-timings -->\n| chapter | smoke | class |\n|---|---|---|\n"
                      "| `00_introduction` | 8 s | 7 s |\n| `02_bn_variance_shift` | 24 s | 2.4 min |\n"
                      "| `07_new` | 5 s | – |\n\nMeasured on: a 2-core CPU, 2026-12-02.\n<!-- /chapter-timings -->\n")
    timings = repro.chapter_timings(readme)
    assert timings.seconds == {"00_introduction": {"smoke": 8.0, "class": 7.0},
                               "02_bn_variance_shift": {"smoke": 24.0, "class": 144.0},
                               "07_new": {"smoke": 5.0, "class": None}}
    assert timings.measured_on == "a 2-core CPU, 2026-12-02"


def test_chapter_timings_of_the_repository_cover_every_numbered_chapter():
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    timings = repro.chapter_timings()
    assert set(timings.seconds) == {p.stem for p in (root / "chapters").glob("[0-9][0-9]_*.ipynb")}
    assert timings.measured_on


def test_chapter_timings_without_the_table_says_how_to_make_it(tmp_path):
    import pytest

    readme = tmp_path / "README.md"
    readme.write_text("# Book\n")
    with pytest.raises(ValueError, match="scripts/time_chapters.py"):
        repro.chapter_timings(readme)
