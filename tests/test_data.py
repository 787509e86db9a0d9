import gzip
import os
import shutil

import pytest
import torch

from droplab import data

FASHION_FILES = list(data.DATASETS["fashion-mnist"].files)
# where the real files are, found before any test narrows the lookup path
FASHION_SOURCES = [data._find(data.DATASETS["fashion-mnist"], name) for name in FASHION_FILES]


def fashion_available() -> bool:
    return data.available("fashion-mnist")


needs_fashion = pytest.mark.skipif(
    not fashion_available() and not os.environ.get("CI"),
    reason="Fashion-MNIST is not installed (apt-get install dataset-fashion-mnist); CI always installs it",
)


@pytest.fixture
def only_folder(tmp_path, monkeypatch):
    """Make tmp_path the only place droplab looks for data."""
    monkeypatch.setenv("DROPLAB_DATA", str(tmp_path))
    monkeypatch.setattr(data, "REPO_DATA", tmp_path / "repo-data")
    monkeypatch.setattr(data, "SYSTEM_DIRS", ())
    monkeypatch.setenv("DROPLAB_OFFLINE", "1")
    return tmp_path


def copy_fashion_to(folder):
    target = folder / "fashion-mnist"
    target.mkdir(parents=True)
    for src in FASHION_SOURCES:
        shutil.copy(src, target / src.name)
    return target


@needs_fashion
def test_fashion_mnist_is_uint8_nchw_with_int64_labels():
    train, test = data.load("fashion-mnist", "train"), data.load("fashion-mnist", "test")
    assert train.images.shape == (60000, 1, 28, 28) and test.images.shape == (10000, 1, 28, 28)
    assert train.images.dtype == torch.uint8 and train.labels.dtype == torch.int64
    assert sorted(train.labels.unique().tolist()) == list(range(10))
    assert torch.equal(train.labels.bincount(), torch.full((10,), 6000))


@needs_fashion
def test_load_returns_fresh_tensors():
    a = data.load("fashion-mnist", "test")
    a.images.zero_()
    assert data.load("fashion-mnist", "test").images.float().mean() > 50


def test_unknown_data_set_name_lists_the_valid_ones():
    with pytest.raises(ValueError) as err:
        data.load("mnist-fashion", "train")
    assert "'mnist-fashion'" in str(err.value)
    assert all(name in str(err.value) for name in data.DATASETS)


def test_unknown_split_is_an_error():
    with pytest.raises(ValueError, match="valid splits are train, test"):
        data.load("synthetic", "validation")


def test_missing_data_offline_names_the_files_and_how_to_get_them(only_folder):
    with pytest.raises(data.DataNotFoundError) as err:
        data.load("fashion-mnist", "train")
    message = str(err.value)
    assert "train-images-idx3-ubyte" in message and str(only_folder) in message
    assert "apt-get install dataset-fashion-mnist" in message and "DROPLAB_OFFLINE" in message


def test_missing_cifar_says_where_to_put_the_archive(only_folder):
    with pytest.raises(data.DataNotFoundError, match="cifar-10-python.tar.gz"):
        data.load("cifar10", "test")


@needs_fashion
def test_data_is_found_in_the_droplab_data_folder(only_folder):
    copy_fashion_to(only_folder)
    assert data.load("fashion-mnist", "test").images.shape == (10000, 1, 28, 28)


@needs_fashion
def test_truncated_file_is_refused_with_its_name(only_folder):
    folder = copy_fashion_to(only_folder)
    victim = folder / "t10k-labels-idx1-ubyte.gz"
    victim.write_bytes(victim.read_bytes()[:-100])
    with pytest.raises(data.DataCorruptError) as err:
        data.load("fashion-mnist", "test")
    assert str(victim) in str(err.value) and "fresh copy" in str(err.value)


