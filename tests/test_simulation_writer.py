"""Shard writer and `deeplense simulate`: determinism, resume, manifest, refusals, CLI errors."""

import json
import math
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from deeplense_tf.cli import main
from deeplense_tf.data import schema
from deeplense_tf.errors import ConfigError, DataError
from deeplense_tf.simulation import get_preset, simulate_example, writer
from deeplense_tf.simulation.writer import write_dataset

PRESET = "deeplense-model-2"
NUM = 12


def _read_records(out_dir):
    """{index: (image bytes, class_id, targets, nuisance, split)} of every shard in a folder."""
    import tensorflow as tf

    manifest = json.loads((out_dir / "manifest.json").read_text())
    records = {}
    for split, info in manifest["splits"].items():
        for name in info["shards"]:
            for raw in tf.data.TFRecordDataset(str(out_dir / name)).as_numpy_iterator():
                f = tf.train.Example.FromString(raw).features.feature

                def floats(prefix, names, f=f):
                    return {n: f[prefix + n].float_list.value[0] for n in names}

                index = f["index"].int64_list.value[0]
                assert index not in records
                records[index] = (f["image"].bytes_list.value[0], f["class_id"].int64_list.value[0],
                                  floats(schema.TARGET_PREFIX, manifest["targets"]),
                                  floats(schema.NUISANCE_PREFIX, manifest["nuisances"]), split)
    return manifest, records


def _mtimes(out_dir):
    return {p.name: p.stat().st_mtime_ns for p in out_dir.glob("*.tfrecord")}


@pytest.fixture(scope="module")
def mix_dataset(tmp_path_factory):
    out = tmp_path_factory.mktemp("sim") / "mix"
    manifest = write_dataset(PRESET, NUM, out, seed=3, workers=1, shards=2, classes="mix",
                             progress=False)
    return out, manifest


