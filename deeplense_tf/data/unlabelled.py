"""The images of a simulated data set without their labels, for self-supervised pretraining.

`build_dataset` keeps only examples whose chosen targets are defined, which for a data set
mixed from every class drops most of them (an axion mass is NaN for a CDM lens); a
pretraining objective needs no target, so this pipeline reads every example of a split:
read -> parse (image only) -> cache -> shuffle -> batch -> prefetch. It yields
`(images [B, H, W, C] float32, {})`, the `(images, targets)` structure of the training
loop with no targets.

With a source twin (`twin=DIR`: the same simulation with `--source-seed`, so example i
of both is one lens and substructure lensing two sources) it reads both folders in step
and yields `(pairs [B, 2, H, W, C], {})`, each image beside its twin, shuffled together.
"""

from __future__ import annotations

import os

import numpy as np
import tensorflow as tf

from deeplense_tf.data.pipeline import _SHUFFLE_BUFFER_BYTES, parse_record, verify_split
from deeplense_tf.data.readers import read_manifest, split_shards
from deeplense_tf.errors import ConfigError, DataError

AUTOTUNE = tf.data.AUTOTUNE


# Manifest keys two folders must share to be source twins of each other.
_TWIN_KEYS = ("preset", "drawn_classes", "seed", "num", "image_shape", "val_fraction",
              "test_fraction")


def check_twins(directory, twin) -> None:
    """DataError unless `twin` is a source twin of `directory`: the same simulation (preset,
    classes, seed, size, splits) with another `--source-seed`."""
    first, second = read_manifest(directory), read_manifest(twin)
    for key in _TWIN_KEYS:
        if first.get(key) != second.get(key):
            raise DataError(f"{twin} is not a source twin of {directory}: {key} differs "
                            f"({second.get(key)!r} vs {first.get(key)!r}); simulate it with the "
                            "same command plus --source-seed K")

    def plan(manifest):  # split sizes and shard names: the order the examples are read in
        return {split: (info.get("count"), [os.path.basename(str(name))
                                            for name in info.get("shards", [])])
                for split, info in manifest["splits"].items()}

    if plan(first) != plan(second):
        raise DataError(f"{twin} is not a source twin of {directory}: the splits or their "
                        "shards differ (simulate it with the same --num, --val, --test and --shards)")
    if first.get("source_seed") == second.get("source_seed"):
        raise DataError(f"{twin} and {directory} have the same source seed "
                        f"({first.get('source_seed')}), so their images are the same; simulate "
                        "the twin with another --source-seed")


def _split_images(directory, split: str, verify: bool):
    """(dataset of single images in file order, their count, the image shape) of one split."""
    manifest = read_manifest(directory)
    if verify:
        verify_split(directory, split, manifest)
    shards, count = split_shards(directory, manifest, split)
    image_shape = tuple(manifest["image_shape"])
    files = tf.data.Dataset.from_tensor_slices([os.fspath(p) for p in shards])
    # deterministic=True keeps example i of a folder at position i, which pairs twins.
    dataset = files.interleave(tf.data.TFRecordDataset, cycle_length=min(4, len(shards)),
                               num_parallel_calls=AUTOTUNE, deterministic=True)
    dataset = dataset.apply(tf.data.experimental.assert_cardinality(count))
    dataset = dataset.map(lambda record: parse_record(record, image_shape, [])["image"],
                          num_parallel_calls=AUTOTUNE)
    return dataset, count, image_shape


def image_dataset(directory, split: str = "train", *, batch_size: int, shuffle: bool = False,
                  seed: int = 0, cache: bool = True, drop_remainder: bool = False,
                  verify: bool = True, twin=None) -> tf.data.Dataset:
    """Every image of `split` of a simulated data directory, in batches, with `{}` as targets.

    `seed` fixes the shuffle (the same arguments give the same batches); `verify` reads
    the split once up front so a bad shard fails here with a DataError. `twin`: a source
    twin folder (`check_twins`); each element is then `[2, H, W, C]`, image and twin.
    """
    if not isinstance(batch_size, int | np.integer) or batch_size < 1:
        raise ConfigError(f"batch_size must be a positive integer, got {batch_size!r}")
    dataset, count, image_shape = _split_images(directory, split, verify)
    if twin is not None:
        check_twins(directory, twin)
        twins, _, _ = _split_images(twin, split, verify)
        dataset = tf.data.Dataset.zip(dataset, twins).map(
            lambda image, other: tf.stack([image, other]), num_parallel_calls=AUTOTUNE)
        image_shape = (2, *image_shape)
    if cache:
        dataset = dataset.cache()
    if shuffle:
        per_example = int(np.prod(image_shape)) * 4
        buffer = max(1, min(count, max(1024, _SHUFFLE_BUFFER_BYTES // per_example)))
        dataset = dataset.shuffle(buffer, seed=seed, reshuffle_each_iteration=True)
    dataset = dataset.batch(batch_size, drop_remainder=drop_remainder,
                            num_parallel_calls=AUTOTUNE, deterministic=True)
    return dataset.map(lambda images: (images, {})).prefetch(AUTOTUNE)
