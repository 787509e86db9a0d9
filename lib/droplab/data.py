"""Data sets as uint8 image tensors, found offline first, checked by sha256.

``load(name, split)`` returns a :class:`Split` ``(images, labels)`` with
``images`` a ``uint8`` tensor of shape (N, C, H, W) and ``labels`` ``int64``.

Where the files are looked for, in order:

1. the folder in ``DROPLAB_DATA``;
2. the repository's ``data/`` folder (for an installed package: ``~/.cache/droplab``);
3. system data-set folders (Debian's ``dataset-fashion-mnist`` installs
   ``/usr/share/datasets/fashion-mnist``);
4. a torchvision download into ``data/`` (checksummed, with a progress bar) when the
   files are nowhere else, unless the caller is offline: ``DROPLAB_OFFLINE=1`` (CI sets
   it) or ``download=False`` never download.

Every file is checked against its sha256 before it is parsed; a missing,
truncated or corrupt file stops with a message that names it and says how to
get a good copy. The ``synthetic`` set is generated, for unit tests only.

Then: subsets of a split (:func:`subset`, :func:`holdout`, :func:`class_split`),
the data of one run (:class:`DataSpec`, :func:`splits`, with symmetric label noise
by :func:`with_label_noise`) and the device-resident augmentation the fast training
path uses (:func:`random_crop_flip`).
"""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import pickle
import tarfile
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F


def _home() -> Path:
    """The book's ``data/`` folder where droplab runs from a checkout; for an installed package
    (a wheel, Colab) the user's cache folder, since a package's own folder is not for data."""
    checkout = Path(__file__).resolve().parents[2]
    if (checkout / "pyproject.toml").is_file() and (checkout / "lib" / "droplab").is_dir():
        return checkout / "data"
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "droplab"


REPO_DATA = _home()   # searched after DROPLAB_DATA, and where a download lands
SYSTEM_DIRS = (Path("/usr/share/datasets"), Path("/usr/local/share/datasets"))
SPLITS = ("train", "test")


class Split(NamedTuple):
    """One split of a data set: uint8 images (N, C, H, W) and int64 labels (N,)."""

    images: torch.Tensor
    labels: torch.Tensor


class DataNotFoundError(FileNotFoundError):
    """A data set's files are nowhere on the lookup path."""


class DataCorruptError(ValueError):
    """A data set's file is truncated or does not match its sha256."""


@dataclass(frozen=True)
class DatasetInfo:
    name: str
    num_classes: int
    shape: tuple[int, int, int]
    classes: tuple[str, ...]
    folders: tuple[str, ...]       # sub-folder names searched in every data root
    files: dict[str, str]          # file name -> sha256 (of the decompressed payload for .gz)
    how_to_get: str


FASHION_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                   "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")
CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer",
                   "dog", "frog", "horse", "ship", "truck")

def _cifar(n: int, classes: tuple[str, ...], sha256: str, megabytes: int) -> DatasetInfo:
    """CIFAR-10 or CIFAR-100: one python-pickle archive with its sha256."""
    archive = f"cifar-{n}-python.tar.gz"
    return DatasetInfo(
        f"cifar{n}", n, (3, 32, 32), classes,
        folders=(f"cifar{n}", f"cifar-{n}", ""),
        files={archive: sha256},
        how_to_get=(
            f"Put {archive} ({megabytes} MB, from the CIFAR home page) in data/cifar{n}/ or in the "
            f"folder named by DROPLAB_DATA, or let droplab download it (unset DROPLAB_OFFLINE)."
        ),
    )


