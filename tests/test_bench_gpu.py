"""bench/gpu.py: its FLOP count and peak table, and one small run of the whole script on this CPU,
so that the GPU benchmark works when a GPU session comes."""
import os
import re
import subprocess
import sys

import pytest
import tf_keras as keras

BENCH = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "bench")
sys.path.insert(0, BENCH)
import gpu  # noqa: E402


def test_flops_count_two_per_multiply_add_of_convolutions_and_dense_layers():
    inputs = keras.Input((5, 5, 1))
    x = keras.layers.Conv2D(2, 3)(inputs)  # 3 x 3 outputs x 2 channels, 9 multiply-adds each
    x = keras.layers.Flatten()(x)
    outputs = keras.layers.Dense(4)(x)  # 18 inputs x 4 units
    assert gpu.forward_flops(keras.Model(inputs, outputs)) == 2 * (3 * 3 * 2 * 9) + 2 * (18 * 4)


def test_the_study_model_costs_about_16_gflop_forward_at_224_px():
    from cxr.components.model import build_model
    from cxr.pipeline.config import PRESETS
    study = PRESETS["study"]
    # By hand: 2 x 9 x (222² x 1 x 64 + 220² x 64² + 108² x 64 x 128 + 106² x 128² + 51² x 128 x 256
    # + 49² x 256² + 22² x 256 x 512 + 20² x 512²) = 16.05 G, plus 0.06 G in the dense layers.
    assert gpu.forward_flops(build_model(study.model, study.training)) / 1e9 == pytest.approx(16.1, abs=0.02)


@pytest.mark.parametrize("name, precision, peak", [
    ("NVIDIA H100 80GB HBM3", "mixed_float16", 989.0), ("NVIDIA H100 PCIe", "mixed_bfloat16", 756.0),
    ("NVIDIA H100 PCIe", "float32", 378.0), ("NVIDIA H200", "mixed_bfloat16", 989.0), ("NVIDIA H200", "float32", 495.0),
    ("Tesla T4", "mixed_float16", 65.0), ("Tesla T4", "float32", 8.1), ("NVIDIA A10G", "mixed_float16", 70.0),
    ("NVIDIA A100-SXM4-80GB", "float32", 156.0), ("Some Future Card", "mixed_float16", None)])
def test_the_peak_is_the_cards_by_its_longest_matching_name_and_the_precision(name, precision, peak):
    assert gpu.peak_tflops(name, precision) == peak


@pytest.mark.parametrize("name", ["Tesla T4", "Tesla V100-SXM2-16GB"])
def test_a_card_without_bfloat16_has_no_bfloat16_peak(name):
    assert gpu.peak_tflops(name, "mixed_float16") is not None
    assert gpu.peak_tflops(name, "mixed_bfloat16") is None


@pytest.mark.slow
def test_the_benchmark_runs_end_to_end_on_this_machine():
    run = subprocess.run([sys.executable, os.path.join(BENCH, "gpu.py"), "--smoke"], capture_output=True, text=True,
                         timeout=900)
    assert run.returncode == 0, run.stderr[-3000:]
    lines = run.stdout.strip().splitlines()[-7:]
    assert re.match(r"devices: 1 replica\(s\) on CPU", lines[0]), lines
    assert "at 80 px" in lines[1] and "XLA on" in lines[1]
    assert re.match(r"input alone: [1-9][\d,]* images/s from disk, [1-9][\d,]* from the cache", lines[3]), lines
    # One row per precision, each with both of its rates measured.
    for line, precision in zip(lines[4:], ("float32", "mixed_float16", "mixed_bfloat16")):
        assert re.match(rf"{precision}: training alone [1-9][\d,]* images/s, step [\d.]+ ms, .* end to end "
                        r"[1-9][\d,]* images/s", line), line
