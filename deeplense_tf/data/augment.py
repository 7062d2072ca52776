"""The dihedral group D4 acting on images, positions and spin-2 quantities.

Conventions (the one place they are defined; `schema.D4_ELEMENTS` lists the names):

- Images are arrays `[..., H, W, C]` indexed `[row, col]` with row <-> y and col <-> x,
  both increasing with the index (lenstronomy's pixel grid), centred on the lens. A
  position is `(x, y)` relative to the image centre, in any unit (arcsec, pixels).
- `rotK` rotates the sky counter-clockwise by K degrees in the (x, y) plane:
  `rot90` maps (x, y) -> (-y, x). `flip_x` is the mirror x -> -x. `flip_x_rotK` is
  `flip_x` first, then `rotK` (so `flip_x_rot180` is the mirror y -> -y and
  `flip_x_rot270` swaps x and y).
- A transformed image is I'(p) = I(g^-1 p): whatever sat at position p now sits at g p,
  so a bright spot at (x, y) moves to `transform_vector(x, y, g)`.
- Spin-2 pairs (ellipticity e1, e2; shear gamma1, gamma2) follow e1 + i e2 ->
  e^{2 i theta} (e1 + i e2) under a rotation by theta and e2 -> -e2 under a mirror.
  Under D4 every such map is a sign change of each component.

Every function here accepts numpy arrays or tf tensors (eagerly, in `Dataset.map` and
in `tf.function`) and returns the same kind. Vector and spin-2 maps are signed
permutations applied with `where`, never a matrix product, so a NaN in one component
(a target undefined for a class) does not leak into the other.
"""

from __future__ import annotations

import numpy as np

from deeplense_tf.data.schema import D4_ELEMENTS
from deeplense_tf.errors import DataError

AUGMENT_MODES = ("none", "exact", "d4")

# Image action of each element as (transpose H<->W, reverse rows, reverse cols), applied in
# that order. Derived from I'(p) = I(g^-1 p) with row <-> y, col <-> x; the tests check
# it against `transform_vector` with a bright spot.
_IMAGE_OPS = {
    "identity": (False, False, False),
    "rot90": (True, False, True),
    "rot180": (False, True, True),
    "rot270": (True, True, False),
    "flip_x": (False, False, True),
    "flip_x_rot90": (True, True, True),
    "flip_x_rot180": (False, True, False),
    "flip_x_rot270": (True, False, False),
}

# 2x2 integer matrices acting on column vectors (x, y).
_VECTOR_MATRICES = {
    "identity": ((1, 0), (0, 1)),
    "rot90": ((0, -1), (1, 0)),
    "rot180": ((-1, 0), (0, -1)),
    "rot270": ((0, 1), (-1, 0)),
    "flip_x": ((-1, 0), (0, 1)),
    "flip_x_rot90": ((0, -1), (-1, 0)),
    "flip_x_rot180": ((1, 0), (0, -1)),
    "flip_x_rot270": ((0, 1), (1, 0)),
}


def _check_name(name: str) -> str:
    if name not in _IMAGE_OPS:
        raise ValueError(f"unknown D4 element {name!r}; choose from {', '.join(D4_ELEMENTS)}")
    return name


def element_index(name: str) -> int:
    """Position of `name` in `schema.D4_ELEMENTS` (the integer ids used in tensors)."""
    return D4_ELEMENTS.index(_check_name(name))


def vector_matrix(name: str) -> np.ndarray:
    """The 2x2 integer matrix of `name` acting on position vectors (x, y)."""
    return np.array(_VECTOR_MATRICES[_check_name(name)], dtype=np.int64)


def _rotation_quarter_turns(name: str) -> tuple[int, bool]:
    """(k, mirrored) with the element equal to rot(90 k) after an optional flip_x."""
    mirrored = name.startswith("flip_x")
    rest = name[len("flip_x") :].lstrip("_") if mirrored else name
    k = {"identity": 0, "": 0, "rot90": 1, "rot180": 2, "rot270": 3}[rest]
    return k, mirrored


