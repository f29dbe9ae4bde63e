"""Where TFX's artifacts keep their files, read through tf.io.gfile so that a pipeline root on a local
folder and one in a gs:// bucket are read alike."""
import os
from typing import List

import tensorflow as tf


def split_files(examples_uri: str, split: str) -> List[str]:
    """The compressed TFRecord files of one split of an Examples artifact (ExampleGen's and Transform's layout)."""
    return sorted(tf.io.gfile.glob(os.path.join(examples_uri, f"Split-{split}", "*.gz")))


def copy_tree(source: str, destination: str) -> None:
    """Copies a folder (a SavedModel, say) between any two file systems TensorFlow reads."""
    for folder, _, files in tf.io.gfile.walk(source):
        target = os.path.join(destination, os.path.relpath(folder, source))
        tf.io.gfile.makedirs(target)
        for name in files:
            tf.io.gfile.copy(os.path.join(folder, name), os.path.join(target, name), overwrite=True)
