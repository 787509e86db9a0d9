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
