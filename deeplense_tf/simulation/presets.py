"""Named simulation presets: instrument, lens and source priors, substructure classes, targets.

A preset is a frozen dataclass; `get_preset(name)` returns one and `Preset.with_classes`
picks which substructure classes it draws. See docs/simulation.md for what each preset
reproduces of the published DeepLense data and where it differs.

Priors are tuples: ("fixed", value), ("uniform", low, high) or ("log10_uniform", low, high)
(the value is 10**U(low, high)). They are drawn in the order listed.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from deeplense_tf.data.schema import CLASS_NAMES
from deeplense_tf.errors import ConfigError

# --- instruments ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Instrument:
    """Detector and observing conditions.

    `band` holds lenstronomy `SingleBand` keyword arguments (pinned here rather than taken
    from lenstronomy's `ObservationConfig`, whose values change between versions) and is
    empty for Model I, which DeepLenseSim simulated with a bare `ImageData`.
    """

    name: str
    num_pix: int
    pixel_scale_arcsec: float
    psf_fwhm_arcsec: float
    psf_truncation: float  # Gaussian kernel cut at this many sigma
    units: str
    band: tuple[tuple[str, object], ...] = ()
    background_rms: float = 0.0  # Model I only: flux units per pixel

    def __post_init__(self):
        band = dict(self.band)
        # lenstronomy builds the grid and PSF of a band from these keys: keep one truth.
        if band and (band.get("pixel_scale") != self.pixel_scale_arcsec
                     or band.get("seeing") != self.psf_fwhm_arcsec):
            raise ValueError(f"instrument {self.name}: band pixel_scale / seeing disagree with "
                             "pixel_scale_arcsec / psf_fwhm_arcsec")

    @property
    def band_kwargs(self) -> dict:
        return dict(self.band)


# Model I: DeepLenseSim `simple_sim` (150 x 150, 0.05"/px, FWHM 0.087", truncation 3).
MODEL_1_INSTRUMENT = Instrument(
    name="deeplense-model-1",
    num_pix=150,
    pixel_scale_arcsec=0.05,
    psf_fwhm_arcsec=0.087,
    psf_truncation=3.0,
    units="photon counts",
    background_rms=0.01,
)

# Euclid VIS as lenstronomy 1.9.2 defined it (the version DeepLense used). lenstronomy 1.14.2
# changed the zero point to 25.72 and the sky to 22.3, so these are pinned.
EUCLID_VIS_2021 = (
    ("read_noise", 4.2),
    ("pixel_scale", 0.101),
    ("ccd_gain", 3.1),
    ("exposure_time", 565.0),
    ("sky_brightness", 22.35),
    ("magnitude_zero_point", 24.0),
    ("num_exposures", 4),
    ("seeing", 0.16),
    ("psf_type", "GAUSSIAN"),
)
MODEL_2_INSTRUMENT = Instrument(
    name="euclid-vis-64",
    num_pix=64,
    pixel_scale_arcsec=0.101,
    psf_fwhm_arcsec=0.16,
    psf_truncation=5.0,
    units="e-/s",
    band=EUCLID_VIS_2021,
)

# HST WFC3/F160W from lenstronomy's ObservationConfig.HST (unchanged up to 1.14.2).
HST_WFC3_F160W = (
    ("read_noise", 4.0),
    ("pixel_scale", 0.08),
    ("ccd_gain", 2.5),
    ("exposure_time", 5400.0),
    ("sky_brightness", 22.3),
    ("magnitude_zero_point", 25.96),
    ("num_exposures", 1),
    ("seeing", 0.08),
    ("psf_type", "GAUSSIAN"),
)
MODEL_3_INSTRUMENT = Instrument(
    name="hst-wfc3-f160w-64",
    num_pix=64,
    pixel_scale_arcsec=0.08,
    psf_fwhm_arcsec=0.08,
    psf_truncation=5.0,
    units="e-/s",
    band=HST_WFC3_F160W,
)

# --- presets ----------------------------------------------------------------------------------

# How the lenstronomy model image becomes the stored image.
IMAGE_MODES = {
    "poisson_counts": "DeepLenseSim Model I: exposure * (model + Gaussian Poisson approx. + "
                      "background), then a Poisson draw; photon counts",
    "doubled": "DeepLenseSim Models II/III: model + model, no noise (the published quirk)",
    "noisy": "model + background and Poisson noise of the instrument (lenstronomy SingleBand)",
    "clean": "the model image alone (flux/s), no noise: the noise-free twin of a noisy preset",
}

DEEPLENSE_NUISANCES = (
    "source_x_arcsec",
    "source_y_arcsec",
    "vortex_angle_rad",
    "vortex_half_length_arcsec",
    "n_subhalos",
    "log10_subhalo_mass_total_msun",
)
AXION_TARGET = "log10_m_axion_ev"
SCALAR = {"kind": "scalar"}

# Computed once here so that importing the presets (and `deeplense simulate --help`) does not
# need astropy; tests check both against `physics`.
# physics.point_mass_einstein_radius(1e12): DeepLenseSim's main-halo Einstein radius (arcsec).
DEEPLENSE_THETA_E_ARCSEC = 1.2814905676172956
# physics.multiplane_deflection_scale(): DeepLenseSim's multi-plane shrink of deflections.
DEEPLENSE_DEFLECTION_SCALE = 0.6334579710123899


@dataclass(frozen=True)
class Preset:
    """Everything that defines a simulated data set except (seed, num).

    `macro` lists the priors of the macro model and the observation, drawn in order:
    theta_e_arcsec (SIE Einstein radius before `deflection_scale`), lens_e1/e2 (SIE
    ellipticity), shear_g1/g2 (external shear), source_x/y_arcsec, source_r_arcsec
    (Sersic half-light radius), source_n_sersic, source_e1/e2, and either source_amp
    (lenstronomy amplitude) or source_magnitude (AB, through the band's zero point), plus
    exposure_s for Model I.
    """

    name: str
    description: str
    instrument: Instrument
    image_mode: str
    macro: tuple[tuple[str, tuple], ...]
    classes: tuple[str, ...]
    targets: tuple[str, ...]
    nuisances: tuple[str, ...]
    target_kinds: dict = field(default_factory=dict)
    exact_symmetries: tuple[str, ...] = ("identity", "rot180")
    # Multiplies every deflection (SIE theta_E, shear; point-mass theta_E**2): 1 for honest
    # single-plane lensing, 0.6335 to emulate DeepLenseSim's multi-plane quirk.
    deflection_scale: float = 1.0
    # Distances in the point-mass Einstein radius of subhalos / vortex points.
    einstein_distances: str = "luminosity"
    cdm_count: int = 25
    cdm_mass_range_msun: tuple[float, float] = (1e6, 1e10)
    cdm_mass_slope: float = -0.9
    cdm_radius_range_arcsec: tuple[float, float] = (0.25, 2.0)
    vortex_mass_msun: float = 3e10
    vortex_points: int = 100
    log10_m_axion_range_ev: tuple[float, float] = (-24.0, -22.0)
    # None: the source is drawn with the rest of the example. An integer k: the source
    # (every `source_*` prior) and the noise are drawn again from their own stream k, so
    # example i is the same lens and substructure as without it, lensing another source:
    # its "source twin" (self-supervised views that change only the source, docs/pretraining.md).
    source_seed: int | None = None

    def __post_init__(self):
        if self.image_mode not in IMAGE_MODES:
            raise ValueError(f"preset {self.name}: image_mode must be one of {list(IMAGE_MODES)}")
        if self.image_mode == "poisson_counts" and self.instrument.band:
            raise ValueError(f"preset {self.name}: poisson_counts needs a Model I instrument")
        if self.image_mode != "poisson_counts" and not self.instrument.band:
            raise ValueError(f"preset {self.name}: {self.image_mode} needs a lenstronomy band")
        parse_classes(self.classes)
        check_source_seed(self.source_seed)
        if set(self.target_kinds) != set(self.targets):
            raise ValueError(f"preset {self.name}: target_kinds must describe every target")

    @property
    def image_shape(self) -> tuple[int, int, int]:
        n = self.instrument.num_pix
        return (n, n, 1)

    @property
    def macro_priors(self) -> dict:
        return dict(self.macro)

    def with_classes(self, classes) -> Preset:
        """This preset drawing `classes` ("mix", one name, or a list of names; None keeps it)."""
        if classes is None:
            return self
        return dataclasses.replace(self, classes=parse_classes(classes))

    def with_source_seed(self, source_seed: int | None) -> Preset:
        """This preset redrawing every source from stream `source_seed` (None: as drawn)."""
        if source_seed == self.source_seed:
            return self
        return dataclasses.replace(self, source_seed=check_source_seed(source_seed))

    @property
    def source_params(self) -> tuple[str, ...]:
        """The macro parameters that describe the source (what a source twin redraws)."""
        return tuple(name for name, _ in self.macro if name.startswith("source_"))


def check_source_seed(source_seed):
    """`source_seed` if None or a non-negative integer; ConfigError otherwise."""
    if source_seed is None:
        return None
    if isinstance(source_seed, bool) or not isinstance(source_seed, int) or source_seed < 0:
        raise ConfigError(f"--source-seed must be a non-negative integer, got {source_seed!r}")
    return int(source_seed)


def parse_classes(classes) -> tuple[str, ...]:
    """"mix" (all three), "no_sub", "cdm", "axion", a comma list, or a sequence of names."""
    if isinstance(classes, str):
        items = [c.strip() for c in classes.split(",") if c.strip()]
    else:
        items = [str(c).strip() for c in classes]
    if items == ["mix"]:
        return tuple(CLASS_NAMES)
    bad = [c for c in items if c not in CLASS_NAMES]
    if bad or not items:
        raise ConfigError(
            f"classes {','.join(items) or '(empty)'!s} is invalid; use 'mix' or names from "
            f"{', '.join(CLASS_NAMES)}"
        )
    if len(set(items)) != len(items):
        raise ConfigError(f"classes {','.join(items)} lists a class twice")
    # Canonical order so `class_id` and the class cycle do not depend on how they were typed.
    return tuple(c for c in CLASS_NAMES if c in items)


def _deeplense_macro(source_light: tuple[str, tuple], extra=()) -> tuple:
    return (
        ("theta_e_arcsec", ("fixed", DEEPLENSE_THETA_E_ARCSEC)),
        ("lens_e1", ("fixed", 0.1)),
        ("lens_e2", ("fixed", 0.0)),
        ("shear_g1", ("fixed", 0.05)),
        ("shear_g2", ("fixed", 0.0)),
        ("source_x_arcsec", ("uniform", -0.35, 0.35)),
        ("source_y_arcsec", ("uniform", -0.35, 0.35)),
        ("source_r_arcsec", ("fixed", 0.25)),
        ("source_n_sersic", ("fixed", 1.0)),
        ("source_e1", ("fixed", -0.1)),
        ("source_e2", ("fixed", 0.1)),
        source_light,
        *extra,
    )




def _build_presets() -> dict[str, Preset]:
    presets = {}
    axion_only = ("axion",)
    presets["deeplense-model-1"] = Preset(
        name="deeplense-model-1",
        description="DeepLense Model I: 150x150, 0.05\"/px, Gaussian PSF 0.087\", Poisson "
                    "photon counts, exposure 10^U(3,3.5) s",
        instrument=MODEL_1_INSTRUMENT,
        image_mode="poisson_counts",
        macro=_deeplense_macro(("source_amp", ("fixed", 20.0)),
                               extra=(("exposure_s", ("log10_uniform", 3.0, 3.5)),)),
        classes=axion_only,
        targets=(AXION_TARGET,),
        nuisances=(*DEEPLENSE_NUISANCES, "exposure_s"),
        target_kinds={AXION_TARGET: SCALAR},
    )
    for model, instrument, label in (
        (2, MODEL_2_INSTRUMENT, "Euclid VIS 64x64, 0.101\"/px, seeing 0.16\""),
        (3, MODEL_3_INSTRUMENT, "HST WFC3/F160W-like 64x64, 0.08\"/px, seeing 0.08\""),
    ):
        common = dict(
            instrument=instrument,
            macro=_deeplense_macro(("source_magnitude", ("fixed", 20.0))),
            classes=axion_only,
            targets=(AXION_TARGET,),
            nuisances=DEEPLENSE_NUISANCES,
            target_kinds={AXION_TARGET: SCALAR},
            deflection_scale=DEEPLENSE_DEFLECTION_SCALE,
        )
        name = f"deeplense-model-{model}"
        presets[name] = Preset(
            name=name,
            description=f"DeepLense Model {'I' * model}: {label}; as published: noise-free "
                        "2x model image in e-/s, deflections x0.63 (ring near 0.8\")",
            image_mode="doubled",
            **common,
        )
        presets[name + "-noisy"] = Preset(
            name=name + "-noisy",
            description=f"DeepLense Model {'I' * model} geometry with the instrument's sky, "
                        "read-out and Poisson noise on one model image (e-/s)",
            image_mode="noisy",
            **common,
        )
    varied_targets = (
        "theta_e_arcsec",
        "lens_e1",
        "lens_e2",
        "shear_g1",
        "shear_g2",
        "source_x_arcsec",
        "source_y_arcsec",
        "source_r_arcsec",
        AXION_TARGET,
    )
    presets["varied-lens-64"] = Preset(
        name="varied-lens-64",
        description="Euclid VIS 64x64 with noise; SIE + shear and Sersic source all drawn "
                    "(isotropic priors, so every D4 element is an exact symmetry); "
                    "single-plane lensing, angular-diameter distances",
        instrument=MODEL_2_INSTRUMENT,
        image_mode="noisy",
        macro=(
            ("theta_e_arcsec", ("uniform", 0.6, 1.6)),
            ("lens_e1", ("uniform", -0.2, 0.2)),
            ("lens_e2", ("uniform", -0.2, 0.2)),
            ("shear_g1", ("uniform", -0.08, 0.08)),
            ("shear_g2", ("uniform", -0.08, 0.08)),
            ("source_x_arcsec", ("uniform", -0.35, 0.35)),
            ("source_y_arcsec", ("uniform", -0.35, 0.35)),
            ("source_r_arcsec", ("uniform", 0.1, 0.4)),
            ("source_n_sersic", ("fixed", 1.0)),
            ("source_e1", ("uniform", -0.2, 0.2)),
            ("source_e2", ("uniform", -0.2, 0.2)),
            ("source_magnitude", ("uniform", 19.5, 20.5)),
        ),
        classes=axion_only,
        targets=varied_targets,
        nuisances=(
            "source_e1",
            "source_e2",
            "source_magnitude",
            "vortex_angle_rad",
            "vortex_half_length_arcsec",
            "n_subhalos",
            "log10_subhalo_mass_total_msun",
        ),
        target_kinds={
            **{name: SCALAR for name in ("theta_e_arcsec", "source_r_arcsec", AXION_TARGET)},
            "lens_e1": {"kind": "spin2", "partner": "lens_e2", "component": 0},
            "lens_e2": {"kind": "spin2", "partner": "lens_e1", "component": 1},
            "shear_g1": {"kind": "spin2", "partner": "shear_g2", "component": 0},
            "shear_g2": {"kind": "spin2", "partner": "shear_g1", "component": 1},
            "source_x_arcsec": {"kind": "vector", "partner": "source_y_arcsec", "component": 0},
            "source_y_arcsec": {"kind": "vector", "partner": "source_x_arcsec", "component": 1},
        },
        exact_symmetries=(
            "identity", "rot90", "rot180", "rot270",
            "flip_x", "flip_x_rot90", "flip_x_rot180", "flip_x_rot270",
        ),
        deflection_scale=1.0,
        einstein_distances="angular",
    )
    # The same lenses without noise: what the network can learn when the instrument adds
    # nothing, so that the noisy preset's errors split into noise and degeneracy.
    presets["varied-lens-64-clean"] = dataclasses.replace(
        presets["varied-lens-64"],
        name="varied-lens-64-clean",
        description="varied-lens-64 without noise (the model image in e-/s): its noise-free twin",
        image_mode="clean",
    )
    return presets


PRESETS: dict[str, Preset] = _build_presets()
PRESET_NAMES: tuple[str, ...] = tuple(PRESETS)
DEFAULT_PRESET = "deeplense-model-2"


def get_preset(name: str, classes=None) -> Preset:
    """The preset called `name` (ConfigError listing the valid names otherwise), drawing
    `classes` if given ("mix", a class name, or a list)."""
    try:
        preset = PRESETS[name]
    except KeyError:
        raise ConfigError(
            f"unknown preset {name!r}; choose from {', '.join(PRESET_NAMES)}"
        ) from None
    return preset.with_classes(classes)
