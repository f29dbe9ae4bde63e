"""Benchmark of the training input: can tf.data over Transform's output feed the model?

For the demo and the study sizes it writes phantom X-rays as Transform stores them
(GZIP tf.Examples: 8-bit pixels in one bytes value and a class id), then, each in
its own process so that peak memory is its own:
- input: the Trainer's input pipeline alone (components/trainer.py: read, parse,
  decode to uint8 batches, prefetch), iterated without a model, in a process
  pinned to one CPU core: images/s per core, for the first pass from disk and for
  a later pass from the in-memory cache;
- model: images/s of the model's training steps on one batch held in memory
  (scaling and augmentation are layers of the model, so they are counted here);
- fit: FIT_EPOCHS epochs of `fit` on the input pipeline with a validation split (the Trainer's
  way): the first epoch (tracing, cache filling), then images/s and busy cores (process CPU
  time / wall time) over the later epochs, the time `fit` spends between its epochs (what
  every epoch pays outside Keras's epoch figure), and the time before its first epoch and
  after its last (once per fit).
Targets: at least 600 images/s per core at 224 px, an input pipeline delivering at least 3x
what the model consumes, fit keeping at least 1.7 of 2 cores busy, and at most 5 % of fit's
time between its epochs.

    .venv/bin/python bench/train.py --write bench/RESULTS.md
    .venv/bin/python bench/train.py --input-only    # the per-core figure at 224 px
    .venv/bin/python bench/train.py --precisions --write bench/RESULTS.md   # the model rows per precision
"""
import argparse
import json
import os
import platform
import sys
import tempfile
import time

import psutil

from measure import measure, write_section

# Images written per size for the input pipeline; the model and fit rows use the first MODEL_IMAGES.
SIZES = {"demo": 1024, "study": 1024}
MODEL_IMAGES = {"demo": 512, "study": 64}  # the study model is slow on a CPU
FIT_EPOCHS = 4
TARGET_PER_CORE = 600
# float16 has no oneDNN kernel on this CPU (none reported; 0.92 images/s at the demo size, 72x slower than
# float32): measured at the demo size only, where it takes a minute (at the study size it ran past 20).
PRECISION_ROWS = {"demo": ("float32", "mixed_bfloat16", "mixed_float16"), "study": ("float32", "mixed_bfloat16")}
TARGET_BUSY_CORES = 1.7
TARGET_OUTSIDE_EPOCHS = 0.05


def write_transformed(path, size, count, distinct=None):
    """`count` phantom X-rays as Transform stores them; `distinct` of them rendered (the slow part), then repeated."""
    import numpy as np
    import tensorflow as tf
    from cxr.components.transform import encode_pixels
    from cxr.dataprep import phantoms
    rng = np.random.default_rng(0)
    findings = ("bacterial_pneumonia", "covid", "normal", "pneumothorax")
    stored = [encode_pixels(tf.constant(phantoms.render(rng, phantoms.Anatomy.random(rng), findings[i % 4], size)
                                        .astype(np.float32).reshape(1, size, size, 1)))[0].numpy()
              for i in range(min(distinct or count, count))]
    with tf.io.TFRecordWriter(path, options="GZIP") as writer:
        for i in range(count):
            writer.write(tf.train.Example(features=tf.train.Features(feature={
                "image": tf.train.Feature(bytes_list=tf.train.BytesList(value=[stored[i % len(stored)]])),
                "class_id": tf.train.Feature(int64_list=tf.train.Int64List(value=[i % 4]))})).SerializeToString())


def _settings(preset, precision=None):
    from cxr.components.settings import replace_training
    from cxr.pipeline.config import PRESETS
    settings = PRESETS[preset].trainer_settings()
    return replace_training(settings, precision=precision) if precision else settings


def input_dataset(path, settings, replicas=1):
    """The Trainer's training input over the examples at `path`."""
    import tensorflow as tf
    from cxr.components.trainer import input_pipeline, read_split
    spec = {"image": tf.io.FixedLenFeature([], tf.string), "class_id": tf.io.FixedLenFeature([], tf.int64)}
    return input_pipeline(read_split([path]), spec, settings, replicas, training=True)


def images_per_s(dataset):
    """Images/s over one pass, the first batch (tracing, thread start) left out."""
    images, start = 0, None
    for features, _ in dataset:
        if start is None:
            start = time.monotonic()
            continue
        images += int(features["image"].shape[0])
    return images / (time.monotonic() - start)


