"""Training throughput of droplab's fast path against a plain PyTorch loop.

    python -m droplab.bench                          # sizes for the machine at hand
    python -m droplab.bench --model preresnet56 --input 32 --images 50000 --json bench.json

Both paths train the same network from the same weights on the same random
images, in the same process:

- **fast**: :func:`droplab.train.fit` with its defaults (data on the device,
  batched crop+flip, no per-step host sync; bf16 autocast and channels_last
  where the device has native bf16; fused SGD on CUDA), beside ``fit`` in fp32
  with contiguous tensors (the CPU path before those defaults);
- **reference**: a ``DataLoader`` over a ``TensorDataset`` with per-sample
  torchvision v2 transforms (RandomCrop with padding, RandomHorizontalFlip),
  fp32, eager, ``loss.item()`` every step, as in the PyTorch tutorials.

Throughput is images per second of the fastest of ``TIMED_EPOCHS`` epochs after a
warm-up epoch (one short epoch alone varied by half between two runs on a 2-core CPU). On CUDA
the achieved TFLOP/s (``torch.utils.flop_counter.FlopCounterMode`` on one
training step) is compared with the GPU's dense bf16 peak where known.
"""

from __future__ import annotations

import argparse
import copy
import json
import re
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, replace
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

# Dense bf16 tensor-core peaks in TFLOP/s, by a substring of the device name.
PEAK_TFLOPS: dict[str, float] = {"H200": 989.0, "H100": 989.0, "A100": 312.0}
TIMED_EPOCHS = 3


def peak_tflops(name: str) -> float | None:
    """The device's dense bf16 peak (TFLOP/s), or None if unknown."""
    return next((v for k, v in PEAK_TFLOPS.items() if k in name), None)


def _depth(model: str) -> int:
    m = re.fullmatch(r"preresnet(\d+)", model)
    if not m:
        raise ValueError(f"unknown model {model!r}; valid models are preresnet8, preresnet20, preresnet56 "
                         f"(any preresnet<6n+2>)")
    return int(m.group(1))


class TransformedTensorDataset(torch.utils.data.TensorDataset):
    """A ``TensorDataset`` of uint8 images whose images pass through ``transform`` one by one."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, transform: Any):
        super().__init__(images, labels)
        self.transform = transform

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        x, y = super().__getitem__(i)
        return self.transform(x), y


def reference_epoch(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, batch_size: int,
                    pad: int, stats: tuple[list[float], list[float]], dev: torch.device,
                    workers: int = 0, max_batches: int | None = None) -> tuple[float, int]:
    """One epoch of the plain loop; returns (seconds, images trained on)."""
    from torchvision.transforms import v2

    size = images.shape[-1]
    tf = v2.Compose([v2.RandomCrop(size, padding=pad, padding_mode="reflect"), v2.RandomHorizontalFlip(),
                     v2.ToDtype(torch.float32, scale=True), v2.Normalize(*stats)])
    loader = torch.utils.data.DataLoader(TransformedTensorDataset(images, labels, tf), batch_size=batch_size,
                                         shuffle=True, drop_last=True, num_workers=workers)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, nesterov=True, weight_decay=5e-4)
    model.train()
    seen, running = 0, 0.0
    if dev.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for b, (x, y) in enumerate(loader):
        if max_batches is not None and b >= max_batches:
            break
        x, y = x.to(dev), y.to(dev)
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        running += loss.item()
        seen += len(y)
    if dev.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - t0, seen


def step_flops(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> int:
    """FLOPs of one training step (forward and backward) counted by FlopCounterMode."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=x.device.type == "cuda"):
            out = model(x)
        F.cross_entropy(out.float(), y).backward()
    model.zero_grad(set_to_none=True)
    return int(counter.get_total_flops())


