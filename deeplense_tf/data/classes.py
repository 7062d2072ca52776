"""Class labels of a data set, for the classifier (`model.head: softmax`).

A record's `class_id` indexes the data set's `manifest["classes"]` (`schema.CLASS_NAMES`
for simulated data); a classifier's labels index *its* class names, the classes its
training data hold (`class_names`). The two differ when the data drew only some classes
(`drawn_classes`), and across data sets, so labels are always matched by name.
"""

from __future__ import annotations

import numpy as np

from deeplense_tf.data.schema import CLASS_NAMES
from deeplense_tf.errors import DataError


def class_names(manifest: dict, source: str = "data") -> tuple[str, ...]:
    """The classes a data set holds, in `manifest["classes"]` order (the `class_id` order).

    A simulated data set lists the classes it drew in `drawn_classes` (a subset of
    `classes`); older manifests and other readers list only `classes`. DataError when
    fewer than two classes remain: there is nothing to tell apart.
    """
    every = list(manifest.get("classes") or CLASS_NAMES)
    drawn = manifest.get("drawn_classes")
    names = [c for c in every if c in drawn] if drawn else every
    if len(names) < 2:
        raise DataError(
            f"{source}: holds the class(es) {', '.join(names) or '(none)'} only; a classifier "
            "needs at least two (simulate with --classes mix)"
        )
    return tuple(names)


def class_index_table(data_classes, run_classes) -> np.ndarray:
    """`table[class_id]`: the index into `run_classes` of the data's class `class_id`
    (`data_classes`: the names `class_id` indexes), -1 for a class the run does not know."""
    run_classes = list(run_classes)
    return np.array([run_classes.index(c) if c in run_classes else -1 for c in data_classes], np.int64)


def labels_for_run(class_id, data_classes, run_classes, source: str = "data") -> np.ndarray:
    """Class ids of a data set (indices into `data_classes`) -> indices into `run_classes`.

    DataError naming the data set when it has no class labels or an example's class is
    not one the run predicts.
    """
    if class_id is None:
        raise DataError(f"{source}: holds no class labels, so there is nothing to compare with")
    class_id = np.asarray(class_id, np.int64).reshape(-1)
    labels = class_index_table(data_classes, run_classes)[class_id]
    if (labels < 0).any():
        unknown = sorted({data_classes[i] for i in class_id[labels < 0]})
        raise DataError(
            f"{source}: holds class(es) {', '.join(unknown)} that the run does not predict "
            f"(it knows {', '.join(run_classes)})"
        )
    return labels
