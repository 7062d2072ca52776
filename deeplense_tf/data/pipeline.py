"""The tf.data input pipeline for training and evaluation.

Order: read -> parse -> filter (examples with NaN in a chosen target) -> map -> cache ->
shuffle -> [repeat] -> batch -> map (random D4 element per example, target
standardisation, optional normalisation) -> prefetch(AUTOTUNE).

Augmentation runs after the cache so each epoch draws new elements; it is applied to whole
batches with a per-example element, which is as cheap as a single flip. Every step below
is a plain function of tensors, usable eagerly and inside `Dataset.map` (the tests run
both).
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import tensorflow as tf

from deeplense_tf.data import augment as d4
from deeplense_tf.data import schema
from deeplense_tf.data.classes import class_index_table, labels_for_run
from deeplense_tf.data.readers import (
    Examples,
    _first_line,
    check_split_count,
    check_target_names,
    examples_from_path_or_object,
    read_manifest,
    source_kind,
    split_shards,
)
from deeplense_tf.data.transforms import NORMALIZATIONS, normalize_images
from deeplense_tf.errors import ConfigError, DataError

AUTOTUNE = tf.data.AUTOTUNE

# Upper bound on the shuffle buffer (it holds copies of the cached examples).
_SHUFFLE_BUFFER_BYTES = 256 * 2**20


# --- steps --------------------------------------------------------------------------------


def parse_record(serialized, image_shape, targets, class_table=None):
    """One serialised record -> `{"image": float32 [H, W, C], "targets": {name: float32 []}}`.

    With `class_table` (`[len(manifest classes)]` int64: the label of each `class_id`, -1
    for a class not asked for) the result also holds `"class"`, the example's label.
    """
    spec = {"image": tf.io.FixedLenFeature([], tf.string)}
    for name in targets:
        spec[schema.TARGET_PREFIX + name] = tf.io.FixedLenFeature([], tf.float32)
    if class_table is not None:
        spec["class_id"] = tf.io.FixedLenFeature([], tf.int64)
    example = tf.io.parse_single_example(serialized, spec)
    image = tf.io.decode_raw(example["image"], tf.float32, little_endian=True)
    parsed = {
        "image": tf.reshape(image, list(image_shape)),
        "targets": {name: example[schema.TARGET_PREFIX + name] for name in targets},
    }
    if class_table is not None:
        parsed[schema.CLASS_TARGET] = tf.gather(tf.constant(class_table, tf.int64), example["class_id"])
    return parsed


def has_defined_targets(example, targets):
    """True when none of the chosen targets is NaN (or infinite) for this example."""
    checks = [tf.reduce_all(tf.math.is_finite(example["targets"][name])) for name in targets]
    return tf.reduce_all(tf.stack(checks))


def standardize_targets(targets: dict, stats: dict) -> dict:
    """`{name: (value - mean) / std}` for the names in `stats` (numpy or tf values)."""
    return {
        name: (targets[name] - np.float32(stats[name]["mean"])) / np.float32(stats[name]["std"])
        for name in stats
    }


def unstandardize_targets(targets: dict, stats: dict) -> dict:
    """Inverse of `standardize_targets`: back to physical units."""
    return {
        name: targets[name] * np.float32(stats[name]["std"]) + np.float32(stats[name]["mean"])
        for name in stats
    }


def finalize_batch(batch, element_ids, *, targets, target_kinds, stats, normalization):
    """Batch dict -> (images `[B, H, W, C']`, `{target: [B, 1]}` standardised).

    `element_ids` (`[B]` int, indices into `schema.D4_ELEMENTS`) transforms each image and
    its vector / spin-2 targets; None leaves them as they are.
    """
    images, values = batch["image"], batch["targets"]
    if element_ids is not None:
        images, values = d4.augment_batch(images, values, element_ids, target_kinds)
    values = standardize_targets(values, {name: stats[name] for name in targets})
    images = normalize_images(images, normalization)
    labels = {name: tf.reshape(tf.cast(values[name], tf.float32), [-1, 1]) for name in targets}
    if schema.CLASS_TARGET in batch:  # the class label: D4 leaves it as it is
        labels[schema.CLASS_TARGET] = tf.reshape(tf.cast(batch[schema.CLASS_TARGET], tf.float32), [-1, 1])
    return images, labels


def first_examples(dataset: tf.data.Dataset, limit: int | None = None, per_class: int | None = None,
                   num_classes: int = 0) -> tf.data.Dataset:
    """The first `limit` examples of `dataset` (unbatched, in its reading order, which is
    deterministic) and, with `per_class`, only the first `per_class` of each of a
    classifier's `num_classes` labels: the labelled subsets of learning curves and
    few-shot tables. Either None: no limit of that kind."""
    if per_class is not None:
        if num_classes < 1:
            raise ConfigError("a per-class limit needs class labels (a classifier's data)")

        def count(seen, example):
            label = tf.reshape(tf.cast(example[schema.CLASS_TARGET], tf.int32), [1, 1])
            seen = tf.tensor_scatter_nd_add(seen, label, tf.ones([1], tf.int64))
            return seen, (example, tf.gather_nd(seen, label[0]) <= per_class)

        dataset = dataset.scan(tf.zeros([num_classes], tf.int64), count)
        dataset = dataset.filter(lambda example, keep: keep).map(lambda example, keep: example)
    if limit is not None:
        dataset = dataset.take(int(limit))
    return dataset


def limited_count(usable: int, class_counts=None, limit: int | None = None,
                  per_class: int | None = None) -> int:
    """How many examples `first_examples` keeps of a split with `usable` examples (and
    `class_counts`, the examples per label, for `per_class`)."""
    if per_class is not None:
        usable = int(sum(min(int(n), int(per_class)) for n in class_counts))
    return usable if limit is None else min(usable, int(limit))


def count_classes(directory, manifest: dict, split: str, num_labels: int, class_table) -> list[int]:
    """Examples of `split` per label (`class_table` maps a record's class_id to its label,
    as `parse_record` does); reads only the class ids."""
    shards, _ = split_shards(directory, manifest, split)
    spec = {"class_id": tf.io.FixedLenFeature([], tf.int64)}
    table = np.asarray(class_table, np.int64)
    counts = np.zeros(num_labels, np.int64)
    dataset = tf.data.TFRecordDataset([os.fspath(s) for s in shards]).batch(4096)
    try:
        for records in dataset:
            ids = tf.io.parse_example(records, spec)["class_id"].numpy()
            if ids.size and (ids.min() < 0 or ids.max() >= len(table)):
                raise DataError(f"{directory}: split {split} holds a class_id outside the manifest's classes")
            labels = table[ids]
            counts += np.bincount(labels[labels >= 0], minlength=num_labels)[:num_labels]
    except tf.errors.DataLossError:
        raise DataError(f"{directory}: a {split} shard is corrupt or truncated") from None
    return counts.tolist()


def _checked_label(example, message):
    """The example with its class label checked: a class the caller did not name (a data
    set with more classes than the run) stops the pipeline with `message` rather than
    training on label -1."""
    label = example[schema.CLASS_TARGET]
    with tf.control_dependencies([tf.debugging.assert_non_negative(label, message=message)]):
        return dict(example, **{schema.CLASS_TARGET: tf.identity(label)})


# --- checks -------------------------------------------------------------------------------

_VERIFIED_SHARDS: dict[tuple, int] = {}


def verify_split(directory, split: str, manifest: dict | None = None) -> int:
    """Read every record of a split once; return the count or raise DataError naming the shard.

    Catches what tf.data would otherwise raise in the middle of training: corrupt or
    truncated shards (CRC / length errors), records missing a feature, images of the
    wrong size and NaN / infinite pixels; and a split whose shards hold fewer records
    than the manifest says (a truncation at a record boundary). Shards already checked
    in this process (same path, size and modification time) are not read again.
    """
    manifest = manifest or read_manifest(directory)
    shards, expected = split_shards(directory, manifest, split)
    spec = schema.feature_spec(manifest["targets"], manifest["nuisances"])
    nbytes = int(np.prod(manifest["image_shape"])) * 4

    def check(records):
        parsed = tf.io.parse_example(records, spec)
        lengths = tf.strings.length(parsed["image"])
        pixels = tf.io.decode_raw(parsed["image"], tf.float32, fixed_length=nbytes)
        return lengths, tf.reduce_all(tf.math.is_finite(pixels), axis=1)

    total = 0
    for shard in shards:
        stat = shard.stat()
        key = (str(shard.resolve()), stat.st_size, stat.st_mtime_ns, nbytes, tuple(sorted(spec)))
        if key not in _VERIFIED_SHARDS:
            _VERIFIED_SHARDS[key] = _verify_shard(shard, check, nbytes, manifest["image_shape"])
        total += _VERIFIED_SHARDS[key]
    check_split_count(directory, split, expected, total)
    return total


def _verify_shard(shard: Path, check, nbytes: int, image_shape) -> int:
    count = 0
    try:
        for lengths, finite in tf.data.TFRecordDataset(str(shard)).batch(512).map(check):
            lengths, finite = lengths.numpy(), finite.numpy()
            wrong = np.flatnonzero(lengths != nbytes)
            if len(wrong):
                raise DataError(
                    f"{shard}: example {count + wrong[0]} has {lengths[wrong[0]] / 4:g} pixel "
                    f"values but the manifest's image_shape {list(image_shape)} needs {nbytes // 4}"
                )
            bad = np.flatnonzero(~finite)
            if len(bad):
                raise DataError(
                    f"{shard}: example {count + bad[0]} has NaN or infinite pixels "
                    f"({len(bad)} examples affected in this batch)"
                )
            count += len(lengths)
    except tf.errors.DataLossError:
        raise DataError(
            f"{shard}: corrupt or truncated shard (unreadable at or after record {count})"
        ) from None
    except tf.errors.InvalidArgumentError as error:
        raise DataError(
            f"{shard}: records do not match the manifest's features ({_first_line(error)})"
        ) from None
    return count


def count_usable_examples(directory, manifest: dict, split: str, targets) -> int:
    """Examples of `split` with every one of `targets` defined (reads only the targets).

    Raises DataError naming the split when its shards hold another number of records
    than the manifest says (see `check_split_count`).
    """
    shards, expected = split_shards(directory, manifest, split)
    spec = {schema.TARGET_PREFIX + t: tf.io.FixedLenFeature([], tf.float32) for t in targets}

    def usable(records):
        parsed = tf.io.parse_example(records, spec)
        finite = [tf.math.is_finite(v) for v in parsed.values()]
        both = tf.reduce_all(tf.stack(finite), axis=0)
        return tf.size(records, tf.int64), tf.reduce_sum(tf.cast(both, tf.int64))

    total = count = 0
    dataset = tf.data.TFRecordDataset([os.fspath(s) for s in shards]).batch(4096).map(usable)
    try:
        for records, good in dataset:
            total, count = total + int(records), count + int(good)
    except tf.errors.DataLossError:
        raise DataError(
            f"{directory}: split {split!r} has a corrupt or truncated shard (unreadable after "
            f"{total} records)"
        ) from None
    except tf.errors.InvalidArgumentError as error:
        raise DataError(
            f"{directory}: split {split!r}: records do not match the manifest's features "
            f"({_first_line(error)})"
        ) from None
    check_split_count(directory, split, expected, total)
    return count


# --- source description -------------------------------------------------------------------


@dataclass
class _Source:
    name: str
    metadata: dict
    available: list
    image_shape: tuple
    directory: Path | None = None  # a simulated data directory (streamed from shards)
    examples: Examples | None = None  # anything else (in memory)


def _open_source(source, split: str) -> _Source:
    if not isinstance(source, Examples) and source_kind(source) == "simulated":
        manifest = read_manifest(source)
        return _Source(
            name=f"{source} ({split})",
            metadata=manifest,
            available=list(manifest["targets"]),
            image_shape=tuple(manifest["image_shape"]),
            directory=Path(source),
        )
    examples = examples_from_path_or_object(source, split)
    return _Source(
        name=examples.source or "examples",
        metadata=examples.metadata,
        available=list(examples.targets),
        image_shape=tuple(examples.images.shape[1:]),
        examples=examples,
    )


def _clean_stats(name: str, stats, origin: str) -> dict:
    try:
        mean, std = float(stats["mean"]), float(stats["std"])
    except (KeyError, TypeError, ValueError):
        raise DataError(f"{origin}: target stats of {name!r} need numeric mean and std") from None
    if not math.isfinite(mean):
        raise DataError(f"{origin}: target {name!r} has no defined values to standardise with")
    # A constant (or single-example) target keeps its scale rather than dividing by zero.
    return {"mean": mean, "std": std if math.isfinite(std) and std > 0 else 1.0}


def _stats_from_values(values: np.ndarray) -> dict:
    values = np.asarray(values, np.float64)
    values = values[np.isfinite(values)]
    if not len(values):
        return {"mean": math.nan, "std": math.nan}
    return {
        "mean": float(values.mean()),
        "std": float(values.std()),
        "min": float(values.min()),
        "max": float(values.max()),
    }


def _resolve_stats(info: _Source, targets, given) -> dict:
    if given is not None:
        missing = [name for name in targets if name not in given]
        if missing:
            raise DataError(f"target_stats has no entry for {', '.join(missing)}")
        return {name: _clean_stats(name, given[name], "target_stats") for name in targets}
    stats = dict(info.metadata.get("target_stats") or {})
    missing = [name for name in targets if name not in stats]
    if missing:
        if info.examples is not None:
            source_examples = info.examples
        elif "train" in info.metadata["splits"]:  # manifest without stats: measure train
            from deeplense_tf.data.readers import load_examples

            source_examples = load_examples(info.directory, split="train")
        else:
            raise DataError(
                f"{info.directory}: the manifest has no target_stats for {', '.join(missing)} "
                "and no train split to measure them on; pass target_stats"
            )
        for name in missing:
            stats[name] = _stats_from_values(source_examples.targets[name])
    return {name: _clean_stats(name, stats[name], info.name) for name in targets}


def resolve_target_stats(source, targets=None, target_stats=None, split: str = "train") -> dict:
    """`{target: {"mean", "std"}}` that `build_dataset` standardises with.

    Given stats win; otherwise a manifest's train-split `target_stats`; otherwise the
    statistics of the source itself (for an `.npz` / `.h5` / `.npy` training set, pass
    them on to the validation and test pipelines).
    """
    info = _open_source(source, split)
    chosen = check_target_names(targets, info.available, info.name)
    return _resolve_stats(info, chosen, target_stats)


# --- the pipeline -------------------------------------------------------------------------


def build_dataset(
    source,
    split: str = "train",
    *,
    targets,
    batch_size: int,
    target_stats: dict | None = None,
    normalization: str = "none",
    augment: str = "none",
    shuffle: bool = False,
    seed: int = 0,
    cache: bool = True,
    repeat: bool = False,
    drop_remainder: bool = False,
    verify: bool = True,
    classes=None,
    limit: int | None = None,
    per_class: int | None = None,
) -> tf.data.Dataset:
    """A `tf.data.Dataset` of `(images [B, H, W, C] float32, {target: [B, 1] float32})`.

    source: a simulated data directory (streamed from its shards), a DeepLense `.npy`
        folder, an `.npz` / `.h5` file, or an `Examples` object (held in memory).
    targets: target names (None = every target of the source); examples with NaN in any
        chosen target are dropped.
    target_stats: `{name: {"mean", "std"}}`; default as in `resolve_target_stats`.
    normalization: one of `transforms.NORMALIZATIONS` (models normalise inside, so
        "none" is the default).
    augment: "none", "exact" (the source's `exact_symmetries`) or "d4" (all eight); a
        random element per example, with vector / spin-2 targets transformed alongside.
    seed: fixes shuffling and augmentation; the same arguments give the same batches.
    verify: read a simulated split once up front so bad shards fail here with a DataError
        instead of mid-training (cheap: results are remembered per process).
    classes: class names (a classifier's, `model.head: softmax`): each batch's labels then
        hold `"class"` `[B, 1]` float32, the example's index into `classes` (its class
        read from the record's `class_id`), and `targets` may be empty (None = none).
        DataError when the source holds no class labels or a class not in `classes`.
    limit, per_class: only the first `limit` usable examples, and (with `classes`) the
        first `per_class` of each class, in reading order (`first_examples`).
    """
    if normalization not in NORMALIZATIONS:
        raise ConfigError(
            f"unknown normalization {normalization!r}; choose from {', '.join(NORMALIZATIONS)}"
        )
    if augment not in d4.AUGMENT_MODES:
        raise ConfigError(f"unknown augment {augment!r}; choose from {', '.join(d4.AUGMENT_MODES)}")
    if not isinstance(batch_size, int | np.integer) or batch_size < 1:
        raise ConfigError(f"batch_size must be a positive integer, got {batch_size!r}")

    info = _open_source(source, split)
    if classes is not None and not targets:
        chosen = []
    else:
        chosen = check_target_names(targets, info.available, info.name)
    class_table = None
    if classes is not None:
        data_classes = list(info.metadata.get("classes") or schema.CLASS_NAMES)
        if info.examples is not None:
            data_classes = list(info.examples.class_names)
        class_table = class_index_table(data_classes, classes)
    if info.directory is not None and verify:
        verify_split(info.directory, split, info.metadata)
    stats = _resolve_stats(info, chosen, target_stats)
    allowed = d4.allowed_elements(augment, info.metadata.get("exact_symmetries"))
    augmenting = allowed != ("identity",)
    kinds, needed = {}, list(chosen)
    if augmenting:
        kinds = {
            n: k for n, k in info.metadata.get("target_kinds", {}).items() if n in info.available
        }
        for _, first, second in d4.target_pairs(kinds):
            if first in chosen or second in chosen:  # the partner is needed to transform
                needed += [n for n in (first, second) if n not in needed]
        height, width = info.image_shape[:2]
        if height != width and any(d4.swaps_axes(n) for n in allowed):
            raise DataError(
                f"{info.name}: augment={augment!r} rotates by 90 degrees, which needs square "
                f"images (these are {height}x{width})"
            )

    if info.directory is not None:
        shards, count = split_shards(info.directory, info.metadata, split)
        files = tf.data.Dataset.from_tensor_slices([os.fspath(p) for p in shards])
        dataset = files.interleave(
            tf.data.TFRecordDataset,
            cycle_length=min(4, len(shards)),
            num_parallel_calls=AUTOTUNE,
            deterministic=True,
        )
        # Even with verify=False a split that ends early stops with an error (naming both
        # counts) rather than training or evaluating quietly on fewer examples.
        dataset = dataset.apply(tf.data.experimental.assert_cardinality(count))
        image_shape = info.image_shape
        dataset = dataset.map(
            lambda record: parse_record(record, image_shape, needed, class_table),
            num_parallel_calls=AUTOTUNE,
        )
        if chosen:
            dataset = dataset.filter(lambda example: has_defined_targets(example, chosen))
        if class_table is not None:
            message = f"{info.name}: holds a class that is not one of {', '.join(classes)}"
            dataset = dataset.map(lambda example: _checked_label(example, message))
    else:
        examples = info.examples
        keep = np.ones(len(examples), bool)
        for name in chosen:
            keep &= np.isfinite(examples.targets[name])
        if not keep.any():
            raise DataError(f"{info.name}: no example has all of {', '.join(chosen)} defined")
        count = int(keep.sum())
        columns = {
            "image": examples.images[keep],
            "targets": {name: examples.targets[name][keep].astype(np.float32) for name in needed},
        }
        if class_table is not None:
            columns[schema.CLASS_TARGET] = labels_for_run(
                None if examples.class_id is None else examples.class_id[keep],
                data_classes, classes, info.name)
        dataset = tf.data.Dataset.from_tensor_slices(columns)

    if limit is not None or per_class is not None:
        dataset = first_examples(dataset, limit, per_class, len(classes) if classes is not None else 0)
        count = min(count, limit or count, per_class * len(classes) if per_class else count)
    if cache:
        dataset = dataset.cache()
    if shuffle:
        per_example = int(np.prod(info.image_shape)) * 4 + 4 * len(needed)
        buffer = max(1, min(count, max(1024, _SHUFFLE_BUFFER_BYTES // per_example)))
        dataset = dataset.shuffle(buffer, seed=seed, reshuffle_each_iteration=True)
    if repeat:
        dataset = dataset.repeat()
    dataset = dataset.batch(
        batch_size, drop_remainder=drop_remainder, num_parallel_calls=AUTOTUNE, deterministic=True
    )

    finalize = dict(targets=chosen, target_kinds=kinds, stats=stats, normalization=normalization)
    if augmenting:
        # One stateless seed per batch from a seeded stream that changes every epoch but is
        # the same for every run with the same seed.
        seeds = tf.data.Dataset.random(seed=seed, rerandomize_each_iteration=True)
        seed_tensor = tf.constant(seed, tf.int64)

        def augment_and_finalize(batch, draw):
            ids = d4.random_element_ids(
                tf.shape(batch["image"])[0], allowed, tf.stack([seed_tensor, draw])
            )
            return finalize_batch(batch, ids, **finalize)

        dataset = tf.data.Dataset.zip((dataset, seeds)).map(
            augment_and_finalize, num_parallel_calls=AUTOTUNE, deterministic=True
        )
    else:
        dataset = dataset.map(
            lambda batch: finalize_batch(batch, None, **finalize),
            num_parallel_calls=AUTOTUNE,
            deterministic=True,
        )
    return dataset.prefetch(AUTOTUNE)