DATASETS: dict[str, DatasetInfo] = {
    "fashion-mnist": DatasetInfo(
        "fashion-mnist", 10, (1, 28, 28), FASHION_CLASSES,
        folders=("fashion-mnist", "FashionMNIST/raw", "fashion_mnist"),
        # sha256 of the uncompressed idx payloads: the same for the upstream .gz,
        # Debian's recompressed .gz and torchvision's unpacked copies.
        files={
            "train-images-idx3-ubyte": "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888",
            "train-labels-idx1-ubyte": "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9",
            "t10k-images-idx3-ubyte": "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b",
            "t10k-labels-idx1-ubyte": "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34",
        },
        how_to_get=(
            "On Debian/Ubuntu: `sudo apt-get install dataset-fashion-mnist` (offline-friendly, "
            "installs /usr/share/datasets/fashion-mnist). Elsewhere: put the four *-ubyte.gz files "
            "of Fashion-MNIST in data/fashion-mnist/ or in the folder named by DROPLAB_DATA, or let "
            "droplab download them (unset DROPLAB_OFFLINE)."
        ),
    ),
    "cifar10": _cifar(10, CIFAR10_CLASSES, "6d958be074577803d12ecdefd02955f39262c83c16fe9348329d7fe0b5c001ce", 170),
    "cifar100": _cifar(100, tuple(f"class {i}" for i in range(100)),
                       "85cd44d02ba6437773c5bbd22e183051d648de2e7d6b014e1ef29b855ba677a7", 161),
    "synthetic": DatasetInfo(
        "synthetic", 10, (1, 28, 28), tuple(f"pattern {i}" for i in range(10)),
        folders=(), files={}, how_to_get="generated on the fly; nothing to get",
    ),
}


def info(name: str) -> DatasetInfo:
    """What droplab knows about a data set: classes, shape, files and where to get them."""
    if name not in DATASETS:
        raise ValueError(f"unknown data set {name!r}; valid names are {', '.join(DATASETS)}")
    return DATASETS[name]


def roots() -> list[Path]:
    """The data roots searched, in order (``DROPLAB_DATA``, repo ``data/``, system folders)."""
    out = []
    if os.environ.get("DROPLAB_DATA"):
        out.append(Path(os.environ["DROPLAB_DATA"]).expanduser())
    out.append(REPO_DATA)
    out.extend(SYSTEM_DIRS)
    return out


def _candidates(ds: DatasetInfo, file: str) -> list[Path]:
    paths = []
    for root in roots():
        for folder in ds.folders:
            base = root / folder if folder else root
            paths += [base / file, base / (file + ".gz")] if not file.endswith(".gz") else [base / file]
    return paths


def _find(ds: DatasetInfo, file: str) -> Path | None:
    return next((p for p in _candidates(ds, file) if p.is_file()), None)


def _read_checked(path: Path, sha256: str, ds: DatasetInfo) -> bytes:
    """The file's payload (decompressed if it is a .gz of an idx file), verified against ``sha256``."""
    try:
        raw = path.read_bytes()
        payload = gzip.decompress(raw) if path.suffix == ".gz" and not path.name.endswith(".tar.gz") else raw
    except (OSError, EOFError, gzip.BadGzipFile, ValueError) as exc:
        raise DataCorruptError(
            f"{path} could not be read ({exc.__class__.__name__}: {exc}); it is truncated or corrupt. "
            f"Delete it and get a fresh copy. {ds.how_to_get}"
        ) from exc
    got = hashlib.sha256(payload).hexdigest()
    if got != sha256:
        raise DataCorruptError(
            f"{path} does not match its sha256 checksum (expected {sha256}, got {got}); "
            f"the file is truncated, corrupt or a different version, and will not be read. "
            f"Delete it and get a fresh copy. {ds.how_to_get}"
        )
    return payload


def _parse_idx(payload: bytes) -> np.ndarray:
    ndim = payload[3]
    dims = np.frombuffer(payload, dtype=">i4", count=ndim, offset=4)
    return np.frombuffer(payload, dtype=np.uint8, offset=4 + 4 * ndim).reshape(tuple(int(d) for d in dims))


def _download(ds: DatasetInfo) -> None:
    import torchvision  # only needed for downloads

    target = REPO_DATA
    target.mkdir(parents=True, exist_ok=True)
    if ds.name == "fashion-mnist":
        for train in (True, False):
            torchvision.datasets.FashionMNIST(str(target), train=train, download=True)
    elif ds.name == "cifar10":
        torchvision.datasets.CIFAR10(str(target / "cifar10"), download=True)
    elif ds.name == "cifar100":
        torchvision.datasets.CIFAR100(str(target / "cifar100"), download=True)


