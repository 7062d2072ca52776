"""`pretrain(config, out_dir)`: self-supervised pretraining of a registry encoder (VICReg).

Unlabelled images (every class of a simulated data set, labels unread) train an encoder
with a projector (`models/projector.py`) so that two lens-safe views of one image
(`data/views.py`: D4 element, PSF blur, detector noise) get the same projection while the
projections stay spread and decorrelated over the batch (`models/vicreg.py`). With
`pretrain.twin_data` the second view is made from the image's source twin (the same lens
and substructure lensing another source, `deeplense simulate --source-seed`). The run
folder is an ordinary one (`runs/layout.py`), marked by run.json's `head: projector`
(`layout.ENCODER_HEAD`), with no targets: `deeplense cluster` reads its `embedding`
layer as it reads a regressor's, and `deeplense train --set training.init_from=RUN` copies
its encoder into a regressor.

The loop is training's one loop (`loop.TrainingLoop`): time budget, early stopping on
`val_loss`, the best-model checkpoint, backups and resume, history, TensorBoard and the
progress bar are the same code. `PretrainLoop` replaces only the objective
(`replica_loss`: two views of the batch through the model, the VICReg loss) and the
validation pass (fixed views, so `val_loss` compares across epochs). The session is
training's too (`session.TrainingSession`) with the resolution of targets, the model and
the pipelines replaced.

The experiment config is training's (`training/config.py`) plus a `pretrain` section
(`PRETRAIN_DEFAULTS`); `load_pretrain_config` validates both.
"""

from __future__ import annotations

import copy
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from deeplense_tf.data.views import VIEW_OPTIONS, check_view_options, make_view
from deeplense_tf.errors import ConfigError, DataError
from deeplense_tf.files import read_yaml, write_json_atomic
from deeplense_tf.models.projector import build_pretrain_model, check_projector
from deeplense_tf.models.vicreg import DEFAULT_WEIGHTS, vicreg_loss, vicreg_terms
from deeplense_tf.runs import layout
from deeplense_tf.runs.run import Run
from deeplense_tf.training import config as config_mod
from deeplense_tf.training.loop import TrainingLoop
from deeplense_tf.training.session import TrainingSession

OBJECTIVES = ("vicreg",)

#: The `pretrain` section of a pretraining config, with its defaults.
PRETRAIN_DEFAULTS = {
    "objective": "vicreg",
    # Hidden and output widths of the projector (the paper's 8192 x 3 is GPU-sized; the
    # variance and covariance terms need the projection wider than the embedding it spreads).
    "projector": [256, 256],
    "invariance_weight": DEFAULT_WEIGHTS["invariance"],
    "variance_weight": DEFAULT_WEIGHTS["variance"],
    "covariance_weight": DEFAULT_WEIGHTS["covariance"],
    "views": dict(VIEW_OPTIONS),
    # A source twin of data.path (`deeplense simulate ... --source-seed K`): the second view
    # of each image is made from its twin, the same lens and substructure lensing another
    # source, so what the two views share is the lens, not the source's position.
    "twin_data": None,
}

# Training keys whose defaults differ for pretraining: the views replace data augmentation,
# and there is no head to calibrate.
_PRETRAIN_BASE = {"data": {"augment": "none"}, "training": {"calibrate_variance": False}}

# Random streams of the views: training batches and validation batches never share a seed.
_TRAIN_STREAM, _VAL_STREAM = 0, 1


# --- the config ---------------------------------------------------------------------------


