"""The workflow notebooks: stored clean, and each one runs top to bottom at a small size.

Every notebook's first code cell is tagged `parameters`; the tests replace it with the
small values below (the same names, so no full-size default leaks into a test run) and
execute the notebook with nbclient in a fresh kernel of this interpreter, failing on any
error. The notebooks share one work folder in the order 1 -> 6, as a user would run them:
notebook 1 simulates the data set, 2 trains the run that 4 and 5 reuse. Each notebook
also makes what it needs itself, so any one of them runs on its own (slower).
"""

from __future__ import annotations

import ast
import json
import os
import sys
import time
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")

REPO = Path(__file__).resolve().parents[1]
NOTEBOOK_DIR = REPO / "notebooks"
NOTEBOOKS = (
    "01_simulate_and_explore.ipynb",
    "02_train_regressor.ipynb",
    "03_tune_with_kerastuner.ipynb",
    "04_cluster_features.ipynb",
    "05_export_and_serve.ipynb",
    "06_classes_covariance_pretraining.ipynb",
)
CELL_TIMEOUT_S = 600

# 60 images: 48 train (16 with an axion mass, two smoke batches), 6 val, 6 test.
COMMON = {"PRESET": "deeplense-model-2", "NUM_IMAGES": 60, "WORKERS": 1, "SEED": 0}
SMALL = {
    "01_simulate_and_explore.ipynb": {"EXAMPLES_PER_CLASS": 2, "MASSES": 3},
    "02_train_regressor.ipynb": {"CONFIG": "smoke", "FIT_EPOCHS": 2, "SHARED_LENSES": 6},
    "03_tune_with_kerastuner.ipynb": {"MAX_TRIALS": 2, "EPOCHS": 2, "SMOKE": True},
    "04_cluster_features.ipynb": {
        "CONFIG": "smoke", "CLUSTER_SPLIT": "train", "LIMIT": None, "REDUCE": "pca",
        "METHOD": "kmeans",
    },
    "05_export_and_serve.ipynb": {
        "CONFIG": "smoke", "TFLITE_VARIANTS": "fp32,fp16,dynamic_int8,int8",
        "LATENCY_REPEATS": 3, "FINETUNE_BATCH": 4, "FINETUNE_STEPS": 3, "SHIFT_IMAGES": 6,
    },
    "06_classes_covariance_pretraining.ipynb": {
        "CONFIG": "smoke", "VARIED_IMAGES": 40, "CLUSTER_SPLIT": "train",
    },
}
# What each notebook must leave in the work folder (relative paths, glob patterns).
PRODUCES = {
    "01_simulate_and_explore.ipynb": ["data/*/manifest.json", "data/*/preview.png"],
    "02_train_regressor.ipynb": [
        "keras_fit/best.keras", "keras_fit/history.csv", "keras_fit/evaluation/metrics.json",
        "runs/*/run.json", "runs/*/model.keras", "runs/*/evaluation/metrics.json",
        "runs/*/population/population.png",
    ],
    "03_tune_with_kerastuner.ipynb": ["tuning/search/trial_*/trial.json", "tuning/best_config.yaml"],
    "04_cluster_features.ipynb": ["clusters/*/scores.csv", "clusters/*/report.md",
                                  "clusters/*/plots/map_trained.png"],
    "05_export_and_serve.ipynb": [
        "export/*/deeplense/1/saved_model.pb", "export/*/deeplense/1/export.json",
        "export/*/deeplense/1/tflite/model_int8.tflite",
        "export/*/deeplense/1/tflite/model_on_device.tflite",
    ],
    "06_classes_covariance_pretraining.ipynb": [
        "runs/classifier-*/eval/plots/reliability.png", "runs/full-covariance-*/eval/plots/corner.png",
        "runs/vicreg-*/run.json", "clusters/vicreg-*/scores.csv",
    ],
}


def read(name: str):
    return nbformat.read(NOTEBOOK_DIR / name, as_version=4)


def parameters_cell(nb):
    code = [cell for cell in nb.cells if cell.cell_type == "code"]
    assert code, "notebook has no code cell"
    return code[0]


def assigned_names(source: str) -> set[str]:
    names = set()
    for node in ast.parse(source).body:
        assert isinstance(node, ast.Assign), f"parameters cell may hold only assignments: {ast.dump(node)[:80]}"
        names.update(t.id for t in node.targets if isinstance(t, ast.Name))
    return names