def _locate(ds: DatasetInfo, download: bool) -> dict[str, Path]:
    found = {f: _find(ds, f) for f in ds.files}
    missing = [f for f, p in found.items() if p is None]
    if missing and download:
        try:
            _download(ds)
        except Exception as exc:  # network errors come in many types
            raise DataNotFoundError(
                f"{ds.name}: the files {', '.join(missing)} are not on this machine and the download "
                f"failed ({exc.__class__.__name__}: {exc}). {ds.how_to_get}"
            ) from exc
        found = {f: _find(ds, f) for f in ds.files}
        missing = [f for f, p in found.items() if p is None]
    if missing:
        searched = sorted({str(p.parent) for f in missing for p in _candidates(ds, f)})
        raise DataNotFoundError(
            f"{ds.name}: cannot find {', '.join(missing)} (plain or .gz) in any of: {', '.join(searched)}. "
            f"{ds.how_to_get}"
        )
    return found  # type: ignore[return-value]


def _fingerprint(found: dict[str, Path]) -> tuple:
    return tuple((f, str(p), p.stat().st_mtime_ns, p.stat().st_size) for f, p in sorted(found.items()))


@lru_cache(maxsize=8)
def _read_split(name: str, split: str, fingerprint: tuple) -> Split:
    """Parse ``split`` from the files in ``fingerprint`` (cached per file version)."""
    ds = info(name)
    found = {f: Path(p) for f, p, _, _ in fingerprint}
    if name == "fashion-mnist":
        prefix = "train" if split == "train" else "t10k"
        images = _parse_idx(_read_checked(found[f"{prefix}-images-idx3-ubyte"],
                                          ds.files[f"{prefix}-images-idx3-ubyte"], ds))
        labels = _parse_idx(_read_checked(found[f"{prefix}-labels-idx1-ubyte"],
                                          ds.files[f"{prefix}-labels-idx1-ubyte"], ds))
        return Split(torch.from_numpy(images.copy()).unsqueeze(1), torch.from_numpy(labels.astype(np.int64)))
    (file, sha), = ds.files.items()
    archive = _read_checked(found[file], sha, ds)  # verified before unpickling
    members = ["test"] if name == "cifar100" and split == "test" else (
        ["train"] if name == "cifar100" else
        ["test_batch"] if split == "test" else [f"data_batch_{i}" for i in range(1, 6)])
    key = "fine_labels" if name == "cifar100" else "labels"
    xs, ys = [], []
    with tarfile.open(fileobj=io.BytesIO(archive), mode="r:gz") as tar:
        for member in tar.getmembers():
            if Path(member.name).name in members:
                batch = pickle.load(tar.extractfile(member), encoding="latin1")
                xs.append(np.asarray(batch["data"], dtype=np.uint8).reshape(-1, 3, 32, 32))
                ys.append(np.asarray(batch[key], dtype=np.int64))
    return Split(torch.from_numpy(np.concatenate(xs)), torch.from_numpy(np.concatenate(ys)))


def offline() -> bool:
    """Whether downloads are off: ``DROPLAB_OFFLINE`` set to anything but 0/false/no."""
    return os.environ.get("DROPLAB_OFFLINE", "").strip().lower() not in ("", "0", "false", "no")


def load(name: str, split: str = "train", *, download: bool | None = None) -> Split:
    """Load ``split`` (``"train"`` or ``"test"``) of data set ``name``.

    Names: ``"fashion-mnist"``, ``"cifar10"``, ``"cifar100"``, ``"synthetic"``.
    Returns fresh tensors (safe to modify); files are read once per process.
    """
    info(name)
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r} for {name}; valid splits are {', '.join(SPLITS)}")
    if download is None:
        download = not offline()
    if name == "synthetic":
        return synthetic(split)
    cached = _read_split(name, split, _fingerprint(_locate(info(name), bool(download))))
    return Split(cached.images.clone(), cached.labels.clone())


def available(name: str) -> bool:
    """Whether ``name`` can be loaded offline, without a download (its files exist and check out)."""
    try:
        load(name, "test", download=False)
    except (DataNotFoundError, DataCorruptError):
        return False
    return True


