"""GPU benchmark: does the study model at 224 px keep every visible GPU busy, and does the
input pipeline keep up with it?

One command of a few minutes, on a GPU node:

    .venv/bin/python bench/gpu.py --write bench/RESULTS.md

It writes synthetic transformed examples (phantom X-rays stored as Transform stores them),
builds the Trainer's model under the Trainer's strategy (MirroredStrategy over every
visible GPU; mixed_float16 (`--precision`) and XLA on unless told otherwise) and measures:
- training alone: training steps on one global batch already on the devices;
- input alone: the Trainer's input pipeline on this node's CPU cores, from disk and from
  its in-memory cache;
- end to end: `fit` on the input pipeline, as the Trainer runs it;
and the fraction of the cards' dense fp16/bf16 peak that training alone reaches, from the
model's FLOP count (3 x the forward pass's multiply-adds x 2, from its layer list).
Targets on an H100-class card: end to end within 1.2x of training alone, and at least 35 %
of the peak. `--smoke` runs the same code at 80 px for a few steps (on a CPU too: the
test suite does, so the script cannot rot between GPU sessions).
"""
import argparse
import os
import tempfile
import time

from measure import write_section
from train import images_per_s, input_dataset, write_transformed

# Dense (not sparse) fp16/bf16 tensor-core peak per card, TFLOP/s, from the vendor's data sheets.
PEAK_TFLOPS = {"H200": 989.0, "H100 SXM": 989.0, "H100 80GB HBM3": 989.0, "H100 NVL": 835.0, "H100 PCIe": 756.0,
               "H100": 756.0, "A100": 312.0, "L40S": 362.0, "L4": 121.0, "A10G": 70.0, "A10": 125.0, "T4": 65.0,
               "V100": 125.0}
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


def peak_tflops(device_name: str):
    """The card's peak from PEAK_TFLOPS, the longest matching name first; None if unknown."""
    for name in sorted(PEAK_TFLOPS, key=len, reverse=True):
        if name in device_name:
            return PEAK_TFLOPS[name]
    return None


def settings_for(args):
    from cxr.components.settings import replace_model, replace_training
    from cxr.pipeline.config import PRESETS
    study = PRESETS["study"].trainer_settings()
    return replace_training(replace_model(study, image_size=args.image_size), batch_size=args.batch_size,
                            precision=args.precision, jit_compile=args.jit_compile)


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
    parser.add_argument("--precision", default="mixed_float16", choices=PRECISIONS,
                        help="training.precision (default %(default)s; auto: bfloat16 where the device has it)")
    parser.add_argument("--no-xla", dest="jit_compile", action="store_false")
    parser.add_argument("--peak-tflops", type=float, help="the card's dense fp16/bf16 peak, if not in the table")
    parser.add_argument("--smoke", action="store_true",
                        help="80 px (the least four blocks take), 4 per replica, 64 examples, 2 steps")
    parser.add_argument("--write", help="Markdown file whose section of these results to replace")
    args = parser.parse_args()
    if args.smoke:
        args.image_size, args.batch_size, args.examples, args.steps = 80, 4, 64, 2
    lines = report(measure_all(args, settings_for(args)))
    print("\n".join(lines))
    if args.write:
        write_section(args.write, "# GPU benchmark (`bench/gpu.py`)\n\n" + "\n".join(f"- {line}" for line in lines))


def measure_all(args, settings) -> dict:
    import tensorflow as tf
    from cxr.components.trainer import build, distribution_strategy
    gpus = tf.config.list_physical_devices("GPU")
    names = [tf.config.experimental.get_device_details(gpu).get("device_name", "GPU") for gpu in gpus] or ["CPU"]
    strategy = distribution_strategy()
    replicas = strategy.num_replicas_in_sync
    global_batch = settings.training.batch_size * replicas
    with tempfile.TemporaryDirectory() as work:
        path = os.path.join(work, "transformed.tfrecord.gz")
        write_transformed(path, settings.model.image_size, args.examples, distinct=256)
        dataset = input_dataset(path, settings, replicas)
        input_disk = images_per_s(dataset)  # the first pass fills the cache
        input_cached = images_per_s(dataset)
        model = build(settings, strategy)
        step_s = time_training_alone(model, strategy, next(iter(dataset)), args.steps, settings.training.jit_compile)
        end_to_end = time_end_to_end(model, dataset, args.steps) * global_batch
    peak = args.peak_tflops or peak_tflops(names[0])
    return dict(devices=names, replicas=replicas, settings=settings, global_batch=global_batch, step_s=step_s,
                training=global_batch / step_s, input_disk=input_disk, input_cached=input_cached,
                end_to_end=end_to_end, flops=3 * forward_flops(model), peak=peak and peak * len(gpus),
                cores=len(os.sched_getaffinity(0)))


def report(m: dict) -> list:
    training = m["settings"].training
    achieved = m["training"] * m["flops"] / 1e12
    fraction = f"{achieved / m['peak']:.0%} of {m['peak']:.0f} peak" if m["peak"] else "peak unknown (--peak-tflops)"
    return [
        f"devices: {m['replicas']} replica(s) on {', '.join(m['devices'])}; {m['cores']} CPU cores",
        f"model: study CNN at {m['settings'].model.image_size} px, {m['flops'] / 1e9:.1f} GFLOP per training image; "
        f"precision {training.precision}, XLA {'on' if training.jit_compile else 'off'}",
        f"global batch: {m['global_batch']} ({training.batch_size} per replica)",
        f"training alone: {m['training']:,.0f} images/s, step {m['step_s'] * 1000:.1f} ms, "
        f"{achieved:,.1f} TFLOP/s = {fraction} (target >= {TARGET_PEAK_FRACTION:.0%})",
        f"input alone: {m['input_disk']:,.0f} images/s from disk, {m['input_cached']:,.0f} from the cache",
        f"end to end: {m['end_to_end']:,.0f} images/s; training alone / end to end = "
        f"{m['training'] / m['end_to_end']:.2f} (target <= {TARGET_END_TO_END_RATIO})",
    ]


if __name__ == "__main__":
    main()