def test_manifest_holds_every_contract_key(mix_dataset):
    out, manifest = mix_dataset
    on_disk = json.loads((out / "manifest.json").read_text())
    assert on_disk == manifest
    for key in ("format_version", "preset", "seed", "classes", "image_shape", "pixel_scale_arcsec",
                "targets", "nuisances", "target_kinds", "exact_symmetries", "splits",
                "target_stats", "image_stats", "versions", "created"):
        assert key in manifest, key
    assert manifest["preset"] == PRESET and manifest["seed"] == 3
    assert manifest["classes"] == list(schema.CLASS_NAMES)
    assert manifest["drawn_classes"] == ["no_sub", "cdm", "axion"]
    assert manifest["image_shape"] == [64, 64, 1] and manifest["pixel_scale_arcsec"] == 0.101
    assert manifest["targets"] == ["log10_m_axion_ev"]
    assert manifest["target_kinds"] == {"log10_m_axion_ev": {"kind": "scalar"}}
    assert manifest["exact_symmetries"] == ["identity", "rot180"]
    assert set(manifest["exact_symmetries"]) <= set(schema.D4_ELEMENTS)
    assert {s: v["count"] for s, v in manifest["splits"].items()} == {"train": 10, "val": 1,
                                                                        "test": 1}
    assert len(manifest["splits"]["train"]["shards"]) == 2
    assert set(manifest["versions"]) == {"deeplense_tf", "lenstronomy", "tensorflow", "numpy"}
    # Only the contract's files remain: shards, manifest, preview.
    names = sorted(p.name for p in out.iterdir())
    shards = sorted(n for info in manifest["splits"].values() for n in info["shards"])
    assert names == sorted(shards + ["manifest.json", "preview.png"])
    assert (out / "preview.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_manifest_statistics_are_those_of_the_train_split(mix_dataset):
    out, manifest = mix_dataset
    preset = get_preset(PRESET, classes="mix")
    train = [simulate_example(preset, 3, i) for i in range(10)]
    axion = np.array([ex["targets"]["log10_m_axion_ev"] for ex in train])
    axion = axion[np.isfinite(axion)]  # NaN for no_sub and cdm
    stats = manifest["target_stats"]["log10_m_axion_ev"]
    assert stats["mean"] == pytest.approx(axion.mean(), rel=1e-6)
    assert stats["std"] == pytest.approx(axion.std(), rel=1e-5)
    assert stats["min"] == pytest.approx(axion.min(), rel=1e-6)
    assert stats["max"] == pytest.approx(axion.max(), rel=1e-6)
    images = np.stack([ex["image"] for ex in train]).astype(np.float64)
    assert manifest["image_stats"]["mean"] == pytest.approx(images.mean(), rel=1e-6)
    assert manifest["image_stats"]["std"] == pytest.approx(images.std(), rel=1e-5)
    assert manifest["image_stats"]["max_median"] == pytest.approx(
        np.median(images.max(axis=(1, 2, 3))), rel=1e-6)


def test_records_are_the_simulated_examples(mix_dataset):
    out, _ = mix_dataset
    manifest, records = _read_records(out)
    assert sorted(records) == list(range(NUM))
    preset = get_preset(PRESET, classes="mix")
    for index in (0, 4, 10, 11):
        image, class_id, targets, nuisance, split = records[index]
        ex = simulate_example(preset, 3, index)
        assert image == ex["image"].astype("<f4").tobytes()
        assert class_id == ex["class_id"] == index % 3
        assert split == ("train" if index < 10 else "val" if index == 10 else "test")
        for name, value in ex["targets"].items():
            assert (math.isnan(value) and math.isnan(targets[name])) or targets[name] == \
                pytest.approx(value, rel=1e-6)
        assert nuisance["n_subhalos"] == ex["nuisance"]["n_subhalos"]


def test_examples_are_bit_identical_for_any_workers_and_shards(mix_dataset, tmp_path):
    out, _ = mix_dataset
    other = tmp_path / "two-workers"
    write_dataset(PRESET, NUM, other, seed=3, workers=2, shards=3, classes="mix", progress=False)
    manifest, records = _read_records(other)
    assert len(manifest["splits"]["train"]["shards"]) == 3
    _, reference = _read_records(out)
    assert records.keys() == reference.keys()
    for index, record in records.items():
        assert record[0] == reference[index][0], index  # image bytes
        np.testing.assert_equal(record[1:], reference[index][1:])  # NaN == NaN here


def test_interrupted_run_resumes_with_only_the_missing_shards(tmp_path, monkeypatch):
    out = tmp_path / "resume"
    calls = {"n": 0}
    real = writer.simulator.simulate_range

    def interrupted(*args):
        calls["n"] += 1
        if calls["n"] == 5:
            raise KeyboardInterrupt
        return real(*args)

    # Train shards of 2, 3, 3, 2 examples, written 2 at a time: the 5th chunk is the 2nd
    # of shard 2, so shards 0 and 1 are complete and shard 2 is half written.
    monkeypatch.setattr(writer, "_MAX_CHUNK", 2)
    monkeypatch.setattr(writer.simulator, "simulate_range", interrupted)
    with pytest.raises(KeyboardInterrupt):
        write_dataset(PRESET, NUM, out, seed=1, shards=4, progress=False)
    monkeypatch.setattr(writer.simulator, "simulate_range", real)
    assert not (out / "manifest.json").exists()
    assert (out / writer.PLAN_NAME).exists()
    done = _mtimes(out)
    assert sorted(done) == ["train-00000-of-00004.tfrecord", "train-00001-of-00004.tfrecord"]
    assert [p.name for p in out.glob("*.tmp")] == ["train-00002-of-00004.tfrecord.tmp"]

    manifest = write_dataset(PRESET, NUM, out, seed=1, shards=4, progress=False)
    after = _mtimes(out)
    assert {name: after[name] for name in done} == done  # complete shards were not rewritten
    assert len(after) == 6 and not list(out.glob("*.tmp"))
    assert not (out / writer.PLAN_NAME).exists()

    # A shard lost later is rewritten, identical, and nothing else is touched.
    lost = manifest["splits"]["train"]["shards"][3]
    content = (out / lost).read_bytes()
    (out / lost).unlink()
    write_dataset(PRESET, NUM, out, seed=1, shards=4, progress=False)
    again = _mtimes(out)
    assert {n: t for n, t in again.items() if n != lost} == {n: t for n, t in after.items()
                                                            if n != lost}
    assert (out / lost).read_bytes() == content


def test_complete_folder_is_left_alone_and_other_data_sets_are_refused(mix_dataset, tmp_path):
    out, manifest = mix_dataset
    before = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    assert write_dataset(PRESET, NUM, out, seed=3, shards=2, classes="mix",
                         progress=False) == manifest
    for kwargs, word in ((dict(seed=4), "seed"), (dict(num=NUM + 1), "num"),
                         (dict(preset="deeplense-model-3"), "preset"),
                         (dict(classes="axion"), "drawn_classes"),
                         (dict(preset=get_preset(PRESET).with_source_seed(1)), "source_seed")):
        args = dict(preset=PRESET, num=NUM, out_dir=out, seed=3, shards=2, classes="mix",
                    progress=False)
        args.update(kwargs)
        with pytest.raises(DataError, match=word):
            write_dataset(**args)
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir()} == before

    # A source twin is refused in the original's folder and the original in the twin's.
    twin = tmp_path / "twin"
    twin_preset = get_preset(PRESET).with_source_seed(2)
    twin_manifest = write_dataset(twin_preset, NUM, twin, seed=3, shards=2, classes="mix",
                                  progress=False)
    assert twin_manifest["source_seed"] == 2 and "source_seed" not in manifest
    with pytest.raises(DataError, match="source_seed=2, asked for source_seed=None"):
        write_dataset(PRESET, NUM, twin, seed=3, shards=2, classes="mix", progress=False)

    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    with pytest.raises(DataError, match="not empty"):
        write_dataset(PRESET, 4, foreign, progress=False)
    assert sorted(p.name for p in foreign.iterdir()) == ["notes.txt"]