def synthetic(split: str = "train", n: int | None = None, num_classes: int = 10, seed: int = 0) -> Split:
    """A small, generated, learnable image set for unit tests (1x28x28, 10 classes).

    Each class is a fixed random smooth pattern; samples add a random shift,
    contrast and pixel noise. Train and test are disjoint draws (different seeds).
    """
    n = n if n is not None else (2000 if split == "train" else 500)
    gen = torch.Generator().manual_seed(seed)
    protos = torch.rand(num_classes, 1, 7, 7, generator=gen)
    protos = F.interpolate(protos, size=(28, 28), mode="bilinear", align_corners=False)
    gen_split = torch.Generator().manual_seed(seed + (1 if split == "train" else 2))
    labels = torch.randint(0, num_classes, (n,), generator=gen_split)
    contrast = 0.6 + 0.8 * torch.rand(n, 1, 1, 1, generator=gen_split)
    x = protos[labels] * contrast + 0.25 * torch.randn(n, 1, 28, 28, generator=gen_split)
    shifts = torch.randint(-2, 3, (n, 2), generator=gen_split)
    x = torch.stack([torch.roll(img, shifts=(int(s[0]), int(s[1])), dims=(1, 2)) for img, s in zip(x, shifts)])
    images = (x.clamp(0, 1) * 255).round().to(torch.uint8)
    return Split(images, labels.long())