def _fit_ips(net: nn.Module, x: torch.Tensor, y: torch.Tensor, dev: torch.device, recipe: Any,
             seed: int) -> tuple[float, Any]:
    """Images/s of the fastest of ``TIMED_EPOCHS`` epochs of ``fit`` after one that warms up
    kernels (and compiles)."""
    from droplab import train

    hist = train.fit(net, (x, y), None, replace(recipe, epochs=1 + TIMED_EPOCHS), device=dev, progress=False,
                     seed=seed)
    per_epoch = (len(y) // recipe.batch_size) * recipe.batch_size
    return per_epoch / min(hist.seconds[1:]), net.fast_path


def run(model: str = "preresnet8", input_size: int = 28, images: int = 512, batch_size: int = 128,
        width: int = 16, device: str | None = None, compile: bool = False, workers: int = 0,
        seed: int = 0) -> dict[str, Any]:
    """Measure three paths on the same network, weights and random images, in one run.

    - ``reference``: the plain DataLoader loop (:func:`reference_epoch`);
    - ``fit_fp32``: :func:`droplab.train.fit` in fp32 with contiguous tensors,
      the CPU path before the fast-path defaults;
    - ``fast``: ``fit`` with its defaults (:func:`droplab.train.fast_path`:
      bf16 and channels_last where the device has native bf16).

    Returns images/s of each, ``ratio`` fast / reference, the fast path chosen
    and, on CUDA, the achieved TFLOP/s and its share of the device's bf16 peak.
    ``input_size`` 28 means 1-channel images (Fashion-MNIST-like), 32 means
    3-channel (CIFAR-like); images and labels (10 classes) are random.
    """
    from droplab import models, repro, train

    if input_size not in (28, 32):
        raise ValueError(f"input size {input_size!r} is not supported; valid sizes are 28, 32")
    if images < 2 * batch_size:
        raise ValueError(f"need at least two batches: images ({images}) >= 2 * batch_size ({batch_size})")
    dev = repro.device(device)
    channels = 1 if input_size == 28 else 3
    pad = 2 if input_size == 28 else 4
    gen = torch.Generator().manual_seed(seed)
    x = torch.randint(0, 256, (images, channels, input_size, input_size), dtype=torch.uint8, generator=gen)
    y = torch.randint(0, 10, (images,), generator=gen)
    torch.manual_seed(seed)
    net = models.PreResNet(_depth(model), in_channels=channels, width=width)
    fp32_net, ref_net = copy.deepcopy(net), copy.deepcopy(net).to(dev)
    stats = train.input_stats(x)
    recipe = train.Recipe(epochs=1 + TIMED_EPOCHS, batch_size=batch_size, lr=0.05, warmup_epochs=0, pad=pad, compile=compile)

    fast_ips, path = _fit_ips(net, x, y, dev, recipe, seed)
    fp32_ips, _ = _fit_ips(fp32_net, x, y, dev, replace(recipe, precision="fp32", channels_last=False), seed)
    # reference: a warm-up epoch, then the fastest of the timed ones
    reference_epoch(ref_net, x, y, batch_size, pad, stats, dev, workers)
    ref_ips = max(seen / secs for secs, seen in
                  (reference_epoch(ref_net, x, y, batch_size, pad, stats, dev, workers) for _ in range(TIMED_EPOCHS)))

    out: dict[str, Any] = {
        "model": model, "width": width, "input": f"{channels}x{input_size}x{input_size}", "images": images,
        "batch_size": batch_size, "compile": compile, "workers": workers,
        "threads": torch.get_num_threads(), "num_parameters": models.num_parameters(net),
        "fast_images_per_s": fast_ips, "fit_fp32_images_per_s": fp32_ips, "reference_images_per_s": ref_ips,
        "ratio": fast_ips / ref_ips, "fast_path": asdict(path),
        "device": str(dev), "device_name": repro.device_name(dev),
    }
    if dev.type == "cuda":
        xb = train.to_device((x[:batch_size], y[:batch_size]), dev, stats)
        flops = step_flops(net.train(), xb[0].contiguous(memory_format=torch.channels_last), xb[1])
        achieved = flops / batch_size * fast_ips / 1e12
        peak = peak_tflops(out["device_name"])
        out.update(flops_per_image=flops / batch_size, achieved_tflops=achieved, peak_tflops=peak,
                   fraction_of_peak=achieved / peak if peak else None)
    out["provenance"] = repro.provenance(dev)
    return out


def epoch_seconds(model: str = "preresnet20", dataset: str = "fashion-mnist", batch_size: int = 512,
                  width: int = 16, device: str | None = None, compile: bool = False) -> dict[str, Any]:
    """Wall time of one full training epoch of ``fit`` on a real data set (after one warm-up epoch)."""
    from droplab import data, models, repro, train

    dev = repro.device(device)
    tr = data.load(dataset, "train")
    info = data.info(dataset)
    torch.manual_seed(0)
    net = models.PreResNet(_depth(model), in_channels=info.shape[0], num_classes=info.num_classes, width=width)
    hist = train.fit(net, tr, None, train.Recipe(epochs=2, batch_size=batch_size, compile=compile), device=dev,
                     progress=False)
    return {"model": model, "dataset": dataset, "images": len(tr.labels), "batch_size": batch_size,
            "epoch_seconds": hist.seconds[-1], "first_epoch_seconds": hist.seconds[0],
            "fast_path": asdict(net.fast_path), "device_name": repro.device_name(dev)}


def sweep_workers(runs: int = 4, workers: Sequence[int] = (1, 2), epochs: int = 25,
                  device: str | None = None) -> dict[str, Any]:
    """Wall time of a sweep of ``runs`` runs with each number of ``workers``, every time from an
    empty folder: the residual experiment's first configs at smoke sizes but with 1,000
    synthetic training images and ``epochs`` epochs (about 25 seconds a run on one core,
    so that starting the worker processes does not dominate)."""
    import tempfile

    from droplab import experiments, sweep

    base = experiments.get("residual")
    sizes = replace(experiments.SMOKE, data=replace(experiments.SMOKE.data, train_size=1000),
                    recipe=replace(experiments.SMOKE.recipe, epochs=epochs))
    exp = experiments.Experiment("bench-sweep", "a small sweep to time worker processes", base.configs[:runs],
                                   {"smoke": sizes})
    only = exp.config_names
    scale = "smoke"
    out: dict[str, Any] = {"runs": len(only), "epochs": epochs, "seconds": {}}
    for w in workers:
        with tempfile.TemporaryDirectory(prefix="droplab-bench-") as tmp:
            t0 = time.perf_counter()
            sweep.run(exp, scale, 1, only=only, dataset="synthetic", results_dir=tmp, device=device,
                      progress=False, workers=w)
            out["seconds"][str(w)] = time.perf_counter() - t0
    first = out["seconds"][str(workers[0])]
    out["speedup"] = {k: first / v for k, v in out["seconds"].items()}
    return out


def format_result(r: dict[str, Any]) -> str:
    fp = r["fast_path"]
    lines = [(f"{r['model']} (width {r['width']}, {r['num_parameters']:,} parameters), input {r['input']}, "
             f"{r['images']} images, batch {r['batch_size']}, {r['threads']} torch thread(s), on {r['device_name']}"),
             f"{'path':<44} {'images/s':>12}",
             (f"{'fast (fit: ' + fp['precision'] + (', channels_last' if fp['channels_last'] else '') + ')':<44} "
             f"{r['fast_images_per_s']:>12,.0f}"),
             f"{'fit, fp32, contiguous (the earlier CPU path)':<44} {r['fit_fp32_images_per_s']:>12,.0f}",
             f"{'reference (DataLoader, v2, fp32)':<44} {r['reference_images_per_s']:>12,.0f}",
             f"{'ratio fast / reference':<44} {r['ratio']:>12.2f}",
             f"fast path: {fp['reason']}"]
    if "achieved_tflops" in r:
        peak = f"{r['peak_tflops']:.0f}" if r["peak_tflops"] else "unknown"
        frac = f" ({100 * r['fraction_of_peak']:.1f}% of peak)" if r["fraction_of_peak"] else ""
        lines.append(f"{'fast path TFLOP/s (bf16 peak ' + peak + ')':<44} {r['achieved_tflops']:>12.1f}{frac}")
    if "epoch" in r:
        e = r["epoch"]
        lines.append(f"one epoch of {e['model']} on {e['dataset']} ({e['images']:,} images): {e['epoch_seconds']:.1f} s")
    if "sweep" in r:
        sw = r["sweep"]
        lines.append(f"a sweep of {sw['runs']} runs ({sw['epochs']} epochs of 1,000 images): " + ", ".join(
            f"{w} worker(s) {sec:.1f} s ({sw['speedup'][w]:.2f}x)" for w, sec in sw["seconds"].items()))
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    cuda = torch.cuda.is_available()
    ap = argparse.ArgumentParser(prog="python -m droplab.bench", description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="preresnet20" if cuda else "preresnet8",
                    help="preresnet8, preresnet20, preresnet56 (any preresnet<6n+2>)")
    ap.add_argument("--input", type=int, default=32 if cuda else 28, help="28 (1 channel) or 32 (3 channels)")
    ap.add_argument("--images", type=int, default=50000 if cuda else 512)
    ap.add_argument("--batch-size", type=int, default=512 if cuda else 128)
    ap.add_argument("--width", type=int, default=16)
    ap.add_argument("--workers", type=int, default=0, help="DataLoader workers of the reference loop")
    ap.add_argument("--compile", action="store_true", help="torch.compile the fast path")
    ap.add_argument("--device", default=None)
    ap.add_argument("--epoch", action="store_true", help="also time one full epoch of Fashion-MNIST")
    ap.add_argument("--sweep", type=int, default=0, metavar="RUNS",
                    help="also time a sweep of RUNS runs with 1 and 2 worker processes")
    ap.add_argument("--sweep-epochs", type=int, default=25, help="epochs of each of those runs (default 25)")
    ap.add_argument("--json", default=None, help="write the result to this file")
    args = ap.parse_args(argv)
    try:
        r = run(args.model, args.input, args.images, args.batch_size, args.width, args.device,
                args.compile, args.workers)
        if args.epoch:
            r["epoch"] = epoch_seconds(args.model, batch_size=args.batch_size, width=args.width,
                                       device=args.device, compile=args.compile)
        if args.sweep:
            r["sweep"] = sweep_workers(args.sweep, epochs=args.sweep_epochs, device=args.device)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(format_result(r))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(r, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
