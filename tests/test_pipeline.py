"""edgeseg run: the staged pipeline, its report, resuming a killed run, and recipe errors."""

import json
import re
import signal
import subprocess
import sys
import time

import pytest
import torch
import yaml

from conftest import ROOT, error_line, run_cli
from edgeseg.errors import ConfigError
from edgeseg.models import load_model_dir
from edgeseg.pipeline import load_recipe, run_pipeline
from edgeseg.pipeline.runner import stage_settings

TINY_RECIPE = {
    "name": "tiny",
    "train": {"data": {"spec": "synthetic:16", "num_workers": 0}, "model": {"name": "basic_encdec", "args": {"width": 8}},
              "augment": {"crop": [96, 128]}, "epochs": 2, "batch_size": 4, "eval_every": 2, "tensorboard": False},
    "report": {"latency_runs": 2},
    "stages": {
        "dense": {"stage": "train"},
        "l1": {"train": {"epochs": 6, "optimizer": {"weight_decay": 0.01}}},
        "threshold": {"fraction_low": 0.5, "fraction_mid": 0.8, "value_max": 1.0, "value_maxratio": 1.0,
                      "per_channel": True},
        "sparse": {"train": {"epochs": 2, "optimizer": {"lr": 3e-4}}},
        "fold": {"stage": "fold-bn", "check_images": 2},
    },
}


def write_recipe(tmp_path, recipe=TINY_RECIPE, **changes):
    recipe = {**recipe, **changes, "out_dir": str(tmp_path / "pipeline")}
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe, sort_keys=False))
    return path