@needs_fashion
def test_corrupt_file_is_never_read_as_garbage(only_folder):
    folder = copy_fashion_to(only_folder)
    victim = folder / "t10k-images-idx3-ubyte.gz"
    payload = bytearray(gzip.decompress(victim.read_bytes()))
    payload[5000] ^= 0xFF  # one flipped pixel still parses, but must not pass the checksum
    victim.write_bytes(gzip.compress(bytes(payload)))
    with pytest.raises(data.DataCorruptError, match="sha256") as err:
        data.load("fashion-mnist", "test")
    assert str(victim) in str(err.value)


def test_synthetic_is_balanced_enough_and_repeatable():
    a, b = data.load("synthetic", "train"), data.load("synthetic", "train")
    assert torch.equal(a.images, b.images) and a.images.dtype == torch.uint8
    assert a.images.shape[1:] == (1, 28, 28) and a.labels.bincount().min() > 100


def test_subset_is_class_balanced():
    part = data.subset(data.load("synthetic", "train"), 100, seed=1)
    assert len(part.labels) == 100 and torch.equal(part.labels.bincount(), torch.full((10,), 10))


def test_random_crop_flip_draws_per_sample():
    x = torch.arange(28 * 28, dtype=torch.float32).view(1, 1, 28, 28).repeat(64, 1, 1, 1)
    out = data.random_crop_flip(x, pad=2, flip=True, generator=torch.Generator().manual_seed(0))
    assert out.shape == x.shape
    distinct = {tuple(img.flatten()[:3].tolist()) for img in out}
    assert len(distinct) > 5, "every image should get its own crop and flip"


def test_random_crop_without_padding_or_flip_is_identity():
    x = torch.rand(4, 3, 32, 32)
    assert torch.equal(data.random_crop_flip(x, pad=0, flip=False), x)


# --- class_split: some classes, relabelled (chapter 5) -------------------------------------

def test_class_split_keeps_the_named_classes_and_relabels_them_in_order() -> None:
    split = data.synthetic("train", n=500)
    out = data.class_split(split, (7, 2, 5))
    expected = torch.isin(split.labels, torch.tensor([7, 2, 5]))
    assert len(out.labels) == int(expected.sum())
    assert set(out.labels.tolist()) == {0, 1, 2}
    assert torch.equal(out.images, split.images[expected])
    back = torch.tensor([7, 2, 5])[out.labels]
    assert torch.equal(back, split.labels[expected])


def test_class_split_says_which_class_is_missing() -> None:
    split = data.class_split(data.synthetic("train", n=300), (0, 1))
    with pytest.raises(ValueError, match=r"\[4\]"):
        data.class_split(split, (0, 4))
    with pytest.raises(ValueError, match="twice"):
        data.class_split(split, (0, 0))


@pytest.mark.parametrize("value, offline", [(None, False), ("", False), ("0", False), ("no", False), ("1", True),
                                            ("true", True)])
def test_data_is_downloaded_when_missing_unless_offline(monkeypatch, value, offline):
    if value is None:
        monkeypatch.delenv("DROPLAB_OFFLINE", raising=False)
    else:
        monkeypatch.setenv("DROPLAB_OFFLINE", value)
    assert data.offline() is offline


def test_missing_data_is_downloaded_by_default(only_folder, monkeypatch):
    monkeypatch.delenv("DROPLAB_OFFLINE")
    asked = []
    monkeypatch.setattr(data, "_download", lambda ds: asked.append(ds.name))
    with pytest.raises(data.DataNotFoundError):     # the stand-in download fetched nothing
        data.load("fashion-mnist", "train")
    assert asked == ["fashion-mnist"]


def test_an_installed_package_keeps_downloads_in_the_users_cache(monkeypatch, tmp_path):
    """A wheel's folder is site-packages: data sets go to ~/.cache/droplab there, not beside it."""
    fake = tmp_path / "site-packages" / "droplab" / "data.py"
    fake.parent.mkdir(parents=True)
    monkeypatch.setattr(data, "__file__", str(fake))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    assert data._home() == tmp_path / "cache" / "droplab"