@pytest.mark.parametrize("kwargs, message", [
    (dict(num=0), "--num"),
    (dict(num=-3), "--num"),
    (dict(val_fraction=1.5), "--val"),
    (dict(test_fraction=-0.1), "--test"),
    (dict(val_fraction=0.5, test_fraction=0.5), "no training"),
    (dict(num=2, val_fraction=0.4, test_fraction=0.4), "no train"),
    (dict(workers=0), "--workers"),
    (dict(shards=0), "--shards"),
    (dict(seed=-1), "--seed"),
    (dict(classes="wdm"), "classes"),
])
def test_bad_arguments_are_config_errors_and_write_nothing(tmp_path, kwargs, message):
    args = dict(preset=PRESET, num=4, out_dir=tmp_path / "never", progress=False)
    args.update(kwargs)
    with pytest.raises(ConfigError, match=message):
        write_dataset(**args)
    assert not (tmp_path / "never").exists()


@pytest.mark.parametrize("argv, message", [
    (["--preset", "deeplense-model-7"], "deeplense-model-7"),
    (["--num", "0"], "--num"),
    (["--val", "1.2"], "--val"),
    (["--val", "0.6", "--test", "0.5"], "no training"),
    (["--classes", "wdm"], "wdm"),
    (["--workers", "0"], "--workers"),
])
def test_cli_bad_input_is_one_line(tmp_path, capsys, argv, message):
    base = {"--preset": PRESET, "--num": "4", "--out": str(tmp_path / "never")}
    for flag, value in zip(argv[::2], argv[1::2]):
        base[flag] = value
    code = main(["simulate", *[x for kv in base.items() for x in kv]])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 1 and len(err) == 1 and message in err[0], err
    assert not (tmp_path / "never").exists()


def test_cli_writes_a_data_set_and_prints_its_paths(tmp_path, capsys):
    out = tmp_path / "cli"
    code = main(["simulate", "--preset", "varied-lens-64", "--num", "6", "--out", str(out),
                 "--workers", "1", "--classes", "mix", "--val", "0.2", "--test", "0",
                 "--no-progress"])
    assert code == 0
    printed = capsys.readouterr().out.split()
    assert str(out / "manifest.json") in printed and str(out / "preview.png") in printed
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["splits"]["test"] == {"count": 0, "shards": []}
    assert manifest["exact_symmetries"] == list(schema.D4_ELEMENTS)
    assert manifest["target_kinds"]["shear_g2"] == {"kind": "spin2", "partner": "shear_g1",
                                                    "component": 1}
    assert all(str(out / s) in printed for s in manifest["splits"]["train"]["shards"])