def task_input(path, preset):
    core = min(os.sched_getaffinity(0))
    os.sched_setaffinity(0, {core})  # before TensorFlow starts its thread pools: they size to one core
    import cxr.components.trainer  # noqa: F401 (imported before the clock starts)
    start = time.monotonic()
    dataset = input_dataset(path, _settings(preset))
    setup = time.monotonic() - start  # counting the split's records and bytes, once per training
    from_disk = images_per_s(dataset)  # and fills the cache
    from_cache = images_per_s(dataset)
    return {"images_per_s": from_disk, "cached_images_per_s": from_cache, "setup_s": setup}


def task_model(path, preset, precision=None):
    settings = _settings(preset, precision)
    features, labels = next(iter(input_dataset(path, settings)))
    from cxr.components.model import build_model, resolved_precision
    from gpu import forward_flops
    model = build_model(settings.model, settings.training)
    model.train_on_batch(features, labels)
    steps = 3 if preset == "study" else 20
    cpu, start = _cpu_seconds(), time.monotonic()
    for _ in range(steps):
        model.train_on_batch(features, labels)
    seconds = time.monotonic() - start
    rate = steps * int(labels.shape[0]) / seconds
    return {"images_per_s": rate, "precision": resolved_precision(settings.training.precision),
            "gflops": rate * 3 * forward_flops(model) / 1e9, "busy_cores": (_cpu_seconds() - cpu) / seconds}