def spin2_matrix(name: str) -> np.ndarray:
    """The 2x2 matrix of `name` acting on spin-2 pairs (e1, e2); diagonal with +-1 for D4."""
    k, mirrored = _rotation_quarter_turns(_check_name(name))
    angle = 2 * k * np.pi / 2  # e^{2 i theta} with theta = k * 90 degrees
    rotation = np.rint([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    mirror = np.diag([1, -1]) if mirrored else np.eye(2)
    return (rotation @ mirror).astype(np.int64)


def _name_of_vector_matrix(matrix: np.ndarray) -> str:
    for name, candidate in _VECTOR_MATRICES.items():
        if np.array_equal(np.asarray(candidate), matrix):
            return name
    raise AssertionError(f"not a D4 matrix: {matrix}")  # pragma: no cover - group is closed


def compose(g: str, h: str) -> str:
    """The element `g . h`: apply `h` first, then `g`."""
    return _name_of_vector_matrix(vector_matrix(g) @ vector_matrix(h))


def inverse(name: str) -> str:
    """The element undoing `name`."""
    return _name_of_vector_matrix(vector_matrix(name).T)  # orthogonal: inverse = transpose


# Signed-permutation form of each map, stacked in D4_ELEMENTS order for per-example
# gathers: out0 = s0 * (in1 if swap else in0), out1 = s1 * (in0 if swap else in1).
def _signed_permutation(matrix) -> tuple[bool, int, int]:
    matrix = np.asarray(matrix)
    swap = matrix[0, 0] == 0
    return (
        bool(swap),
        int(matrix[0, 1] if swap else matrix[0, 0]),
        int(matrix[1, 0] if swap else matrix[1, 1]),
    )


_VECTOR_TABLE = np.array(
    [_signed_permutation(vector_matrix(name)) for name in D4_ELEMENTS], dtype=np.int64
)
_SPIN2_TABLE = np.array(
    [_signed_permutation(spin2_matrix(name)) for name in D4_ELEMENTS], dtype=np.int64
)
_IMAGE_TABLE = np.array([_IMAGE_OPS[name] for name in D4_ELEMENTS], dtype=bool)


def _is_tensor(x) -> bool:
    import tensorflow as tf

    return isinstance(x, tf.Tensor | tf.Variable)


# --- single element (a Python name) -------------------------------------------------------


def transform_image(images, name: str):
    """Apply `name` to images `[..., H, W, C]` (numpy or tf); rotations need H == W."""
    transpose, reverse_rows, reverse_cols = _IMAGE_OPS[_check_name(name)]
    if _is_tensor(images):
        import tensorflow as tf

        rank = images.shape.rank
        if rank is None or rank < 3:
            raise ValueError(f"images must be [..., H, W, C], got rank {rank}")
        out = images
        if transpose:
            perm = list(range(rank))
            perm[-3], perm[-2] = perm[-2], perm[-3]
            out = tf.transpose(out, perm)
        axes = [a for a, flag in ((rank - 3, reverse_rows), (rank - 2, reverse_cols)) if flag]
        return tf.reverse(out, axes) if axes else out
    out = np.asarray(images)
    if out.ndim < 3:
        raise ValueError(f"images must be [..., H, W, C], got shape {out.shape}")
    if transpose:
        out = np.swapaxes(out, -3, -2)
    if reverse_rows:
        out = np.flip(out, axis=-3)
    if reverse_cols:
        out = np.flip(out, axis=-2)
    return np.ascontiguousarray(out)


def _apply_signed_permutation(a, b, swap, s0, s1):
    if _is_tensor(a) or _is_tensor(b):
        import tensorflow as tf

        a, b = tf.convert_to_tensor(a), tf.convert_to_tensor(b)
        s0, s1 = tf.cast(s0, a.dtype), tf.cast(s1, a.dtype)
        return s0 * tf.where(swap, b, a), s1 * tf.where(swap, a, b)
    a, b = np.asarray(a), np.asarray(b)
    return (s0 * np.where(swap, b, a)).astype(a.dtype), (s1 * np.where(swap, a, b)).astype(b.dtype)


def transform_vector(x, y, name: str):
    """Position (x, y) -> g (x, y), for arrays or tensors of any matching shape."""
    swap, s0, s1 = _VECTOR_TABLE[element_index(name)]
    return _apply_signed_permutation(x, y, bool(swap), s0, s1)


def transform_spin2(e1, e2, name: str):
    """Spin-2 pair (e1, e2) -> its value after `name`, for arrays or tensors."""
    swap, s0, s1 = _SPIN2_TABLE[element_index(name)]
    return _apply_signed_permutation(e1, e2, bool(swap), s0, s1)


def d4_images(batch) -> list:
    """The batch `[B, H, W, C]` under each element, in `schema.D4_ELEMENTS` order.

    For test-time augmentation: predict on each, map vector / spin-2 predictions back
    with `inverse_transform_targets(preds, name, target_kinds)`, then average. Scalar
    targets can be averaged directly.
    """
    return [transform_image(batch, name) for name in D4_ELEMENTS]


# --- targets ------------------------------------------------------------------------------


def _present_pairs(targets, target_kinds: dict) -> list[tuple[str, str, str]]:
    """The vector / spin-2 pairs of `target_kinds` present in `targets`.

    A lone component is a DataError: its transformed value depends on the missing partner.
    """
    pairs = []
    for kind, first, second in target_pairs(target_kinds):
        if first not in targets and second not in targets:
            continue
        if first not in targets or second not in targets:
            missing = second if first in targets else first
            raise DataError(f"cannot transform {kind} target without its partner {missing!r}")
        pairs.append((kind, first, second))
    return pairs


def target_pairs(target_kinds: dict) -> list[tuple[str, str, str]]:
    """[(kind, component-0 name, component-1 name)] for every vector / spin-2 pair.

    Raises DataError when a pair is inconsistent (missing partner, both component 0, ...).
    """
    pairs = []
    for name, info in sorted(target_kinds.items()):
        kind = info.get("kind", "scalar")
        if kind == "scalar":
            continue
        if kind not in ("vector", "spin2"):
            raise DataError(
                f"target {name!r} has unknown kind {kind!r}; use scalar, vector or spin2"
            )
        partner = info.get("partner")
        component = info.get("component")
        other = target_kinds.get(partner, {})
        if (
            component not in (0, 1)
            or other.get("kind") != kind
            or other.get("partner") != name
            or other.get("component") != 1 - component
        ):
            raise DataError(
                f"target {name!r}: kind {kind!r} needs a partner with the same kind and the "
                f"other component (got partner {partner!r}, component {component!r})"
            )
        if component == 0:
            pairs.append((kind, name, partner))
    return pairs


def transform_targets(targets: dict, name: str, target_kinds: dict) -> dict:
    """Targets {name: value} after `name` acts on the image; scalars are unchanged.

    A pair is transformed only when both its components are present; a lone component
    is an error (its new value depends on the missing partner).
    """
    out = dict(targets)
    for kind, first, second in _present_pairs(targets, target_kinds):
        fn = transform_vector if kind == "vector" else transform_spin2
        out[first], out[second] = fn(targets[first], targets[second], name)
    return out


def inverse_transform_targets(targets: dict, name: str, target_kinds: dict) -> dict:
    """Map targets predicted on an image transformed by `name` back to the original frame."""
    return transform_targets(targets, inverse(name), target_kinds)


# --- per-example random elements inside tf.data ---------------------------------------------


def swaps_axes(name: str) -> bool:
    """True for the elements that transpose the pixel grid (need square images)."""
    return _IMAGE_OPS[_check_name(name)][0]


def allowed_elements(augment: str, exact_symmetries=None) -> tuple[str, ...]:
    """The D4 elements a pipeline draws from for `augment` in AUGMENT_MODES."""
    if augment == "none":
        return ("identity",)
    if augment == "d4":
        return D4_ELEMENTS
    if augment == "exact":
        names = set(exact_symmetries or ()) | {"identity"}
        unknown = sorted(names - set(D4_ELEMENTS))
        if unknown:
            raise DataError(
                f"exact_symmetries lists unknown D4 elements {unknown}; valid: {', '.join(D4_ELEMENTS)}"
            )
        return tuple(n for n in D4_ELEMENTS if n in names)
    raise ValueError(f"unknown augment {augment!r}; choose from {', '.join(AUGMENT_MODES)}")


def transform_images_by_id(images, ids):
    """Apply element `D4_ELEMENTS[ids[b]]` to each image `b` of a tf batch `[B, H, W, C]`."""
    import tensorflow as tf

    ops = tf.gather(tf.constant(_IMAGE_TABLE), tf.cast(ids, tf.int32))  # [B, 3]

    def pick(flag, new, old):
        return tf.where(tf.reshape(flag, [-1, 1, 1, 1]), new, old)

    out = images
    if images.shape[1] == images.shape[2] and images.shape[1] is not None:
        out = pick(ops[:, 0], tf.transpose(out, [0, 2, 1, 3]), out)
    else:
        # A non-square image cannot transpose in place; only flips and rot180 are allowed.
        tf.debugging.assert_equal(
            tf.reduce_any(ops[:, 0]),
            False,
            message="90-degree rotations need square images",
        )
    out = pick(ops[:, 1], tf.reverse(out, [1]), out)
    return pick(ops[:, 2], tf.reverse(out, [2]), out)


def transform_targets_by_id(targets: dict, ids, target_kinds: dict) -> dict:
    """Per-example version of `transform_targets` for tf tensors `[B]` (or `[B, 1]`)."""
    import tensorflow as tf

    ids = tf.cast(ids, tf.int32)
    out = dict(targets)
    for kind, first, second in _present_pairs(targets, target_kinds):
        table = tf.gather(tf.constant(_VECTOR_TABLE if kind == "vector" else _SPIN2_TABLE), ids)
        a, b = targets[first], targets[second]
        shape = tf.concat([tf.shape(ids), tf.ones([tf.rank(a) - 1], tf.int32)], 0)
        swap = tf.reshape(table[:, 0] == 1, shape)
        s0 = tf.reshape(tf.cast(table[:, 1], a.dtype), shape)
        s1 = tf.reshape(tf.cast(table[:, 2], a.dtype), shape)
        out[first], out[second] = s0 * tf.where(swap, b, a), s1 * tf.where(swap, a, b)
    return out


def random_element_ids(batch_size, allowed: tuple[str, ...], seed):
    """`[B]` int32 ids drawn uniformly from `allowed`; `seed` is a stateless seed `[2]`."""
    import tensorflow as tf

    choices = tf.constant([element_index(n) for n in allowed], tf.int32)
    pick = tf.random.stateless_uniform(
        [batch_size], seed=seed, minval=0, maxval=len(allowed), dtype=tf.int32
    )
    return tf.gather(choices, pick)


def augment_batch(images, targets: dict, ids, target_kinds: dict):
    """Images `[B, H, W, C]` and targets `{name: [B]}` both transformed by per-example ids."""
    return transform_images_by_id(images, ids), transform_targets_by_id(targets, ids, target_kinds)