def small_parameters(name: str, work_dir: Path) -> dict:
    return {"WORK_DIR": str(work_dir), **COMMON, **SMALL[name]}


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_notebook_is_stored_clean(name):
    """Valid nbformat, no outputs or execution counts, first code cell tagged `parameters`
    and assigning exactly the names the run test sets (so none keeps its full-size value)."""
    nb = read(name)
    nbformat.validate(nb)
    for cell in nb.cells:
        if cell.cell_type == "code":
            assert cell.outputs == [], f"{name}: a code cell has stored outputs"
            assert cell.execution_count is None, f"{name}: a code cell has an execution count"
    cell = parameters_cell(nb)
    assert "parameters" in cell.metadata.get("tags", []), f"{name}: first code cell not tagged"
    assert assigned_names(cell.source) == set(small_parameters(name, Path("."))), (
        f"{name}: the parameters cell and the test's small values name different parameters"
    )
    assert nb.cells[0].cell_type == "markdown" and nb.cells[0].source.startswith("# "), (
        f"{name}: should open with a title"
    )


def test_readme_describes_every_notebook():
    text = (NOTEBOOK_DIR / "README.md").read_text()
    for name in NOTEBOOKS:
        assert name in text, f"notebooks/README.md does not mention {name}"


@pytest.fixture(scope="module")
def work_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("notebook-work")


def kernel_env() -> dict:
    """The test's environment for the kernel, with the working tree importable and
    TensorFlow quiet; the kernel draws figures with its own inline backend."""
    env = dict(os.environ)
    env.pop("MPLBACKEND", None)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    env.setdefault("CUDA_VISIBLE_DEVICES", "")
    return env


def execute(name: str, work_dir: Path, cwd: Path):
    """Run notebook `name` with the small parameters; returns the executed notebook."""
    nb = read(name)
    values = small_parameters(name, work_dir)
    parameters_cell(nb).source = "\n".join(f"{k} = {v!r}" for k, v in values.items())
    # "python3" resolves to this interpreter: jupyter_client replaces a kernelspec's bare
    # `python` with sys.executable, so the kernel sees this venv's packages.
    client = nbclient.NotebookClient(
        nb, kernel_name="python3", timeout=CELL_TIMEOUT_S, startup_timeout=180, allow_errors=False,
        resources={"metadata": {"path": str(cwd)}},
    )
    client.execute(env=kernel_env())
    return nb


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_notebook_runs(name, work_dir, tmp_path, capsys):
    start = time.perf_counter()
    try:
        nb = execute(name, work_dir, tmp_path)
    except nbclient.exceptions.CellExecutionError as err:
        pytest.fail(f"{name} failed:\n{str(err)[-3000:]}", pytrace=False)
    seconds = time.perf_counter() - start

    for pattern in PRODUCES[name]:
        assert list(work_dir.glob(pattern)), f"{name} did not write {pattern} in {work_dir}"
    # The notebook wrote below WORK_DIR only, not into its working directory.
    assert not list(tmp_path.iterdir()), f"{name} wrote into its cwd: {list(tmp_path.iterdir())}"
    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs
              if o.output_type == "error"]
    assert not errors
    images = sum(1 for c in nb.cells if c.cell_type == "code" for o in c.outputs
                 if "image/png" in o.get("data", {}))
    assert images >= 1, f"{name} drew no figure"
    with capsys.disabled():
        print(f"\n{name}: {seconds:.1f} s, {images} figures", file=sys.stderr)


def test_kernel_is_this_interpreter(tmp_path):
    """The `python3` kernel the notebooks run in is the test's own interpreter (the venv)."""
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("import sys; print(sys.executable)")])
    client = nbclient.NotebookClient(nb, kernel_name="python3", timeout=120,
                                     resources={"metadata": {"path": str(tmp_path)}})
    client.execute(env=kernel_env())
    printed = nb.cells[0].outputs[0]["text"].strip()
    assert os.path.realpath(printed) == os.path.realpath(sys.executable)


def test_manifest_of_notebook_data_is_shared(work_dir):
    """Notebooks 2-6 reused notebook 1's data set instead of simulating their own (notebook
    6's second data set, another preset, lives in `data-varied/`)."""
    manifests = list(work_dir.glob("data/*/manifest.json"))
    if not manifests:
        pytest.skip("the notebook run tests did not run")
    assert len(manifests) == 1, [str(m.parent.name) for m in manifests]
    assert json.loads(manifests[0].read_text())["num"] == COMMON["NUM_IMAGES"]
