"""GPU benchmark: does the study model at 224 px keep every visible GPU busy, and does the
input pipeline keep up with it?

One command of a few minutes, on a GPU node:

    .venv/bin/python bench/gpu.py --write bench/RESULTS.md

It writes synthetic transformed examples (phantom X-rays stored as Transform stores them),
measures the Trainer's input pipeline on this node's CPU cores (from disk and from its in-memory
cache), then, for each `training.precision` (`--precision`; float32, mixed_float16 and
mixed_bfloat16 unless told otherwise), builds the Trainer's model under the Trainer's strategy
(MirroredStrategy over every visible GPU; XLA on unless told otherwise) and measures:
- training alone: training steps on one global batch already on the devices;
- end to end: `fit` on the input pipeline, as the Trainer runs it;
and the fraction of the cards' dense peak for that precision that training alone reaches, from
the model's FLOP count (3 x the forward pass's multiply-adds x 2, from its layer list): the
tensor cores' fp16/bf16 peak for the mixed precisions, their TF32 peak for float32 (TensorFlow
computes float32 products in TF32 on Ampere and later unless told not to), the CUDA cores' fp32
peak on older cards, which have no TF32 and no bfloat16.
Targets on an H100-class card, in mixed precision: end to end within 1.2x of training alone,
and at least 35 % of the peak. `--smoke` runs the same code at 80 px for a few steps (on a CPU
too: the test suite does, so the script cannot rot between GPU sessions).
"""
import argparse
import os
import tempfile
import time

from measure import write_section
from train import images_per_s, input_dataset, write_transformed

# Dense (not sparse) peaks per card, TFLOP/s, from the vendor's data sheets: (fp16 and bf16 on the tensor
# cores, float32 as TensorFlow computes it: TF32 on the tensor cores from Ampere on, the CUDA cores' fp32
# before). T4 and V100 have no bfloat16 (None): `auto` trains in float32 there.
PEAK_TFLOPS = {"H200": (989.0, 495.0), "H100 SXM": (989.0, 495.0), "H100 80GB HBM3": (989.0, 495.0),
               "H100 NVL": (835.0, 418.0), "H100 PCIe": (756.0, 378.0), "H100": (756.0, 378.0),
               "A100": (312.0, 156.0), "L40S": (362.0, 183.0), "L4": (121.0, 60.0), "A10G": (70.0, 35.0),
               "A10": (125.0, 62.5), "T4": (65.0, 8.1), "V100": (125.0, 15.7)}
NO_BFLOAT16 = ("T4", "V100")
DEFAULT_PRECISIONS = ("float32", "mixed_float16", "mixed_bfloat16")
TARGET_PEAK_FRACTION, TARGET_END_TO_END_RATIO = 0.35, 1.2


def forward_flops(model) -> int:
    """FLOPs of one image's forward pass: 2 per multiply-add of every convolution and dense layer."""
    import tf_keras as keras
    total = 0
    for layer in model.layers:
        if isinstance(layer, keras.layers.Conv2D):
            _, height, width, channels_out = layer.output_shape
            kernel_h, kernel_w = layer.kernel_size
            total += 2 * height * width * kernel_h * kernel_w * layer.input_shape[-1] * channels_out
        elif isinstance(layer, keras.layers.Dense):
            total += 2 * layer.input_shape[-1] * layer.units
    return total


def peak_tflops(device_name: str, precision: str = "mixed_float16"):
    """The card's dense peak for a resolved precision from PEAK_TFLOPS, the longest matching name first; None if
    unknown, or for bfloat16 on a card without it."""
    for name in sorted(PEAK_TFLOPS, key=len, reverse=True):
        if name in device_name:
            if precision == "mixed_bfloat16" and name in NO_BFLOAT16:
                return None
            sixteen_bit, float32 = PEAK_TFLOPS[name]
            return float32 if precision == "float32" else sixteen_bit
    return None


def settings_for(args, precision: str):
    from cxr.components.settings import replace_model, replace_training
    from cxr.pipeline.config import PRESETS
    study = PRESETS["study"].trainer_settings()
    return replace_training(replace_model(study, image_size=args.image_size), batch_size=args.batch_size,
                            precision=precision, jit_compile=args.jit_compile)


def time_training_alone(model, strategy, batch, steps: int, jit_compile: bool) -> float:
    """Seconds per step on one global batch placed on the devices once (as Keras's fit steps, XLA included)."""
    import tensorflow as tf
    data = next(iter(strategy.experimental_distribute_dataset(tf.data.Dataset.from_tensors(batch))))
    step = tf.function(model.train_step, jit_compile=jit_compile)

    @tf.function
    def run(count):
        loss = tf.constant(0.0)
        for _ in tf.range(count):
            loss = strategy.reduce("MEAN", strategy.run(step, args=(data,))["loss"], axis=None)
        return loss

    float(run(tf.constant(3)))  # trace, compile, warm
    start = time.monotonic()
    float(run(tf.constant(steps)))  # reading the loss waits for the devices
    return (time.monotonic() - start) / steps