def test_killed_pipeline_resumes_and_reports_every_stage(tmp_path):
    """A real process is killed inside the second stage's training; running the recipe again
    skips the finished stage, resumes the interrupted one and completes the report."""
    recipe = write_recipe(tmp_path)
    out = tmp_path / "pipeline"
    proc = subprocess.Popen([sys.executable, "-m", "edgeseg", "run", str(recipe)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    checkpoint = out / "stages" / "02-l1" / "run" / "last" / "state.json"
    deadline = time.time() + 300
    while not checkpoint.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    first_metrics = out / "stages" / "01-dense" / "metrics.json"
    assert first_metrics.is_file() and not (out / "stages" / "02-l1" / "metrics.json").exists()
    first_written = first_metrics.stat().st_mtime_ns

    done = run_cli("run", str(recipe), check=True)
    assert "stage 01-dense: done before, skipped" in done.stdout
    assert "resuming" in done.stdout
    assert first_metrics.stat().st_mtime_ns == first_written
    report = json.loads((out / "report.json").read_text())
    stages = {s["stage"]: s for s in report["stages"]}
    assert list(stages) == ["01-dense", "02-l1", "03-threshold", "04-sparse", "05-fold"]
    assert stages["02-l1"]["kind"] == "l1" and len((out / "stages/02-l1/run/metrics.csv").read_text().splitlines()) == 7

    # the numbers are the models' own: recompute two of them independently
    sparse_model = load_model_dir(out / "stages" / "04-sparse" / "model").model
    convs = [m.weight for m in sparse_model.modules() if isinstance(m, torch.nn.Conv2d)]
    zeros = sum(int((w == 0).sum()) for w in convs)
    assert stages["04-sparse"]["zero_weights"] == zeros
    assert stages["04-sparse"]["sparsity"] == pytest.approx(zeros / sum(w.numel() for w in convs))
    # thresholding made zeros, sparse fine-tuning kept exactly those, folding lost none
    assert stages["03-threshold"]["sparsity"] > 0.3
    assert stages["04-sparse"]["zero_weights"] == stages["03-threshold"]["zero_weights"]
    assert stages["05-fold"]["zero_weights"] >= stages["04-sparse"]["zero_weights"]
    assert stages["03-threshold"]["effective_macs"] < stages["03-threshold"]["macs"]
    assert stages["05-fold"]["params"] < stages["04-sparse"]["params"]
    assert abs(stages["05-fold"]["miou"] - stages["04-sparse"]["miou"]) < 0.01
    fold = json.loads((out / "stages" / "05-fold" / "metrics.json").read_text())
    assert fold["max_abs_diff"] < 1e-4
    for prev, row in zip(report["stages"], report["stages"][1:]):
        assert row["delta_prev"]["miou"] == pytest.approx(row["miou"] - prev["miou"])
        assert row["delta_first"]["latency_ms"] == pytest.approx(row["latency_ms"] - report["stages"][0]["latency_ms"])
    markdown = (out / "report.md").read_text()
    assert all(f"| {name} |" in markdown for name in stages)
    for row in report["stages"][1:]:  # the class check judged every later stage against the dense one
        fell = [c for c, iou in row["per_class_iou"].items()
                if iou is not None and stages["01-dense"]["per_class_iou"][c] - iou > report["max_class_drop"]]
        assert sorted(row["class_drops"]) == sorted(fell)
        assert f"- {row['stage']}: " in markdown.split("Class check:")[1]
    links = re.findall(r"!\[[^\]]+\]\(([^)]+)\)", markdown)  # each stage's pictures, relative to report.md
    assert "stages/02-l1/run/curves.png" in links and "stages/05-fold/confusion.png" in links
    assert all((out / link).is_file() for link in links)

    again = run_cli("run", str(recipe), check=True)
    assert again.stdout.count("done before, skipped") == 5

    # a pipeline that starts from a model directory resumes too (its start row is skipped)
    onward = tmp_path / "onward.yaml"
    onward.write_text(yaml.safe_dump({**TINY_RECIPE, "out_dir": str(tmp_path / "onward"),
                                      "start": str(out / "stages" / "05-fold" / "model"),
                                      "stages": {"cut": {"stage": "threshold", **TINY_RECIPE["stages"]["threshold"]}}}))
    lines = []
    for _ in range(2):
        report = run_pipeline(*load_recipe(onward), "test", log=lines.append)
    assert [row["stage"] for row in report["stages"]] == ["00-start", "01-cut"]
    assert sum("done before, skipped" in line for line in lines) == 2


def test_recipe_mistakes_fail_before_any_work(tmp_path):
    out = tmp_path / "pipeline"
    cases = [
        ({"stages": {**TINY_RECIPE["stages"], "prune": {"stage": "thresold"}}},
         "stages.prune: unknown stage 'thresold' (did you mean 'threshold'?"),
        ({"stages": {**TINY_RECIPE["stages"], "prune": {"keep": 0}}}, "stages.prune: bad value for 'keep'"),
        ({"stages": {**TINY_RECIPE["stages"], "quantize": {"quantization": {"sheme": "float"}}}},
         "stages.quantize: unknown key 'quantization.sheme' (did you mean 'scheme'?)"),
        ({"stages": {**TINY_RECIPE["stages"], "quantize": {"train": {"epoch": 2}}}},
         "stages.quantize.train: unknown key 'epoch' (did you mean 'epochs'?)"),
        ({"stages": {**TINY_RECIPE["stages"], "export": {"format": "tflite"}}}, "stages.export: bad value for 'format'"),
        ({"stages": {"dense": {"stage": "train", "train": {"optimiser": {}}}}},
         "stages.dense.train: unknown key 'optimiser' (did you mean 'optimizer'?)"),
        ({"stages": {"threshold": {"fraction_mid": 0.8, "per_chanel": True}}},
         "stages.threshold: unknown key 'per_chanel' (did you mean 'per_channel'?)"),
        ({"stages": {"threshold": {"fraction_mid": 0.8}}},
         "stages.threshold: a 'threshold' stage needs a model; begin with a training stage or set 'start: MODEL_DIR'"),
        ({"stagse": {}}, "unknown key 'stagse' (did you mean 'stages'?)"),
    ]
    for changes, message in cases:
        recipe = write_recipe(tmp_path, **changes)
        if "stagse" in changes:
            data = yaml.safe_load(recipe.read_text())
            del data["stages"]
            recipe.write_text(yaml.safe_dump(data))
        with pytest.raises(ConfigError, match=re.escape(message)):
            load_recipe(recipe)
    proc = run_cli("run", str(write_recipe(tmp_path)), "stages.dense.train.epochs=0")
    assert "stages.dense.train: bad value for 'epochs'" in error_line(proc)
    assert not out.exists()

    # a stage that ran with other settings is not silently mixed with this recipe's
    path = write_recipe(tmp_path)
    earlier, earlier_stages = load_recipe(path, ["train.epochs=3"])
    stage_dir = out / "stages" / "01-dense"
    stage_dir.mkdir(parents=True)
    (stage_dir / "spec.json").write_text(json.dumps(stage_settings(earlier, "dense", earlier_stages["dense"], stage_dir)))
    (stage_dir / "metrics.json").write_text("{}")  # it ran: a stage that failed before any work is just redone
    recipe, stages = load_recipe(path)
    with pytest.raises(ConfigError, match="01-dense: this stage ran with other settings \\(changed: train.epochs\\)"):
        run_pipeline(recipe, stages)
    assert sorted(p.name for p in out.rglob("*")) == ["01-dense", "metrics.json", "spec.json", "stages"]


def test_a_stage_distils_from_the_model_an_earlier_stage_handed_on(tmp_path):
    def recipe_with(teacher, export_first=False):
        stages = {"dense": {"stage": "train", "train": {"epochs": 1}}}
        if export_first:
            stages["onnx"] = {"stage": "export"}
        stages["slim"] = {"stage": "l1", "train": {"epochs": 1, "distill": {"teacher": teacher, "temperature": 2.0}}}
        return write_recipe(tmp_path, stages=stages)

    unknown = "names no earlier stage that hands on a model (earlier: dense)"
    for teacher, export_first in [("stage:slim", False), ("stage:densse", False), ("stage:onnx", True)]:
        with pytest.raises(ConfigError, match=re.escape(f"stages.slim.train.distill.teacher: '{teacher}' {unknown}")):
            load_recipe(recipe_with(teacher, export_first))
    path = recipe_with("stage:dense")
    dense_model = tmp_path / "pipeline" / "stages" / "01-dense" / "model"
    assert load_recipe(path)[1]["slim"].train["distill"]["teacher"] == str(dense_model)
    run_cli("run", str(path), check=True)
    trained = yaml.safe_load((tmp_path / "pipeline" / "stages" / "02-slim" / "run" / "config.yaml").read_text())
    assert trained["distill"] == {"teacher": str(dense_model), "temperature": 2.0, "weight": 1.0}
    assert dense_model.is_dir()


@pytest.mark.parametrize("path", sorted((ROOT / "recipes").glob("*.yaml")), ids=lambda p: p.name)
def test_shipped_recipes_validate(path):
    recipe, stages = load_recipe(path)
    assert list(stages)[0] in recipe.stages and recipe.name == path.stem


def test_pipeline_under_torchrun_trains_on_every_process(tmp_path):
    """torchrun with 2 CPU processes: the training stages run DDP (half the steps per epoch),
    threshold and fold-bn run once on rank 0, and rank 0 alone reports."""
    recipe = dict(TINY_RECIPE, stages={"dense": {"stage": "train"},
                                       "threshold": {"fraction_mid": 0.5, "value_max": 1.0, "value_maxratio": 1.0},
                                       "sparse": {"train": {"epochs": 1}}, "fold": {"stage": "fold-bn",
                                                                                    "check_images": 1}})
    path = write_recipe(tmp_path, recipe)
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "edgeseg",
         "run", str(path)], capture_output=True, text=True, timeout=600,
        env={**__import__("os").environ, "OMP_NUM_THREADS": "1", "CI": "1"})
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    out = tmp_path / "pipeline"
    assert proc.stdout.count("pipeline directory:") == 1 and proc.stdout.count("stage 02-threshold: started") == 1
    rows = (out / "stages" / "01-dense" / "run" / "metrics.csv").read_text().splitlines()
    assert rows[-1].split(",")[:2] == ["2", "4"]  # epoch 2 ends at step 4: 16 images / 2 ranks / batch 4
    report = json.loads((out / "report.json").read_text())
    assert [s["stage"] for s in report["stages"]] == ["01-dense", "02-threshold", "03-sparse", "04-fold"]
    assert report["stages"][2]["zero_weights"] == report["stages"][1]["zero_weights"]