def task_fit(path, preset):
    import psutil
    import tf_keras as keras
    settings = _settings(preset)
    # Whole files, as the Trainer reads its splits: a take() of a cached dataset never completes its cache, and
    # dropping it and its iterator between epochs costs seconds that fit would not spend in the pipeline.
    dataset = input_dataset(_fit_file(path, "train"), settings)
    validation = input_dataset(_fit_file(path, "eval"), settings)
    steps = MODEL_IMAGES[preset] // settings.training.batch_size
    from cxr.components.model import build_model
    model = build_model(settings.model, settings.training)
    epochs = []  # (began, ended, cpu seconds) of each epoch

    class EpochClock(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            self.began, self.cpu = time.monotonic(), _cpu_seconds()

        def on_epoch_end(self, epoch, logs=None):
            epochs.append((self.began, time.monotonic(), _cpu_seconds() - self.cpu))

    start = time.monotonic()
    with tempfile.TemporaryDirectory() as logs:  # the Trainer's callbacks (components/trainer.py, run_fn)
        model.fit(dataset.repeat(), steps_per_epoch=steps, validation_data=validation, epochs=FIT_EPOCHS, verbose=0,
                  callbacks=[
            EpochClock(), keras.callbacks.EarlyStopping(monitor="val_loss", patience=FIT_EPOCHS,
                                                        restore_best_weights=True),
            keras.callbacks.TensorBoard(log_dir=logs)])
        returned = time.monotonic()
    later = epochs[1:]
    later_wall = sum(ended - began for began, ended, _ in later)
    between = sum(began - epochs[i][1] for i, (began, _, _) in enumerate(later))
    return {"first_epoch_s": epochs[0][1] - epochs[0][0], "images_per_s": steps * settings.training.batch_size *
            len(later) / later_wall, "busy_cores": sum(cpu for _, _, cpu in later) / later_wall,
            "between_epochs": between / (returned - start),
            "around_fit_s": (epochs[0][0] - start) + (returned - epochs[-1][1]), "cores": psutil.cpu_count()}


def _fit_file(path, split):
    return path.replace(".tfrecord.gz", f".fit-{split}.tfrecord.gz")


def _cpu_seconds():
    import psutil
    times = psutil.Process().cpu_times()
    return times.user + times.system + times.children_user + times.children_system


# The cores' peak per precision, found by measuring (a table of theoretical FLOP per cycle would need the
# clock under load, which a VM does not show): the best of a large matrix product and a large convolution,
# each the kind of work oneDNN does best, on every core, timed over at least PEAK_SECONDS after a warm-up.
# Smaller shapes (2048; 64 to 128 channels at 112 px) stayed under what the study's model itself reached.
PEAK_MATMUL = 4096                                  # n x n times n x n: 2 n^3 FLOP
PEAK_CONV = (16, 56, 56, 256, 256)                  # batch, height, width, channels in, filters out; 3 x 3, valid
PEAK_SECONDS = 2.0
PEAK_DTYPES = {"float32": "float32", "mixed_bfloat16": "bfloat16", "mixed_float16": "float16"}


def task_peak(path, preset, precision="float32"):
    """GFLOP/s of the best-suited kernels in `precision`'s compute type (`path` and `preset` unused)."""
    import tensorflow as tf
    dtype = tf.as_dtype(PEAK_DTYPES[precision])
    rng = tf.random.Generator.from_seed(0)
    a, b = (tf.cast(rng.normal([PEAK_MATMUL, PEAK_MATMUL]), dtype) for _ in range(2))
    batch, height, width, channels, filters = PEAK_CONV
    images = tf.cast(rng.normal([batch, height, width, channels]), dtype)
    kernel = tf.cast(rng.normal([3, 3, channels, filters]), dtype)
    work = {"matmul": (tf.function(lambda: tf.linalg.matmul(a, b)), 2 * PEAK_MATMUL ** 3),
            "conv3x3": (tf.function(lambda: tf.nn.conv2d(images, kernel, 1, "VALID")),
                        2 * batch * (height - 2) * (width - 2) * channels * filters * 9)}
    result = {}
    for name, (op, flop) in work.items():
        op().numpy()  # traces, and lets oneDNN pick and compile its kernel
        runs, start = 0, time.monotonic()
        while runs < 2 or time.monotonic() - start < PEAK_SECONDS:
            op().numpy()
            runs += 1
        result[name] = runs * flop / (time.monotonic() - start) / 1e9
    return {"gflops": max(result.values()), **{f"{name}_gflops": value for name, value in result.items()}}


TASKS = {"input": task_input, "model": task_model, "fit": task_fit, "peak": task_peak}


def run_task(task, path, preset, precision=None, kernels=False):
    """The task's result in its own process; with `kernels`, also the oneDNN convolution implementations
    that ran (ONEDNN_VERBOSE=1: one line per primitive executed, its implementation in the sixth field)."""
    command = [sys.executable, __file__, "--task", task, "--data", path, "--preset", preset]
    environment = dict(os.environ, ONEDNN_VERBOSE="1") if kernels else None
    seconds, peak, output = measure(command + (["--precision", precision] if precision else []), env=environment)
    result = json.loads(output.strip().splitlines()[-1])
    if kernels:
        ran = {}
        for line in output.splitlines():
            fields = line.split(",")
            if line.startswith("onednn_verbose,") and "exec" in fields and "convolution" in fields:
                impl = fields[fields.index("convolution") + 1]
                ran[impl] = ran.get(impl, 0) + 1
        result["convolution_kernels"] = ran
    return result, peak


def precision_rows(work):
    """Training steps per precision at the demo and the study sizes, the kernels each ran, and the peak
    of the cores in each precision (preset "peak")."""
    rows = []
    for precision in PEAK_DTYPES:
        result, _ = run_task("peak", "-", "demo", precision)
        rows.append(("peak", precision, result))
        print(rows[-1], flush=True)
    for preset in SIZES:
        path = os.path.join(work, f"{preset}-precision.tfrecord.gz")
        write_transformed(path, _settings(preset).model.image_size, MODEL_IMAGES[preset])
        for precision in PRECISION_ROWS[preset]:
            result, peak = run_task("model", path, preset, precision, kernels=True)
            rows.append((preset, precision, result))
            print(rows[-1], flush=True)
    return rows


def render_precision(rows):
    lines = ["# Training precision (`bench/train.py --precisions`)", "",
             f"Machine: {platform.machine()}, {psutil.cpu_count()} cores, no GPU. The model rows above per "
             "`training.precision`: training steps on one batch held in memory, each in its own process with "
             "ONEDNN_VERBOSE=1 (which costs a little: compare rows with each other, not with the table above).", "",
             "| size | precision | images/s | x float32 | GFLOP/s | of the peak | cores busy | "
             "convolution kernels (executions) |",
             "|---|---|---:|---:|---:|---:|---:|---|"]
    peaks = {precision: result for preset, precision, result in rows if preset == "peak"}
    base = {preset: result["images_per_s"] for preset, precision, result in rows
            if precision == "float32" and preset != "peak"}
    for preset, precision, result in rows:
        if preset == "peak":
            continue
        kernels = ", ".join(f"{name} ({count})" for name, count in sorted(result["convolution_kernels"].items()))
        lines.append(f"| {preset} | {precision} | {result['images_per_s']:.1f} | "
                     f"{result['images_per_s'] / base[preset]:.2f} | {result['gflops']:.0f} | "
                     f"{result['gflops'] / peaks[precision]['gflops']:.0%} | "
                     f"{result['busy_cores']:.2f} | {kernels or 'none reported'} |")
    n, (batch, height, width, channels, filters) = PEAK_MATMUL, PEAK_CONV
    lines += ["", f"The peak, per compute type: the best GFLOP/s of a {n} x {n} matrix product and of a 3 x 3 "
                  f"convolution ({batch} x {height} x {width} x {channels} to {filters} filters), on every core, "
                  f"timed over at least {PEAK_SECONDS:.0f} s after a warm-up (`bench/train.py` `task_peak`; a "
                  "VM does not show its clock under load, so the peak is measured, not worked out).", "",
              "| compute type | matrix product GFLOP/s | convolution GFLOP/s | peak GFLOP/s |", "|---|---:|---:|---:|"]
    for precision, result in peaks.items():
        lines.append(f"| {PEAK_DTYPES[precision]} | {result['matmul_gflops']:.0f} | {result['conv3x3_gflops']:.0f} | "
                     f"{result['gflops']:.0f} |")
    return "\n".join(lines) + "\n"


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", choices=TASKS)
    parser.add_argument("--data")
    parser.add_argument("--preset", choices=SIZES)
    parser.add_argument("--input-only", action="store_true", help="only the input pipeline at 224 px, per core")
    parser.add_argument("--precision", help="(one task) training.precision for the model task")
    parser.add_argument("--precisions", action="store_true",
                        help="only the model rows, once per training.precision, with the oneDNN kernels that ran")
    parser.add_argument("--write", help="Markdown file whose section of these results to replace")
    args = parser.parse_args()
    if args.task:  # one measurement, in its own process
        extra = {"precision": args.precision} if args.precision else {}
        print(json.dumps(TASKS[args.task](args.data, args.preset, **extra)))
        return
    if args.precisions:
        with tempfile.TemporaryDirectory() as work:
            report = render_precision(precision_rows(work))
        print(report)
        if args.write:
            write_section(args.write, report)
        return
    presets = ["study"] if args.input_only else list(SIZES)
    tasks = ["input"] if args.input_only else list(TASKS)
    rows = []
    with tempfile.TemporaryDirectory() as work:
        for preset in presets:
            path = os.path.join(work, f"{preset}.tfrecord.gz")
            size = _settings(preset).model.image_size
            write_transformed(path, size, SIZES[preset])
            write_transformed(_fit_file(path, "train"), size, MODEL_IMAGES[preset])
            write_transformed(_fit_file(path, "eval"), size, MODEL_IMAGES[preset] // 8)
            for task in tasks:
                result, peak = run_task(task, path, preset)
                rows.append((preset, task, result, peak))
                print(rows[-1], flush=True)
    study_input = next(result for preset, task, result, _ in rows if (preset, task) == ("study", "input"))
    if not args.input_only:
        report = render(rows)
        print(report)
        if args.write:
            write_section(args.write, report)
    size = _settings("study").model.image_size
    print(f"input per core: {study_input['images_per_s']:.0f} images/s at {size} px")


def render(rows):
    lines = ["# Training input benchmark (`bench/train.py`)", "",
             f"Machine: {platform.machine()}, {psutil.cpu_count()} cores, "
             f"{psutil.virtual_memory().total / 2**30:.0f} GiB, no GPU (TensorFlow on the CPU). Each row runs "
             "in its own process; peak RSS is that process's. The input rows run pinned to one core.", "",
             "| size | images | measurement | result | peak RSS MiB |", "|---|---:|---|---|---:|"]
    rates = {}
    for preset, task, result, peak in rows:
        if task == "input":
            value = (f"{result['images_per_s']:.0f} images/s per core from disk, "
                     f"{result['cached_images_per_s']:.0f} from the cache (setup {result['setup_s']:.1f} s)")
        elif task == "fit":
            value = (f"{result['images_per_s']:.1f} images/s after a first epoch of {result['first_epoch_s']:.1f} s; "
                     f"{result['busy_cores']:.2f} of {result['cores']} cores busy; "
                     f"{result['between_epochs']:.1%} of fit between its epochs, {result['around_fit_s']:.1f} s "
                     f"before and after them")
        else:
            value = f"{result['images_per_s']:.1f} images/s"
        count = SIZES[preset] if task == "input" else MODEL_IMAGES[preset]
        lines.append(f"| {preset} | {count} | {task} | {value} | {peak / 2**20:,.0f} |")
        rates[(preset, task)] = result
    lines += ["", f"Input pipeline from disk, per core, at 224 px (target >= {TARGET_PER_CORE}): "
                  f"**{rates[('study', 'input')]['images_per_s']:.0f} images/s**", "",
              "Input pipeline on one core / model consumption on all cores (target >= 3x):"]
    for preset in SIZES:
        ratio = rates[(preset, "input")]["images_per_s"] / rates[(preset, "model")]["images_per_s"]
        lines.append(f"- {preset}: **{ratio:.1f}x**")
    lines += ["", f"fit, cores busy (target >= {TARGET_BUSY_CORES}) and share of fit between its epochs "
                  f"(target <= {TARGET_OUTSIDE_EPOCHS:.0%}):"]
    for preset in SIZES:
        fit = rates[(preset, "fit")]
        lines.append(f"- {preset}: **{fit['busy_cores']:.2f}** cores, **{fit['between_epochs']:.1%}** between epochs")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