def subset(split: Split, n: int, seed: int = 0, balanced: bool = True) -> Split:
    """``n`` samples of ``split`` drawn without replacement, class-balanced by default."""
    if n >= len(split.labels):
        return split
    gen = torch.Generator().manual_seed(seed)
    if not balanced:
        idx = torch.randperm(len(split.labels), generator=gen)[:n]
    else:
        classes = split.labels.unique()
        per = [n // len(classes) + (1 if i < n % len(classes) else 0) for i in range(len(classes))]
        idx = torch.cat([
            torch.nonzero(split.labels == c).flatten()[torch.randperm(int((split.labels == c).sum()), generator=gen)[:k]]
            for c, k in zip(classes, per)
        ])
        idx = idx[torch.randperm(len(idx), generator=gen)]
    return Split(split.images[idx], split.labels[idx])


def holdout(split: Split, n_train: int | None, n_val: int, seed: int = 0) -> tuple[Split, Split]:
    """A training subset of ``n_train`` samples (None: all the rest) and a validation set of
    ``n_val`` samples, both drawn from ``split`` without overlap, class-balanced.

    The validation images are held out of the *training* images, so sizes and
    drop probabilities can be chosen on them without touching the test split
    (chapters 3-4). The same ``seed`` gives the same two sets; the training
    subset does not depend on ``n_val``'s images beyond excluding them.
    """
    n = len(split.labels)
    if n_val < 0 or (n_train is not None and n_train < 1):
        raise ValueError(f"need n_train >= 1 (or None) and n_val >= 0, got {n_train} and {n_val}")
    if n_val + (n_train or 1) > n:
        raise ValueError(f"cannot hold out {n_val} validation samples and train on {n_train}: "
                         f"the split has only {n} samples")
    gen = torch.Generator().manual_seed(seed)
    order = torch.randperm(n, generator=gen)
    labels = split.labels[order]
    classes = labels.unique()
    per = [n_val // len(classes) + (1 if i < n_val % len(classes) else 0) for i in range(len(classes))]
    val_mask = torch.zeros(n, dtype=torch.bool)
    for c, k in zip(classes, per):
        val_mask[torch.nonzero(labels == c).flatten()[:k]] = True
    val_idx, rest_idx = order[val_mask], order[~val_mask]
    rest = Split(split.images[rest_idx], split.labels[rest_idx])
    train = subset(rest, n_train, seed=seed) if n_train is not None else rest
    return train, Split(split.images[val_idx], split.labels[val_idx])


def with_label_noise(split: Split, rate: float, num_classes: int, seed: int = 0) -> Split:
    """``split`` with ``round(rate * N)`` labels, drawn at random, each replaced by a class drawn
    uniformly from the *other* classes (symmetric label noise; Arpit et al. 2017 measure how fast
    networks memorize such labels). The images are untouched; the same seed gives the same noise."""
    if not 0.0 <= rate < 1.0:
        raise ValueError(f"label noise is the share of training labels replaced, in [0, 1); got {rate!r}")
    n = len(split.labels)
    k = round(rate * n)
    if k == 0:
        return split
    gen = torch.Generator().manual_seed(seed)
    idx = torch.randperm(n, generator=gen)[:k]
    labels = split.labels.clone()
    shift = torch.randint(1, num_classes, (k,), generator=gen)        # never 0: always another class
    labels[idx] = (labels[idx] + shift) % num_classes
    return Split(split.images, labels)


@dataclass(frozen=True)
class DataSpec:
    """The data of one run: ``train_size`` training images (None: all that are left) and
    ``val_size`` validation images held out of the training split, ``test_size`` test images
    (None: the whole test split; 0: none, for runs that choose on validation only), drawn by
    ``split_seed``; ``label_noise`` of the training
    labels replaced by another class (:func:`with_label_noise`; validation and test labels stay
    clean). Part of a run's spec (:class:`droplab.experiments.RunSpec`)."""

    dataset: str = "fashion-mnist"
    train_size: int | None = None
    val_size: int = 0
    test_size: int | None = None
    split_seed: int = 0
    label_noise: float = 0.0


def splits(spec: DataSpec) -> tuple[Split, Split, Split]:
    """The training, validation and test images of a run: the validation images are held out
    of the training split (:func:`holdout`), the test images are a class-balanced subset of the
    test split (or all of it), and ``spec.label_noise`` of the training labels are replaced."""
    full = load(spec.dataset, "train")
    tr, va = holdout(full, spec.train_size, spec.val_size, seed=spec.split_seed)
    if spec.label_noise:
        tr = with_label_noise(tr, spec.label_noise, info(spec.dataset).num_classes, seed=spec.split_seed)
    te = load(spec.dataset, "test")
    if spec.test_size == 0:                            # runs that choose on validation never see the test split
        te = Split(te.images[:0], te.labels[:0])
    elif spec.test_size is not None:
        te = subset(te, spec.test_size, seed=spec.split_seed)
    return tr, va, te


def class_split(split: Split, classes: tuple[int, ...] | list[int] | range) -> Split:
    """The samples of ``split`` whose label is one of ``classes``, relabelled
    ``0 .. len(classes) - 1`` in the order given.

    ``class_split(train, (5, 6, 7, 8, 9))`` keeps Sandal, Shirt, Sneaker, Bag and
    Ankle boot of Fashion-MNIST as labels 0-4, so that a network pre-trained on
    classes 0-4 can be fine-tuned on the other five with a five-way classifier
    (chapter 5, claim 4). Order of the samples is kept; images are shared, not copied.
    """
    classes = [int(c) for c in classes]
    if not classes:
        raise ValueError("classes is empty; name at least one class label to keep")
    if len(set(classes)) != len(classes):
        raise ValueError(f"classes {classes} name a class twice; each class must appear once")
    labels = split.labels
    present = set(labels.unique().tolist())
    missing = [c for c in classes if c not in present]
    if missing:
        raise ValueError(f"classes {missing} have no sample in this split (its labels are "
                         f"{sorted(present)}); check the class numbers")
    lut = torch.full((int(labels.max()) + 1,), -1, dtype=torch.long)
    lut[torch.tensor(classes)] = torch.arange(len(classes))
    new = lut[labels]
    keep = new >= 0
    return Split(split.images[keep], new[keep])


# ----------------------------------------------------------------------------
# Device-resident augmentation (the fast path of droplab.train)
# ----------------------------------------------------------------------------

def random_crop_flip(x: torch.Tensor, pad: int = 2, flip: bool = True, mode: str = "reflect",
                     generator: torch.Generator | None = None) -> torch.Tensor:
    """Random crop (after padding by ``pad``) and horizontal flip, drawn per sample.

    One batched gather on the tensor's device: every image gets its own offset
    and its own coin flip. ``mode`` is ``"reflect"`` or ``"zeros"`` padding.
    """
    if mode not in ("reflect", "zeros"):
        raise ValueError(f"unknown padding mode {mode!r}; valid modes are reflect, zeros")
    n, c, h, w = x.shape
    dev = x.device
    if pad > 0:
        padded = F.pad(x, (pad, pad, pad, pad), mode="reflect" if mode == "reflect" else "constant")
        off = torch.randint(0, 2 * pad + 1, (2, n), device=dev, generator=generator)
        rows = (off[0].view(n, 1, 1) + torch.arange(h, device=dev).view(1, h, 1)).expand(n, h, w)
        cols = (off[1].view(n, 1, 1) + torch.arange(w, device=dev).view(1, 1, w)).expand(n, h, w)
        flat = (rows * (w + 2 * pad) + cols).view(n, 1, h * w).expand(n, c, h * w)
        x = padded.reshape(n, c, -1).gather(2, flat).view(n, c, h, w)
    if flip:
        coin = torch.rand(n, device=dev, generator=generator) < 0.5
        x = torch.where(coin.view(n, 1, 1, 1), x.flip(-1), x)
    return x