def test_a_recipe_on_a_held_out_drive_checks_calibrates_and_reports_on_its_images(tmp_path):
    """A dataset mapping (here holding one clip out) reaches every stage, not only training:
    fold-bn checks on real images, quantization calibrates on the pooled training images, the
    report scores the held-out clip, and each model directory records the mapping."""
    from test_groups import grouped_folder

    from edgeseg.api import evaluate
    from edgeseg.data.spec import open_dataset

    root = grouped_folder(tmp_path / "d")
    spec = {"format": "folder", "root": str(root), "group_by": "^(clip\\w)_", "holdout_group": "clipa"}
    train = {**TINY_RECIPE["train"], "data": {"spec": spec, "num_workers": 0}, "augment": {"crop": [32, 48]},
             "epochs": 1, "eval_every": 1, "batch_size": 2}
    recipe = write_recipe(tmp_path, train=train, stages={
        "dense": {"stage": "train"}, "fold": {"stage": "fold-bn", "check_images": 2},
        "int8": {"stage": "quantize", "quantization": {"calibration_batches": 3}}})
    lines = []
    report = run_pipeline(*load_recipe(recipe), "test", log=lines.append)
    out = tmp_path / "pipeline" / "stages"
    assert load_model_dir(out / "01-dense" / "model").config.trained_on() == spec
    assert any("fold-bn" in line and "2 images" in line for line in lines), lines
    assert json.loads((out / "03-int8" / "metrics.json").read_text())["calibration_images"] == 3
    held_out = open_dataset(spec, "val")
    assert len(held_out) == 3 and all(s.name.startswith("clipa_") for s in held_out.samples)
    dense = report["stages"][0]
    assert dense["stage"] == "01-dense"
    assert dense["miou"] == pytest.approx(evaluate(out / "01-dense" / "model", spec, "val")["miou"])
