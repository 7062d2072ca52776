"""The one definition of the on-disk record format and the D4 symmetry names.

See docs/architecture.md ("Data set on disk"). Simulation writes with
`encode_example`; the data readers parse with `feature_spec` / `decode_example`.
"""

from __future__ import annotations

import numpy as np

FORMAT_VERSION = 1
MANIFEST_NAME = "manifest.json"
SPLITS = ("train", "val", "test")
CLASS_NAMES = ("no_sub", "cdm", "axion")
# The classifier's label and output name (`model.head: softmax`): the class index.
CLASS_TARGET = "class"

TARGET_PREFIX = "target/"
NUISANCE_PREFIX = "nuisance/"

# Elements of the dihedral group D4 acting on an image array indexed [row, col], with
# row <-> y and col <-> x (lenstronomy's pixel grid). The exact action of each element on
# pixels, positions and spin-2 quantities is defined once, in data/augment.py.
D4_ELEMENTS = (
    "identity",
    "rot90",
    "rot180",
    "rot270",
    "flip_x",
    "flip_x_rot90",
    "flip_x_rot180",
    "flip_x_rot270",
)


def shard_name(split: str, shard: int, num_shards: int) -> str:
    return f"{split}-{shard:05d}-of-{num_shards:05d}.tfrecord"


def encode_example(
    image: np.ndarray,
    index: int,
    class_id: int,
    targets: dict[str, float],
    nuisance: dict[str, float],
) -> bytes:
    """Serialise one example to a tf.train.Example byte string."""
    import tensorflow as tf

    image = np.asarray(image, dtype="<f4")
    feature = {
        "image": tf.train.Feature(bytes_list=tf.train.BytesList(value=[image.tobytes()])),
        "index": tf.train.Feature(int64_list=tf.train.Int64List(value=[int(index)])),
        "class_id": tf.train.Feature(int64_list=tf.train.Int64List(value=[int(class_id)])),
    }
    for prefix, values in ((TARGET_PREFIX, targets), (NUISANCE_PREFIX, nuisance)):
        for name, value in values.items():
            feature[prefix + name] = tf.train.Feature(
                float_list=tf.train.FloatList(value=[float(value)])
            )
    # deterministic: the feature map's entries in key order. Otherwise their order follows
    # the process's string-hash seed, and the same example written by two processes (two
    # simulate tasks, or a rerun) would not be the same bytes.
    example = tf.train.Example(features=tf.train.Features(feature=feature))
    return example.SerializeToString(deterministic=True)


def feature_spec(targets, nuisances) -> dict:
    """Parsing spec for `tf.io.parse_single_example` / `parse_example`."""
    import tensorflow as tf

    spec = {
        "image": tf.io.FixedLenFeature([], tf.string),
        "index": tf.io.FixedLenFeature([], tf.int64),
        "class_id": tf.io.FixedLenFeature([], tf.int64),
    }
    for name in targets:
        spec[TARGET_PREFIX + name] = tf.io.FixedLenFeature([], tf.float32)
    for name in nuisances:
        spec[NUISANCE_PREFIX + name] = tf.io.FixedLenFeature([], tf.float32)
    return spec
