"""droplab.bench: both training paths run and report a throughput ratio."""

from __future__ import annotations

import json

import pytest

from droplab import bench


def test_bench_reports_images_per_second_of_both_paths_and_their_ratio():
    r = bench.run("preresnet8", input_size=28, images=64, batch_size=16, width=4, device="cpu")
    assert r["fast_images_per_s"] > 0 and r["reference_images_per_s"] > 0
    assert r["ratio"] == pytest.approx(r["fast_images_per_s"] / r["reference_images_per_s"])
    assert "achieved_tflops" not in r                     # FLOP/s only on CUDA
    json.dumps(r)
    assert "ratio fast / reference" in bench.format_result(r)
    assert r["fit_fp32_images_per_s"] > 0 and r["fast_path"]["precision"] in ("fp32", "bf16")


def test_bench_times_a_sweep_with_one_and_two_workers():
    r = bench.sweep_workers(runs=2, workers=(1, 2), epochs=1, device="cpu")
    assert set(r["seconds"]) == {"1", "2"} and r["speedup"]["1"] == 1.0 and r["runs"] == 2
    assert all(v > 0 for v in r["seconds"].values())


def test_bench_32_pixel_inputs_have_three_channels():
    r = bench.run("preresnet8", input_size=32, images=32, batch_size=16, width=4, device="cpu")
    assert r["input"] == "3x32x32"


def test_bench_bad_arguments_say_what_is_valid():
    with pytest.raises(ValueError, match="preresnet20, preresnet56"):
        bench.run("resnet18")
    with pytest.raises(ValueError, match="28, 32"):
        bench.run(input_size=64)


def test_known_peaks():
    assert bench.peak_tflops("NVIDIA H100 80GB HBM3") == 989.0
    assert bench.peak_tflops("NVIDIA GeForce GTX 1080") is None