def time_end_to_end(model, dataset, steps: int) -> float:
    """Images/s of `fit` over the input pipeline, after a warm-up epoch."""
    endless = dataset.repeat()
    model.fit(endless, steps_per_epoch=3, epochs=1, verbose=0)
    start = time.monotonic()
    model.fit(endless, steps_per_epoch=steps, epochs=1, verbose=0)
    return steps / (time.monotonic() - start)


def main():
    from cxr.components.settings import PRECISIONS
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--batch-size", type=int, default=128, help="per replica (GPU)")
    parser.add_argument("--examples", type=int, default=4096, help="synthetic transformed examples written")
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--precision", nargs="+", default=list(DEFAULT_PRECISIONS), choices=PRECISIONS,
                        help="training.precision, one row each (default: %(default)s; auto: bfloat16 where the "
                             "device has it)")
    parser.add_argument("--no-xla", dest="jit_compile", action="store_false")
    parser.add_argument("--peak-tflops", type=float, nargs=2, metavar=("SIXTEEN_BIT", "FLOAT32"),
                        help="the card's dense fp16/bf16 and float32 (TF32) peaks, if it is not in the table")
    parser.add_argument("--smoke", action="store_true",
                        help="80 px (the least four blocks take), 4 per replica, 64 examples, 2 steps")
    parser.add_argument("--write", help="Markdown file whose section of these results to replace")
    args = parser.parse_args()
    if args.smoke:
        args.image_size, args.batch_size, args.examples, args.steps = 80, 4, 64, 2
    lines = report(measure_all(args))
    print("\n".join(lines))
    if args.write:
        write_section(args.write, "# GPU benchmark (`bench/gpu.py`)\n\n" + "\n".join(f"- {line}" for line in lines))


def measure_all(args) -> dict:
    import tensorflow as tf
    from cxr.components.model import resolved_precision
    from cxr.components.trainer import build, distribution_strategy
    gpus = tf.config.list_physical_devices("GPU")
    names = [tf.config.experimental.get_device_details(gpu).get("device_name", "GPU") for gpu in gpus] or ["CPU"]
    strategy = distribution_strategy()
    replicas = strategy.num_replicas_in_sync
    first = settings_for(args, args.precision[0])
    global_batch = first.training.batch_size * replicas
    rows = []
    with tempfile.TemporaryDirectory() as work:
        path = os.path.join(work, "transformed.tfrecord.gz")
        write_transformed(path, first.model.image_size, args.examples, distinct=256)
        dataset = input_dataset(path, first, replicas)
        input_disk = images_per_s(dataset)  # the first pass fills the cache
        input_cached = images_per_s(dataset)
        for precision in args.precision:
            settings = settings_for(args, precision)
            model = build(settings, strategy)
            step_s = time_training_alone(model, strategy, next(iter(dataset)), args.steps, args.jit_compile)
            end_to_end = time_end_to_end(model, dataset, args.steps) * global_batch
            resolved = resolved_precision(precision)
            peak = _peak(args, names[0], resolved)
            rows.append(dict(precision=precision, resolved=resolved, step_s=step_s, training=global_batch / step_s,
                             end_to_end=end_to_end, peak=peak and peak * len(gpus)))
            flops = 3 * forward_flops(model)
            del model
    return dict(devices=names, replicas=replicas, image_size=first.model.image_size, global_batch=global_batch,
                batch_size=first.training.batch_size, jit_compile=args.jit_compile, input_disk=input_disk,
                input_cached=input_cached, flops=flops, rows=rows,
                cores=len(os.sched_getaffinity(0)))


def _peak(args, device_name: str, resolved: str):
    if args.peak_tflops:
        return args.peak_tflops[1] if resolved == "float32" else args.peak_tflops[0]
    return peak_tflops(device_name, resolved)


def report(m: dict) -> list:
    lines = [
        f"devices: {m['replicas']} replica(s) on {', '.join(m['devices'])}; {m['cores']} CPU cores",
        f"model: study CNN at {m['image_size']} px, {m['flops'] / 1e9:.1f} GFLOP per training image; "
        f"XLA {'on' if m['jit_compile'] else 'off'}",
        f"global batch: {m['global_batch']} ({m['batch_size']} per replica)",
        f"input alone: {m['input_disk']:,.0f} images/s from disk, {m['input_cached']:,.0f} from the cache",
    ]
    for row in m["rows"]:
        achieved = row["training"] * m["flops"] / 1e12
        fraction = (f"{achieved / row['peak']:.0%} of its {row['peak']:.0f} peak" if row["peak"]
                    else "peak unknown (--peak-tflops)")
        name = row["precision"] + (f" ({row['resolved']})" if row["resolved"] != row["precision"] else "")
        target = "" if row["resolved"] == "float32" else f" (target >= {TARGET_PEAK_FRACTION:.0%})"
        lines.append(
            f"{name}: training alone {row['training']:,.0f} images/s, step {row['step_s'] * 1000:.1f} ms, "
            f"{achieved:,.1f} TFLOP/s = {fraction}{target}; end to end {row['end_to_end']:,.0f} images/s, "
            f"training alone / end to end = {row['training'] / row['end_to_end']:.2f} "
            f"(target <= {TARGET_END_TO_END_RATIO})")
    return lines


if __name__ == "__main__":
    main()