def _check_section(node, source: str) -> dict:
    """The `pretrain` section with defaults filled in; ConfigError naming the key."""
    if node is None:
        node = {}
    if not isinstance(node, dict):
        raise ConfigError(f"{source}: pretrain is a section; give it a mapping of keys")
    out = copy.deepcopy(PRETRAIN_DEFAULTS)
    for key, value in node.items():
        if key not in PRETRAIN_DEFAULTS:
            raise ConfigError(f"{source}: unknown config key pretrain.{key}; known keys here: "
                              + ", ".join(f"pretrain.{k}" for k in PRETRAIN_DEFAULTS))
        if key == "objective":
            if value not in OBJECTIVES:
                raise ConfigError(f"{source}: pretrain.objective must be one of "
                                  f"{', '.join(OBJECTIVES)}, got {value!r}")
        elif key == "projector":
            value = list(check_projector(value))
        elif key == "views":
            value = check_view_options(value, where=f"{source}: pretrain.views")
        elif key == "twin_data":
            if value is not None and (not isinstance(value, str) or not value.strip()):
                raise ConfigError(f"{source}: pretrain.twin_data must be a data folder or null, "
                                  f"got {value!r}")
        else:
            if isinstance(value, bool) or not isinstance(value, int | float) or not value >= 0:
                raise ConfigError(f"{source}: pretrain.{key} must be a number >= 0, got {value!r}")
            value = float(value)
        out[key] = value
    views_on = any((out["views"]["d4"], out["views"]["blur_sigma_px"], out["views"]["noise_std"]))
    if not views_on and out["twin_data"] is None:
        raise ConfigError(f"{source}: pretrain.views turns every view off, so both views of an "
                          "image are the image and there is nothing to learn")
    return out


def _check_training_keys(config: dict, source: str) -> None:
    """ConfigError for training keys that mean nothing (or something else) here."""
    rules = [
        (config["data"]["targets"] is not None, "data.targets",
         "pretraining reads no targets; leave it null"),
        (config["data"]["augment"] != "none", "data.augment",
         "pretraining makes its own views (pretrain.views); leave it none"),
        (config["data"]["train_limit"] is not None, "data.train_limit",
         "pretraining reads every train image (it needs no labels); simulate fewer instead"),
        (config["data"]["train_per_class"] is not None, "data.train_per_class",
         "pretraining reads no classes"),
        (config["training"]["init_from"] is not None, "training.init_from",
         "pretraining starts from random weights"),
        (config["training"]["mixed_precision"], "training.mixed_precision",
         "is not supported for pretraining"),
        (config["training"]["calibrate_variance"], "training.calibrate_variance",
         "a pretrained encoder has no predicted stds to calibrate"),
        (config["training"]["monitor"] != "val_loss", "training.monitor",
         "pretraining monitors val_loss (the VICReg loss on fixed validation views)"),
    ]
    for bad, key, why in rules:
        if bad:
            raise ConfigError(f"{source}: {key}={config_mod.get_dotted(config, key)!r}: {why}")


def load_pretrain_config(path=None, overrides=None) -> dict:
    """The resolved pretraining config: `load_config`'s sections plus `pretrain`.

    Args:
        path: a YAML file (or packaged preset name), or None for the defaults alone.
        overrides: nested or dotted keys applied last (`{"pretrain.views.noise_std": 0}`).

    Raises:
        ConfigError naming the key (and file) for unknown keys, wrong values, an unsafe
        view option (`data/views.py`) or a training key that pretraining cannot honour.
    """
    source, raw = "config", {}
    if path is not None:
        source = f"config {path}"
        raw = read_yaml(config_mod._resolve_path(path))
    updates = config_mod.expand_dotted(overrides or {})
    section = {}
    for origin in (raw, updates):
        part = origin.pop("pretrain", None)
        if part is not None and not isinstance(part, dict):
            raise ConfigError(f"{source}: pretrain is a section; give it a mapping of keys")
        section = config_mod.deep_update(section, part or {})
    config = config_mod.deep_update(config_mod.DEFAULT_CONFIG, _PRETRAIN_BASE)
    config = config_mod._merge(config, raw, source=source)
    config = config_mod._merge(config, updates, source="override")
    config = config_mod.validate_config(config, source=source)
    _check_training_keys(config, source)
    if config["smoke"]:
        config = config_mod.apply_smoke(config)
    config["pretrain"] = _check_section(section, source)
    return config


# --- the loop -----------------------------------------------------------------------------


