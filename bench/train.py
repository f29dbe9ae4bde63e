"""Benchmark of the training input: can tf.data over Transform's output feed the model?

For the demo and the study sizes it writes phantom X-rays as Transform writes them
(GZIP tf.Examples of float [size, size, 1] images and a class id), then, each in
its own process so peak memory is its own:
- input: images/s of the Trainer's input pipeline alone (TFXIO dataset,
  augmentation, prefetch), iterated without a model;
- model: images/s of the model's training steps on one batch held in memory;
- fit, tf.data: one epoch of `fit` on the input pipeline (the pipeline's way);
- fit, array: one epoch of `fit` on one in-memory float32 array (the study's way).
Target: the input pipeline delivers at least 3x what the model consumes.

    .venv/bin/python bench/train.py --write bench/RESULTS.md
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

SIZES = {"demo": 64 * 8, "study": 64}  # images written per size: the study model is slow on a CPU


def write_transformed(path, preset, count):
    import numpy as np
    import tensorflow as tf
    from cxr.dataprep import phantoms
    from cxr.pipeline.config import PRESETS
    size = PRESETS[preset].model.image_size
    rng = np.random.default_rng(0)
    findings = ("bacterial_pneumonia", "covid", "normal", "pneumothorax")
    with tf.io.TFRecordWriter(path, options="GZIP") as writer:
        for i in range(count):
            image = phantoms.render(rng, phantoms.Anatomy.random(rng), findings[i % 4], size).astype(np.float32)
            example = tf.train.Example(features=tf.train.Features(feature={
                "image": tf.train.Feature(float_list=tf.train.FloatList(value=image.ravel())),
                "class_id": tf.train.Feature(int64_list=tf.train.Int64List(value=[i % 4]))}))
            writer.write(example.SerializeToString())


def _settings(preset):
    from cxr.components.settings import TrainerSettings
    from cxr.pipeline.config import PRESETS
    config = PRESETS[preset]
    return TrainerSettings(config.model, config.training, config.serving)


def _input_pipeline(path, settings):
    import tensorflow_transform as tft
    from tfx_bsl.public import tfxio
    import tensorflow as tf
    from cxr.components.trainer import dataset_options, input_pipeline
    size = settings.model.image_size
    schema = tft.DatasetMetadata.from_feature_spec({
        "image": tf.io.FixedLenFeature([size, size, 1], tf.float32),
        "class_id": tf.io.FixedLenFeature([1], tf.int64)}).schema
    source = tfxio.TFExampleRecord(file_pattern=[path], schema=schema)
    return input_pipeline(source.TensorFlowDataset(dataset_options(settings, training=True)), settings, True)


def _model(settings):
    from cxr.components.trainer import build
    return build(settings)


def task_input(path, preset):
    settings = _settings(preset)
    images, start = 0, None
    for features, _ in _input_pipeline(path, settings):
        if start is None:  # the first batch pays for tracing
            start = time.monotonic()
            continue
        images += int(features["image"].shape[0])
    return {"images_per_s": images / (time.monotonic() - start)}


def task_model(path, preset):
    settings = _settings(preset)
    features, labels = next(iter(_input_pipeline(path, settings)))
    model = _model(settings)
    model.train_on_batch(features, labels)
    steps = 3 if preset == "study" else 20
    start = time.monotonic()
    for _ in range(steps):
        model.train_on_batch(features, labels)
    return {"images_per_s": steps * int(labels.shape[0]) / (time.monotonic() - start)}


def task_fit_dataset(path, preset):
    settings = _settings(preset)
    model = _model(settings)
    start = time.monotonic()
    model.fit(_input_pipeline(path, settings), epochs=1, verbose=0)
    return {"epoch_s": time.monotonic() - start}


def task_fit_array(path, preset):
    import numpy as np
    import tensorflow as tf
    settings = _settings(preset)
    size = settings.model.image_size
    spec = {"image": tf.io.FixedLenFeature([size, size, 1], tf.float32),
            "class_id": tf.io.FixedLenFeature([1], tf.int64)}
    parsed = [tf.io.parse_single_example(r, spec) for r in tf.data.TFRecordDataset(path, compression_type="GZIP")]
    images = np.stack([p["image"].numpy() for p in parsed])
    labels = np.stack([p["class_id"].numpy() for p in parsed])
    model = _model(settings)
    start = time.monotonic()
    model.fit(images, labels, batch_size=settings.training.batch_size, epochs=1, verbose=0)
    return {"epoch_s": time.monotonic() - start}


TASKS = {"input": task_input, "model": task_model, "fit-dataset": task_fit_dataset, "fit-array": task_fit_array}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", choices=TASKS)
    parser.add_argument("--data")
    parser.add_argument("--preset", choices=SIZES)
    parser.add_argument("--write", help="Markdown file whose section of these results to replace")
    args = parser.parse_args()
    if args.task:  # one measurement, in its own process
        print(json.dumps(TASKS[args.task](args.data, args.preset)))
        return
    rows = []
    with tempfile.TemporaryDirectory() as work:
        for preset, count in SIZES.items():
            path = os.path.join(work, f"{preset}.tfrecord.gz")
            write_transformed(path, preset, count)
            for task in TASKS:
                seconds, peak, output = measure([sys.executable, __file__, "--task", task, "--data", path,
                                                 "--preset", preset])
                result = json.loads(output.strip().splitlines()[-1])
                rows.append((preset, count, task, result, peak))
                print(rows[-1], flush=True)
    report = render(rows)
    print(report)
    if args.write:
        write_section(args.write, report)


def render(rows):
    lines = ["# Training input benchmark (`bench/train.py`)", "",
             f"Machine: {platform.machine()}, {psutil.cpu_count()} cores, "
             f"{psutil.virtual_memory().total / 2**30:.0f} GiB, no GPU (TensorFlow on the CPU). Each row runs "
             "in its own process; peak RSS is that process's.", "",
             "| size | images | measurement | result | peak RSS MiB |", "|---|---:|---|---|---:|"]
    rates = {}
    for preset, count, task, result, peak in rows:
        value = (f"{result['images_per_s']:.1f} images/s" if "images_per_s" in result
                 else f"{result['epoch_s']:.1f} s/epoch")
        lines.append(f"| {preset} | {count} | {task} | {value} | {peak / 2**20:,.0f} |")
        rates[(preset, task)] = result
    lines += ["", "Input pipeline / model consumption (target >= 3x):"]
    for preset in SIZES:
        ratio = rates[(preset, "input")]["images_per_s"] / rates[(preset, "model")]["images_per_s"]
        lines.append(f"- {preset}: **{ratio:.1f}x**")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
