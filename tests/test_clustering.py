"""Clustering: methods on known blobs, scores against scikit-learn, reductions, feature
extraction from a named layer, the report. Tiny shapes; no training needed."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pytest
from sklearn.datasets import make_blobs

from deeplense_tf.clustering import embedding as emb
from deeplense_tf.clustering import methods, reduce, report, scores
from deeplense_tf.errors import ConfigError, DataError

# ARI on well-separated blobs (cluster_std 0.5, centres ~10 apart) is 1 up to at most a
# point or two; HDBSCAN may call a few edge points noise.
ARI_TOL = 0.02
ARI_TOL_HDBSCAN = 0.05


@pytest.fixture(scope="module")
def blobs():
    x, y = make_blobs(n_samples=180, centers=3, n_features=5, cluster_std=0.5, random_state=3)
    return x, y


@pytest.mark.parametrize("method", ["kmeans", "gmm", "agglomerative"])
def test_methods_recover_blobs_with_given_k(blobs, method):
    from sklearn.metrics import adjusted_rand_score

    x, y = blobs
    result = methods.cluster(x, method, k=3, seed=0)
    assert result.k == 3 and result.selection == "given"
    assert adjusted_rand_score(y, result.labels) >= 1 - ARI_TOL


def test_hdbscan_recovers_blobs_without_k(blobs):
    from sklearn.metrics import adjusted_rand_score

    x, y = blobs
    result = methods.cluster(x, "hdbscan", min_cluster_size=10)
    assert result.k == 3 and result.selection == "density"
    assert adjusted_rand_score(y, result.labels) >= 1 - ARI_TOL_HDBSCAN
    assert result.details["noise_fraction"] < 0.05


def test_gmm_bic_and_kmeans_silhouette_find_the_number_of_blobs():
    x, _ = make_blobs(n_samples=200, centers=4, n_features=3, cluster_std=0.4, random_state=1)
    gmm = methods.cluster(x, "gmm", seed=0, max_k=7)
    assert gmm.selection == "bic" and gmm.k == 4
    assert set(gmm.details["bic"]) == set(range(1, 8))
    assert min(gmm.details["bic"], key=gmm.details["bic"].get) == 4
    km = methods.cluster(x, "kmeans", seed=0, max_k=7)
    assert km.selection == "silhouette" and km.k == 4


def test_clustering_is_deterministic(blobs):
    x, _ = blobs
    a = methods.cluster(x, "gmm", k=3, seed=5).labels
    b = methods.cluster(x, "gmm", k=3, seed=5).labels
    np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"method": "kmeans", "k": 11}, "larger than the number of examples (10)"),
        ({"method": "kmeans", "k": 0}, "at least 1"),
        ({"method": "hdbscan", "k": 3}, "drop --k"),
        ({"method": "spectral"}, "not one of kmeans, gmm, hdbscan, agglomerative"),
    ],
)
def test_bad_clustering_options(kwargs, message):
    x = np.random.default_rng(0).normal(size=(10, 2))
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        methods.cluster(x, **kwargs)


# --- scores -------------------------------------------------------------------------------


def test_internal_scores_equal_sklearn(blobs):
    from sklearn.metrics import calinski_harabasz_score, davies_bouldin_score, silhouette_score

    x, y = blobs
    labels = (y + (np.arange(len(y)) % 7 == 0)) % 3  # imperfect labels: scores not trivial
    got = scores.internal_scores(x, labels)
    assert got["silhouette"] == pytest.approx(silhouette_score(x, labels), rel=1e-12)
    assert got["davies_bouldin"] == pytest.approx(davies_bouldin_score(x, labels), rel=1e-12)
    assert got["calinski_harabasz"] == pytest.approx(calinski_harabasz_score(x, labels), rel=1e-12)


def test_internal_scores_leave_out_noise_and_single_clusters(blobs):
    from sklearn.metrics import silhouette_score

    x, y = blobs
    labels = y.copy()
    labels[:10] = -1
    got = scores.internal_scores(x, labels)
    assert got["silhouette"] == pytest.approx(silhouette_score(x[10:], y[10:]))
    assert np.isnan(scores.internal_scores(x, np.zeros(len(x), int))["silhouette"])


def test_categorical_agreement_equals_sklearn_and_drops_nan_rows():
    from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score

    rng = np.random.default_rng(0)
    truth = rng.integers(0, 3, 60)
    labels = np.where(rng.random(60) < 0.7, truth, rng.integers(0, 4, 60))
    got = scores.categorical_agreement(labels, truth)
    assert got["ari"] == pytest.approx(adjusted_rand_score(truth, labels), rel=1e-12)
    assert got["nmi"] == pytest.approx(normalized_mutual_info_score(truth, labels), rel=1e-12)
    with_nan = truth.astype(float)
    with_nan[:5] = np.nan
    got = scores.categorical_agreement(labels, with_nan)
    assert got["n"] == 55
    assert got["ari"] == pytest.approx(adjusted_rand_score(truth[5:], labels[5:]), rel=1e-12)


def test_continuous_association_equals_sklearn_and_eta2_by_hand():
    from sklearn.feature_selection import mutual_info_classif

    labels = np.array([0, 0, 0, 1, 1, 1, 2, 2, 2, 2, 0, 1])
    values = np.array([1.0, 1.2, 0.8, 3.0, 3.1, 2.9, 5.0, 5.2, 4.8, 5.1, 1.1, 3.2])
    got = scores.continuous_association(labels, values, seed=0)
    expected_mi = mutual_info_classif(values[:, None], labels, discrete_features=False,
                                      n_neighbors=3, random_state=0)[0]
    assert got["mi"] == pytest.approx(expected_mi, rel=1e-12)
    # eta^2 = between-group sum of squares / total sum of squares
    between = sum((labels == c).sum() * (values[labels == c].mean() - values.mean()) ** 2
                  for c in range(3))
    assert got["eta2"] == pytest.approx(between / np.sum((values - values.mean()) ** 2))
    assert got["eta2"] > 0.95
    # A variable independent of the clusters: little MI, little eta^2.
    rng = np.random.default_rng(1)
    lab = rng.integers(0, 3, 400)
    indep = scores.continuous_association(lab, rng.normal(size=400), seed=0)
    assert indep["mi"] < 0.05 and indep["eta2"] < 0.05


def test_probes_measure_linear_content():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(200, 8))
    assert scores.probe_r2(x, x @ rng.normal(size=8), seed=0)["probe_r2"] > 0.99
    assert scores.probe_r2(x, rng.normal(size=200), seed=0)["probe_r2"] < 0.1
    # NaN rows are left out, not imputed
    y = x[:, 0].copy()
    y[:50] = np.nan
    assert scores.probe_r2(x, y, seed=0)["n"] == 150
    truth = (x[:, 0] > 0).astype(int)
    acc = scores.probe_accuracy(x, truth, seed=0)
    assert acc["probe_accuracy"] > 0.95 and acc["chance"] == 0.5
    noise = scores.probe_accuracy(x, rng.integers(0, 2, 200), seed=0)
    assert noise["probe_accuracy"] < 0.65


def test_hidden_variables_kinds():
    @dataclass
    class Fake:
        class_id: np.ndarray
        targets: dict
        nuisance: dict = field(default_factory=dict)
        class_names: tuple = ("no_sub", "cdm", "axion")

    cls = np.array([0, 1, 2, 0, 1, 2])
    data = Fake(
        cls,
        {"log10_m_axion_ev": np.where(cls == 2, np.linspace(-24, -22, 6), np.nan)},
        {"n_subhalos": np.where(cls == 1, 25.0, 0.0), "flat": np.ones(6),
         "all_nan": np.full(6, np.nan), "vortex_angle_rad": np.linspace(0, 6, 6)},
    )
    got = {v.name: v for v in scores.hidden_variables(data)}
    assert set(got) == {"class", "log10_m_axion_ev", "n_subhalos", "vortex_angle_rad"}
    assert got["class"].kind == "categorical" and got["class"].categories[2] == "axion"
    assert got["n_subhalos"].kind == "categorical"
    assert got["log10_m_axion_ev"].kind == "continuous"
    assert got["vortex_angle_rad"].is_angle and not got["log10_m_axion_ev"].is_angle


def test_axial_angle_is_scored_on_doubled_angle():
    """A line at angle a and at a + pi are the same: features that see only the line's
    orientation (cos 2a, sin 2a) must score high, though they cannot predict a itself."""
    rng = np.random.default_rng(0)
    angle = rng.uniform(0, 2 * np.pi, 300)
    feats = np.stack([np.cos(2 * angle), np.sin(2 * angle)], 1) + 0.01 * rng.normal(size=(300, 2))
    var = scores.HiddenVariable("vortex_angle_rad", "continuous", "nuisance", angle)
    labels = (np.mod(angle, np.pi) > np.pi / 2).astype(int)
    row = scores.score_variables(feats, labels, [var], seed=0)[0]
    assert row["probe_r2"] > 0.99
    assert row["scored_on"] == "cos 2a, sin 2a"
    raw = scores.probe_r2(feats, angle, seed=0)["probe_r2"]
    assert raw < 0.2  # a linear probe on the angle itself misses the symmetry
    prof = scores.cluster_profiles(labels, [var])
    # cluster 0 holds orientations in (0, pi/2): axial mean near pi/4
    assert prof[0]["variables"]["vortex_angle_rad"]["mean"] == pytest.approx(np.pi / 4, abs=0.1)


def test_cluster_profiles_and_captures():
    cls = np.array([0] * 10 + [1] * 10 + [2] * 10)
    labels = np.array([0] * 9 + [1] + [1] * 10 + [2] * 10)
    radius = np.where(labels == 2, 2.0, 1.0) + np.linspace(0, 0.01, 30)
    variables = [
        scores.HiddenVariable("class", "categorical", "class", cls, ("no_sub", "cdm", "axion")),
        scores.HiddenVariable("theta_e_arcsec", "continuous", "target", radius),
    ]
    prof = scores.cluster_profiles(labels, variables)
    assert [p["size"] for p in prof] == [9, 11, 10]
    c0 = prof[0]["variables"]["class"]
    assert c0["majority"] == "no_sub" and c0["share"] == 1.0 and c0["lift"] == pytest.approx(3.0)
    assert prof[2]["variables"]["theta_e_arcsec"]["z"] > 1
    captured = report.cluster_captures(prof[2])
    assert captured[0].startswith("class=axion") and "theta_e_arcsec high" in captured[1]


def test_verdict_thresholds():
    # the probe closes (acc - chance) / (1 - chance) of the gap: 10 %, 25 %, 62.5 %
    cat = {"kind": "categorical", "nmi": 0.35, "probe_accuracy": 0.4, "chance": 1 / 3}
    assert report.verdicts(cat) == ("yes", "no")
    cat.update(probe_accuracy=0.5, nmi=0.1)
    assert report.verdicts(cat) == ("partly", "partly")
    cat["probe_accuracy"] = 0.75
    assert report.verdicts(cat)[1] == "yes"
    cont = {"kind": "continuous", "eta2": 0.05, "probe_r2": 0.6}
    assert report.verdicts(cont) == ("no", "yes")
    assert report.verdicts({"kind": "continuous", "eta2": np.nan, "probe_r2": 0.3}) == ("n/a", "partly")


# --- reduction ----------------------------------------------------------------------------


def test_standardize_and_pca():
    rng = np.random.default_rng(0)
    x = np.concatenate([rng.normal(size=(30, 4)) * [1, 10, 100, 1000], np.ones((30, 1))], 1)
    z = reduce.standardize(x)
    assert z.shape == (30, 4)  # the constant column is dropped
    np.testing.assert_allclose(z.std(axis=0), 1.0)
    assert reduce.pca(x, 16, scale=True).shape == (30, 4)  # no more components than features
    assert reduce.pca(x, 16).shape == (30, 5)
    assert reduce.pca(x[:3], 16).shape == (3, 3)


@pytest.mark.parametrize("method", ["pca", "tsne"])
def test_reduce_2d_shape_and_determinism(blobs, method):
    x, _ = blobs
    a = reduce.reduce_2d(x[:40], method, seed=0)
    assert a.shape == (40, 2) and np.isfinite(a).all()
    np.testing.assert_allclose(a, reduce.reduce_2d(x[:40], method, seed=0))


def test_reduce_bad_method_and_missing_umap(blobs):
    with pytest.raises(ConfigError, match="not one of pca, tsne, umap"):
        reduce.reduce_2d(blobs[0], "isomap")
    if "umap" not in reduce.available_reducers():
        with pytest.raises(ConfigError, match=r"deeplense-tf\[umap\]"):
            reduce.reduce_2d(blobs[0], "umap")


# --- extraction ---------------------------------------------------------------------------


def _tiny_model(size=16):
    import keras

    image = keras.Input((size, size, 1), name="image")
    x = keras.layers.Conv2D(4, 3, activation="relu", name="conv")(image)
    x = keras.layers.Dropout(0.5, name="drop")(x)  # must be off during extraction
    feats = keras.layers.GlobalAveragePooling2D(name="pool")(x)
    feats = keras.layers.Identity(name="embedding")(feats)
    seq = keras.layers.Reshape((-1, 4), name="as_sequence")(x)
    out = keras.layers.Dense(2, name="log10_m_axion_ev")(feats)
    aux = keras.layers.Dense(1, name="aux")(keras.layers.GlobalAveragePooling1D(name="p1")(seq))
    return keras.Model(image, {"log10_m_axion_ev": out, "aux": aux}, name="tiny")


@pytest.fixture(scope="module")
def tiny():
    import keras

    keras.utils.set_random_seed(0)
    images = np.random.default_rng(0).random((10, 16, 16, 1)).astype(np.float32)
    return _tiny_model(), images


def test_extraction_shape_determinism_and_batch_invariance(tiny):
    model, images = tiny
    a = emb.extract_features(model, images, batch_size=4, progress=False)
    b = emb.extract_features(model, images, batch_size=4, progress=False)
    c = emb.extract_features(model, images[..., 0], batch_size=10, progress=False)  # [N,H,W]
    assert a.shape == (10, 4) and a.dtype == np.float32
    np.testing.assert_array_equal(a, b)
    np.testing.assert_allclose(a, c, rtol=1e-5, atol=1e-6)


def test_feature_map_layers_are_average_pooled(tiny):
    import keras

    model, images = tiny
    conv = keras.Model(model.inputs[0], model.get_layer("conv").output)(images).numpy()
    pooled = emb.extract_features(model, images, layer="conv", progress=False)
    np.testing.assert_allclose(pooled, conv.mean(axis=(1, 2)), rtol=1e-5, atol=1e-6)
    seq = emb.extract_features(model, images, layer="as_sequence", progress=False)
    np.testing.assert_allclose(seq, conv.mean(axis=(1, 2)), rtol=1e-5, atol=1e-6)
    flat = emb.extract_features(model, images, layer="conv", pooling="flatten", progress=False)
    assert flat.shape == (10, 14 * 14 * 4)
    np.testing.assert_allclose(flat, conv.reshape(10, -1), rtol=1e-5, atol=1e-6)
    mx = emb.extract_features(model, images, layer="conv", pooling="max", progress=False)
    np.testing.assert_allclose(mx, conv.max(axis=(1, 2)), rtol=1e-5, atol=1e-6)


def test_layer_inside_nested_model():
    import keras

    inner_in = keras.Input((8, 8, 1))
    h = keras.layers.Conv2D(3, 3, name="inner_conv")(inner_in)
    encoder = keras.Model(inner_in, keras.layers.GlobalAveragePooling2D()(h), name="encoder")
    image = keras.Input((8, 8, 1), name="image")
    scaled = keras.layers.Rescaling(2.0, name="pre")(image)
    model = keras.Model(image, keras.layers.Dense(1, name="t")(encoder(scaled)))
    x = np.random.default_rng(0).random((5, 8, 8, 1)).astype(np.float32)
    assert "encoder/inner_conv" in emb.layer_names(model)
    got = emb.extract_features(model, x, layer="encoder/inner_conv", progress=False)
    direct = encoder.get_layer("inner_conv")(2.0 * x).numpy().mean(axis=(1, 2))
    np.testing.assert_allclose(got, direct, rtol=1e-5, atol=1e-6)
    # a unique inner name works without its prefix
    np.testing.assert_allclose(
        emb.extract_features(model, x, layer="inner_conv", progress=False), got)


def test_bad_layers_and_images(tiny):
    model, images = tiny
    with pytest.raises(ConfigError, match="no layer 'nope'; valid layer names: image, conv"):
        emb.embedding_model(model, "nope")
    with pytest.raises(ConfigError, match="flattens to 784 features"):
        old = emb.MAX_FLAT_FEATURES
        emb.MAX_FLAT_FEATURES = 100
        try:
            emb.embedding_model(model, "conv", pooling="flatten")
        finally:
            emb.MAX_FLAT_FEATURES = old
    with pytest.raises(ConfigError, match="pooling 'sum'"):
        emb.embedding_model(model, "conv", pooling="sum")
    with pytest.raises(DataError, match=r"do not fit the model, which takes \(16, 16, 1\)"):
        emb.extract_features(model, np.zeros((3, 32, 32, 1), np.float32), progress=False)
    with pytest.raises(DataError, match="non-finite features"):
        bad = images.copy()
        bad[2, 0, 0, 0] = np.nan
        emb.extract_features(model, bad, progress=False)


def test_embeddings_round_trip(tmp_path):
    features = np.arange(12, dtype=np.float32).reshape(4, 3)
    e = emb.Embeddings(features, "embedding", np.array([0, 1, 2, 0]), ("no_sub", "cdm", "axion"),
                       {"log10_m_axion_ev": np.array([np.nan, np.nan, -23.0, np.nan])},
                       {"source_x_arcsec": np.array([0.1, 0.2, 0.3, 0.4])}, "somewhere")
    path = emb.save_embeddings(tmp_path / "e", e)
    assert path.endswith("e.npz")
    back = emb.load_embeddings(path)
    np.testing.assert_array_equal(back.features, features)
    assert back.layer == "embedding" and back.class_names == ("no_sub", "cdm", "axion")
    np.testing.assert_array_equal(back.targets["log10_m_axion_ev"], e.targets["log10_m_axion_ev"])
    np.testing.assert_array_equal(back.nuisance["source_x_arcsec"], e.nuisance["source_x_arcsec"])
    assert back.source == "somewhere"
    (tmp_path / "bad.npz").write_bytes(b"not a zip")
    with pytest.raises(DataError, match="not a readable embeddings"):
        emb.load_embeddings(tmp_path / "bad.npz")


# --- one feature set end to end -----------------------------------------------------------


@pytest.mark.parametrize("space", ["pca", "map"])
def test_analyse_features_on_blobs(blobs, space):
    from deeplense_tf.clustering.pipeline import analyse_features

    x, y = blobs
    variables = [scores.HiddenVariable("class", "categorical", "class", y, ("a", "b", "c")),
                 scores.HiddenVariable("size", "continuous", "target", y + 0.1 * x[:, 0])]
    out = analyse_features(x, variables, method="gmm", reduce="pca", cluster_space=space)
    assert out["k"] == 3 and out["k_selection"] == "bic"
    assert out["map"].shape == (len(x), 2)
    cls, size = out["variables"]
    assert cls["ari"] >= 1 - ARI_TOL and cls["probe_accuracy"] > 0.95
    assert size["eta2"] > 0.9 and size["probe_r2"] > 0.9
    assert out["internal"]["silhouette"] > 0.5


def test_layers_without_one_feature_vector_are_refused():
    import keras

    seq = keras.Input((6, 3), name="image")
    out, h, c = keras.layers.LSTM(4, return_state=True, name="lstm")(seq)
    ids = keras.layers.Discretization(bin_boundaries=[0.0], name="bins")(out)  # int64
    total = keras.layers.Lambda(lambda t: keras.ops.sum(t, axis=-1), name="total")(h)
    model = keras.Model(seq, [out, ids, total])
    with pytest.raises(ConfigError, match="layer 'lstm' has 3 outputs"):
        emb.embedding_model(model, "lstm")
    with pytest.raises(ConfigError, match="not floating-point features"):
        emb.embedding_model(model, "bins")
    with pytest.raises(ConfigError, match=r"shape \(None,\): no feature axis"):
        emb.embedding_model(model, "total")
