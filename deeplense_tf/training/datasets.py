"""The training and validation pipelines of an experiment config."""

from __future__ import annotations

from deeplense_tf.errors import ConfigError, DataError


def resolve_targets(config: dict, manifest: dict) -> list[str]:
    """The config's `data.targets` checked against the data set (None: all of its targets).

    A classifier (`model.head: softmax`) has one target, the class label (`CLASS_TARGET`),
    once the data are checked to hold at least two classes.
    """
    from deeplense_tf.data import check_target_names

    data_path = config["data"]["path"]
    if config["model"]["head"] == "softmax":
        from deeplense_tf.data.classes import class_names
        from deeplense_tf.data.schema import CLASS_TARGET

        class_names(manifest, data_path)
        return [CLASS_TARGET]
    return list(check_target_names(config["data"]["targets"], manifest["targets"], data_path))


def make_datasets(config: dict):
    """The training and validation pipelines of a config.

    Returns:
        `(train_ds, val_ds, target_stats, manifest)`: `train_ds` is one shuffled,
        augmented pass over the train split in batches of `training.batch_size` (the
        global batch) with the remainder dropped; `val_ds` one pass over the val split.
        Both yield `(raw images [B, H, W, C], {target: [B, 1] standardised})`.
        `target_stats` is `{target: {"mean", "std"}}` (train split, physical units).
    """
    from deeplense_tf.data import build_dataset, read_manifest, resolve_target_stats

    path = config["data"]["path"]
    if not path:
        raise ConfigError("data.path is not set (give --data DIR or data.path in the config)")
    manifest = read_manifest(path)
    targets = resolve_targets(config, manifest)
    if not manifest["splits"].get("val", {}).get("count"):
        raise DataError(f"{path}: has no val split (needed for early stopping and the best model)")
    batch_size = config["training"]["batch_size"]
    if config["model"]["head"] == "softmax":
        # The class label is not standardised: its stats are the identity.
        from deeplense_tf.data.classes import class_names

        target_stats = {t: {"mean": 0.0, "std": 1.0} for t in targets}
        common = dict(targets=[], classes=class_names(manifest, path), normalization="none")
    else:
        target_stats = resolve_target_stats(path, targets)
        common = dict(targets=targets, target_stats=target_stats, normalization="none")
    train_ds = build_dataset(
        path,
        "train",
        batch_size=batch_size,
        augment=config["data"]["augment"],
        shuffle=True,
        seed=config["seed"],
        cache=config["data"]["cache"],
        drop_remainder=True,
        limit=config["data"]["train_limit"],
        per_class=config["data"]["train_per_class"],
        **common,
    )
    val_ds = build_dataset(
        path, "val", batch_size=batch_size, cache=config["data"]["cache"], **common
    )
    stats = {t: {"mean": float(s["mean"]), "std": float(s["std"])} for t, s in target_stats.items()}
    return train_ds, val_ds, stats, manifest


def train_example_count(config: dict, manifest: dict, targets) -> int:
    """The training examples the train pipeline of `make_datasets` yields per pass: those
    with every target defined (a classifier: every example), after `data.train_limit`
    and `data.train_per_class`."""
    from deeplense_tf.data import count_usable_examples
    from deeplense_tf.data.pipeline import count_classes, limited_count

    data = config["data"]
    class_counts = None
    if config["model"]["head"] == "softmax":
        usable = int(manifest["splits"]["train"]["count"])
        if data["train_per_class"] is not None:
            from deeplense_tf.data.classes import class_index_table, class_names
            from deeplense_tf.data.schema import CLASS_NAMES

            names = class_names(manifest, data["path"])  # the run's labels, as make_datasets's
            table = class_index_table(list(manifest.get("classes") or CLASS_NAMES), names)
            class_counts = count_classes(data["path"], manifest, "train", len(names), table)
    else:
        usable = count_usable_examples(data["path"], manifest, "train", targets)
    return limited_count(usable, class_counts, data["train_limit"], data["train_per_class"])