def test_simulator_imports_no_tensorflow():
    # Worker processes import only these (lenstronomy never imports TensorFlow); TensorFlow
    # there would cost each worker seconds and memory, e.g. if a package __init__ pulled it in.
    code = ("import sys\n"
            "import deeplense_tf.simulation, deeplense_tf.simulation.simulator\n"
            "assert 'tensorflow' not in sys.modules, 'tensorflow imported'\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr


def test_plan_shards_cover_every_index_once():
    counts = writer.split_counts(103, 0.1, 0.2)
    assert counts == {"train": 72, "val": 10, "test": 21}
    plans = writer.plan_shards(counts, 5)
    covered = [i for p in plans for i in range(p.start, p.stop)]
    assert covered == list(range(103))
    assert [p.split for p in plans].count("train") == 5
    assert all(p.stop > p.start for p in plans)


def _children(pid: int) -> list[int]:
    """Process ids whose parent is `pid` (Linux /proc)."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = open(f"/proc/{entry}/stat").read()
            except OSError:
                continue
            if int(stat.rpartition(")")[2].split()[1]) == pid:
                found.append(int(entry))
    return found


def _running(pid: int) -> bool:
    """True while `pid` exists and is not a zombie (a dead child nobody has reaped yet)."""
    try:
        return open(f"/proc/{pid}/stat").read().rpartition(")")[2].split()[0] != "Z"
    except OSError:
        return False


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_workers_die_with_a_killed_parent(tmp_path):
    out = tmp_path / "data"
    parent = subprocess.Popen(
        [sys.executable, "-m", "deeplense_tf", "simulate", "--preset", "deeplense-model-2",
         "--num", "4000", "--workers", "2", "--no-progress", "--out", str(out)],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )
    try:
        deadline = time.monotonic() + 240
        # Workers exist and results are coming back (a shard is being written).
        while len(_children(parent.pid)) < 2 or not list(out.glob("*.tmp")):
            assert parent.poll() is None, parent.stderr.read()
            assert time.monotonic() < deadline, "the workers never started"
            time.sleep(0.05)
        workers = _children(parent.pid)
        os.kill(parent.pid, signal.SIGKILL)
        parent.wait()
        deadline = time.monotonic() + 5
        while any(_running(pid) for pid in workers) and time.monotonic() < deadline:
            time.sleep(0.05)
        alive = [pid for pid in workers if _running(pid)]
    finally:
        parent.kill()
        parent.wait()
    for pid in alive:  # do not leave them behind even when the test fails
        os.kill(pid, signal.SIGKILL)
    assert not alive, f"worker processes {alive} outlived their killed parent by 5 s"


# --- sliced simulation: N tasks + merge-data == one run (issue 19) -------------------------

SLICE_ARGS = ["--preset", PRESET, "--num", "30", "--seed", "5", "--shards", "4", "--workers", "1",
              "--classes", "mix"]


def _nan_safe(records):
    """`_read_records` values with floats as their repr, so NaN (undefined) equals NaN."""
    return {i: (image, class_id, {k: repr(v) for k, v in targets.items()},
                {k: repr(v) for k, v in nuisance.items()}, split)
            for i, (image, class_id, targets, nuisance, split) in records.items()}


def _file_hashes(paths):
    import hashlib

    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in paths}


@pytest.fixture(scope="module")
def sliced_and_single(tmp_path_factory):
    root = tmp_path_factory.mktemp("sliced")
    single, sliced = root / "single", root / "sliced"
    assert main(["simulate", *SLICE_ARGS, "--no-progress", "--out", str(single)]) == 0
    # Three task processes at once, as three machines would run them on shared storage.
    tasks = [subprocess.Popen([sys.executable, "-m", "deeplense_tf", "simulate", *SLICE_ARGS,
                               "--no-progress", "--out", str(sliced), "--task-index", str(i),
                               "--num-tasks", "3"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True)
             for i in range(3)]
    outputs = [task.communicate(timeout=600) for task in tasks]
    for task, (_, err) in zip(tasks, outputs):
        assert task.returncode == 0, err
    return single, sliced, outputs


def test_three_tasks_and_merge_equal_one_run(sliced_and_single, capsys):
    single, sliced, outputs = sliced_and_single
    # Each task wrote a disjoint slice of the single run's shards, byte for byte.
    single_manifest = json.loads((single / "manifest.json").read_text())
    all_shards = [n for info in single_manifest["splits"].values() for n in info["shards"]]
    assert len(all_shards) == 6  # 4 train + 1 val + 1 test: 2 per task
    task_files = sorted(sliced.glob("task-*-of-00003/*.tfrecord"))
    assert sorted(p.name for p in task_files) == sorted(all_shards)
    assert _file_hashes(task_files) == _file_hashes(single / n for n in all_shards)
    assert not (sliced / "manifest.json").exists()  # not a data set until merged
    assert "deeplense merge-data" in outputs[0][1]

    assert main(["merge-data", str(sliced)]) == 0
    printed = capsys.readouterr().out
    assert str(sliced / "manifest.json") in printed
    merged, records = _read_records(sliced)
    expected_manifest, expected = _read_records(single)
    assert _nan_safe(records) == _nan_safe(expected)  # every image, label, nuisance, split
    # The shards were not copied: the manifest points into the task folders.
    assert not list(sliced.glob("*.tfrecord"))
    assert merged["splits"]["train"]["shards"][1] == "task-00001-of-00003/train-00001-of-00004.tfrecord"
    assert merged["tasks"] == {"num_tasks": 3, "folders": [f"task-0000{i}-of-00003" for i in range(3)]}
    differ = {"splits", "created", "tasks"}
    assert {k: v for k, v in merged.items() if k not in differ} == \
        {k: v for k, v in expected_manifest.items() if k not in differ}
    assert (sliced / "preview.png").stat().st_size > 10_000


def test_merged_set_reads_through_the_readers_and_tf_data(sliced_and_single):
    from deeplense_tf.data import build_dataset, load_examples

    single, sliced, _ = sliced_and_single
    for split in ("train", "test"):
        a, b = load_examples(str(sliced), split=split), load_examples(str(single), split=split)
        np.testing.assert_array_equal(a.images, b.images)
        np.testing.assert_array_equal(a.class_id, b.class_id)
    train = load_examples(str(single), split="train")
    axion = int(np.isfinite(train.targets["log10_m_axion_ev"]).sum())  # the others have no mass
    batches = list(build_dataset(str(sliced), "train", targets=["log10_m_axion_ev"], batch_size=64))
    assert axion > 0 and sum(int(images.shape[0]) for images, _ in batches) == axion


def test_merge_refuses_missing_unfinished_and_foreign_tasks(sliced_and_single, tmp_path):
    import shutil

    _, sliced, _ = sliced_and_single
    partial = tmp_path / "partial"
    partial.mkdir()
    for i in (0, 2):
        shutil.copytree(sliced / f"task-0000{i}-of-00003", partial / f"task-0000{i}-of-00003")
    with pytest.raises(DataError, match="task-00001-of-00003 of 3 are missing"):
        writer.merge_tasks(partial)
    shutil.copytree(sliced / "task-00001-of-00003", partial / "task-00001-of-00003")
    (partial / "task-00001-of-00003" / "task.json").unlink()  # killed before it finished
    with pytest.raises(DataError, match="task-00001-of-00003 have not finished"):
        writer.merge_tasks(partial)
    shutil.rmtree(partial / "task-00001-of-00003")
    # A task of another seed does not belong to this data set.
    assert main(["simulate", *SLICE_ARGS[:4], "--seed", "6", *SLICE_ARGS[6:], "--no-progress",
                 "--out", str(partial), "--task-index", "1", "--num-tasks", "3"]) == 0
    with pytest.raises(DataError, match="sliced another data set"):
        writer.merge_tasks(partial)
    with pytest.raises(DataError, match="no task folders"):
        writer.merge_tasks(tmp_path / "partial" / "task-00000-of-00003")


@pytest.mark.parametrize("argv, message", [
    (["--task-index", "0"], "go together"),
    (["--task-index", "3", "--num-tasks", "3"], "must be in 0..2"),
    (["--task-index", "0", "--num-tasks", "7"], "more than the data set's 6 shards"),
])
def test_bad_task_arguments_are_one_line(tmp_path, capsys, argv, message):
    assert main(["simulate", *SLICE_ARGS, "--out", str(tmp_path / "x"), *argv]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0]
    assert not (tmp_path / "x").exists()


def test_the_indexed_job_runs_every_task_of_one_data_set():
    """deploy/simulate-indexed-job.yaml: N pods, pod I runs task I of N with valid arguments."""
    import shlex
    from pathlib import Path

    import yaml

    from deeplense_tf.cli import build_parser

    deploy = Path(__file__).parent.parent / "deploy"
    job = yaml.safe_load((deploy / "simulate-indexed-job.yaml").read_text())
    spec = job["spec"]
    assert job["kind"] == "Job" and spec["completionMode"] == "Indexed"
    [container] = spec["template"]["spec"]["containers"]
    command = shlex.split(container["args"][0].replace('"$JOB_COMPLETION_INDEX"', "7"))
    assert command[:2] == ["exec", "deeplense"]
    args = build_parser("simulate").parse_args(command[2:])
    assert args.task_index == 7 and args.num_tasks == spec["completions"]
    # Enough shards for every task (the writer refuses more tasks than shards).
    plans = writer.plan_shards(writer.split_counts(args.num, args.val, args.test), args.shards)
    assert len(plans) >= args.num_tasks
    merge = yaml.safe_load((deploy / "merge-job.yaml").read_text())
    [merger] = merge["spec"]["template"]["spec"]["containers"]
    assert merger["args"][:2] == ["merge-data", args.out]
    claims = {v["persistentVolumeClaim"]["claimName"]
              for j in (job, merge) for v in j["spec"]["template"]["spec"]["volumes"]}
    pvc = yaml.safe_load((deploy / "data-pvc.yaml").read_text())
    assert claims == {pvc["metadata"]["name"]} and pvc["spec"]["accessModes"] == ["ReadWriteMany"]
