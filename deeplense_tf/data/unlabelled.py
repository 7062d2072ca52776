"""The images of a simulated data set without their labels, for self-supervised pretraining.

`build_dataset` keeps only examples whose chosen targets are defined, which for a data set
mixed from every class drops most of them (an axion mass is NaN for a CDM lens); a
pretraining objective needs no target, so this pipeline reads every example of a split:
read -> parse (image only) -> cache -> shuffle -> batch -> prefetch. It yields
`(images [B, H, W, C] float32, {})`, the `(images, targets)` structure of the training
loop with no targets.
"""

from __future__ import annotations

import os

import numpy as np
import tensorflow as tf

from deeplense_tf.data.pipeline import _SHUFFLE_BUFFER_BYTES, parse_record, verify_split
from deeplense_tf.data.readers import read_manifest, split_shards
from deeplense_tf.errors import ConfigError

AUTOTUNE = tf.data.AUTOTUNE


def image_dataset(directory, split: str = "train", *, batch_size: int, shuffle: bool = False,
                  seed: int = 0, cache: bool = True, drop_remainder: bool = False,
                  verify: bool = True) -> tf.data.Dataset:
    """Every image of `split` of a simulated data directory, in batches, with `{}` as targets.

    `seed` fixes the shuffle (the same arguments give the same batches); `verify` reads
    the split once up front so a bad shard fails here with a DataError.
    """
    if not isinstance(batch_size, int | np.integer) or batch_size < 1:
        raise ConfigError(f"batch_size must be a positive integer, got {batch_size!r}")
    manifest = read_manifest(directory)
    if verify:
        verify_split(directory, split, manifest)
    shards, count = split_shards(directory, manifest, split)
    image_shape = tuple(manifest["image_shape"])
    files = tf.data.Dataset.from_tensor_slices([os.fspath(p) for p in shards])
    dataset = files.interleave(tf.data.TFRecordDataset, cycle_length=min(4, len(shards)),
                               num_parallel_calls=AUTOTUNE, deterministic=True)
    dataset = dataset.apply(tf.data.experimental.assert_cardinality(count))
    dataset = dataset.map(lambda record: parse_record(record, image_shape, [])["image"],
                          num_parallel_calls=AUTOTUNE)
    if cache:
        dataset = dataset.cache()
    if shuffle:
        per_example = int(np.prod(image_shape)) * 4
        buffer = max(1, min(count, max(1024, _SHUFFLE_BUFFER_BYTES // per_example)))
        dataset = dataset.shuffle(buffer, seed=seed, reshuffle_each_iteration=True)
    dataset = dataset.batch(batch_size, drop_remainder=drop_remainder,
                            num_parallel_calls=AUTOTUNE, deterministic=True)
    return dataset.map(lambda images: (images, {})).prefetch(AUTOTUNE)