class PretrainLoop(TrainingLoop):
    """`TrainingLoop` with the VICReg objective on two views of each batch.

    Everything but the objective and the validation pass is the base class's.
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        section = self.config["pretrain"]
        self.views = dict(section["views"])
        self.weights = {name: section[f"{name}_weight"] for name in DEFAULT_WEIGHTS}

    def _seed(self, stream: int, counter):
        """A stateless seed `[2]`: (config seed, stream) and a counter (step or batch),
        so views are the same on a resumed run and differ between steps and replicas."""
        replica = tf.distribute.get_replica_context()
        replica_id = replica.replica_id_in_sync_group if replica is not None else 0
        first = tf.constant(self.config["seed"] * 2 + stream, tf.int64)
        second = tf.cast(counter, tf.int64) * 1024 + tf.cast(replica_id, tf.int64)
        return tf.stack([first, second])

    def model_inputs(self, images):
        """Source-twin pairs `[B, 2, H, W, C]` as `[2B, H, W, C]`; single images as they are."""
        if images.shape.rank == 5:
            return tf.reshape(images, [-1, *images.shape[2:]])
        return images

    def pair_loss(self, images, seed, training: bool):
        """`(loss, sums)` of two views made from `seed` of `images`: `[B, H, W, C]` (both
        views of each image) or `[B, 2, H, W, C]` (image and source twin, one view each)."""
        count = tf.shape(images)[0]
        seeds = tf.random.experimental.stateless_split(seed, 2)
        if images.shape.rank == 5:
            first, second = images[:, 0], images[:, 1]
        else:
            first = second = images
        first = make_view(first, seeds[0], **self.views)
        second = make_view(second, seeds[1], **self.views)
        projections = self.model(tf.concat([first, second], axis=0), training=training)
        terms = vicreg_terms(projections[:count], projections[count:])
        loss = vicreg_loss(terms, self.weights)
        n = tf.cast(count, tf.float32)
        sums = {"loss": loss * n, "count": n, **{k: v * n for k, v in terms.items()}}
        # The terms are statistics of this replica's batch; the replicas' gradients are
        # summed, so each contributes 1/replicas of its own to make their mean.
        return loss / self.replicas.strategy.num_replicas_in_sync, sums

    def replica_loss(self, images, targets, training: bool):
        return self.pair_loss(images, self._seed(_TRAIN_STREAM, self.optimizer.iterations), training)

    def make_eval_step(self):
        @tf.function(reduce_retracing=True)
        def step(images, index):
            return self.pair_loss(images, self._seed(_VAL_STREAM, index), training=False)[1]

        return step

    def evaluate(self) -> dict:
        """`val_loss` and `val_<term>` on the validation split's fixed views, agreed across
        workers (batch `k` gets the same views every epoch)."""
        if self.eval_step is None:
            self.eval_step = self.make_eval_step()
        totals: dict[str, float] = {}
        for index, (images, _) in enumerate(self.validation_batches()):
            for k, v in self.eval_step(images, tf.constant(index, tf.int64)).items():
                totals[k] = totals.get(k, 0.0) + float(v)
        return self.replicas.agree({f"val_{k}": v for k, v in self._means(totals).items()})

    def _diagnose_nan(self) -> str:
        for images, _ in self.train_ds.take(50):
            if not np.isfinite(images.numpy()).all():
                return f"The training data ({self.config['data']['path']}) contains NaN or infinite pixels."
        return ("Likely causes: the learning rate is too high (lower training.learning_rate or "
                "lengthen training.warmup_epochs), or training.clip_norm is needed.")

    def summary_extras(self, final_val: dict) -> dict:
        section = self.config["pretrain"]
        embedding = self.model.get_layer("embedding").output
        return {"pretrain": {
            "objective": section["objective"],
            "weights": self.weights,
            "views": self.views,
            "twin_data": section["twin_data"],
            "embedding_dim": int(embedding.shape[-1]),
            "projection_dim": int(self.model.outputs[0].shape[-1]),
            "validation": {k[len("val_"):]: final_val[k] for k in sorted(final_val)
                           if k.startswith("val_") and k != "val_loss"},
        }}


# --- the session --------------------------------------------------------------------------


class PretrainSession(TrainingSession):
    """`TrainingSession` with no targets, the pretraining model and an image-only pipeline."""

    def resolve(self):
        from deeplense_tf.data import read_manifest

        config = copy.deepcopy(self.config)
        if not config["data"]["path"]:
            raise ConfigError("data.path is not set (give --data DIR or data.path in the config)")
        config["data"]["path"] = str(Path(config["data"]["path"]).expanduser().resolve())
        manifest = read_manifest(config["data"]["path"])
        twin = config["pretrain"]["twin_data"]
        if twin is not None:
            from deeplense_tf.data.unlabelled import check_twins

            twin = config["pretrain"]["twin_data"] = str(Path(twin).expanduser().resolve())
            check_twins(config["data"]["path"], twin)
        if not manifest["splits"].get("val", {}).get("count"):
            raise DataError(f"{config['data']['path']}: has no val split (needed for val_loss, "
                            "early stopping and the best model)")
        height, width = manifest["image_shape"][:2]
        if config["pretrain"]["views"]["d4"] and height != width:
            raise ConfigError(f"pretrain.views.d4 rotates by 90 degrees, which needs square images "
                              f"({config['data']['path']} has {height}x{width}); set it false")
        self.source = None
        self.config, self.manifest = config, manifest
        self.targets = []
        self.input_shape = tuple(manifest["image_shape"])

    def run_info(self, complete: bool) -> dict:
        return layout.run_info(
            model=self.config["model"]["name"], head=layout.ENCODER_HEAD, targets=[],
            input_shape=self.input_shape, complete=complete,
            objective=self.config["pretrain"]["objective"],
        )

    def build(self) -> PretrainLoop:
        from deeplense_tf.data.unlabelled import image_dataset
        from deeplense_tf.training.model_setup import make_optimizer

        config, t, m = self.config, self.config["training"], self.config["model"]
        keras.utils.set_random_seed(config["seed"])
        self.previous_policy = keras.mixed_precision.global_policy()
        with self.replicas.strategy.scope():
            model = build_pretrain_model(
                m["name"], self.input_shape, projector=config["pretrain"]["projector"],
                normalization=m["normalization"], crop=m["crop"], **m["options"],
            )
        path = config["data"]["path"]
        cache = config["data"]["cache"]
        twin = config["pretrain"]["twin_data"]
        train_ds = image_dataset(path, "train", batch_size=t["batch_size"], shuffle=True,
                                 seed=config["seed"], cache=cache, drop_remainder=True, twin=twin)
        val_ds = image_dataset(path, "val", batch_size=t["batch_size"], cache=cache, twin=twin)
        if self.chief:
            write_json_atomic(self.paths.target_stats, {})  # no targets (the folder's contract)
        usable = int(self.manifest["splits"]["train"]["count"])
        if usable < t["batch_size"]:
            raise DataError(f"{path}: the train split has {usable} images, fewer than "
                            f"training.batch_size {t['batch_size']}")
        self.train_examples = usable
        steps_per_epoch = t["steps_per_epoch"] or usable // t["batch_size"]
        with self.replicas.strategy.scope():
            optimizer = make_optimizer(config, steps_per_epoch, t["epochs"])
            optimizer.build(model.trainable_variables)
        self.loop = PretrainLoop(
            config, self.replicas, model, optimizer, {}, train_ds, val_ds, {}, steps_per_epoch,
            self.out, progress=self.progress, interrupt_after=self.interrupt_after,
            on_epoch=self.on_epoch,
        )
        if self.backup is not None:
            from deeplense_tf.training import resume

            resume.restore(self.loop, self.backup, self.paths.model)
        return self.loop


def pretrain(config: dict, out_dir, *, overwrite: bool = False, progress: bool = True,
             on_epoch=None, _interrupt_after: int | None = None) -> Run:
    """Pretrain the encoder a config describes into the run folder `out_dir`.

    Args:
        config: a pretraining config (`load_pretrain_config(...)`, or a partial dict of
            overrides merged onto its defaults); checked again here.
        out_dir, overwrite, progress, on_epoch, _interrupt_after: as for `training.train`
            (an interrupted run resumes; a finished one is refused unless `overwrite`).

    Returns:
        The finished `Run` (loaded from `out_dir`; `head` is `layout.ENCODER_HEAD`, no
        targets); on a non-chief worker the in-memory result with `path=None`.
    """
    config = load_pretrain_config(overrides=config)
    session = PretrainSession(config, out_dir, overwrite, _interrupt_after, progress, on_epoch)
    session.resolve()
    session.prepare_folder()
    try:
        session.build().fit(session.train_examples)
        result = session.finish()
    finally:
        if hasattr(session, "previous_policy"):
            keras.mixed_precision.set_global_policy(session.previous_policy)
    return Run.load(result.path) if result.path is not None else result
