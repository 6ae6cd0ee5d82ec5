"""The command line's small promises: -h and --version, messages printed as written, info on
exported files, options generated from a stage's schema, init's checks of its answers."""

import numpy as np
import pytest
import torch

from conftest import error_line, run_cli_here as run_cli
from edgeseg.cli_options import schema_fields
from edgeseg.data.classes import CAMVID
from edgeseg.models import create_model, model_config_for, save_model_dir
from edgeseg.models.quant_spec import QuantizeConfig
from edgeseg.pipeline.specs import ExportStage, QuantizeStage, ThresholdStage


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    torch.manual_seed(0)
    model = create_model("basic_encdec", num_classes=CAMVID.num_classes, width=8).eval()
    config = model_config_for(model, CAMVID, (64, 96), history=[{"stage": "train", "data": "synthetic:2"}])
    return save_model_dir(model, config, tmp_path_factory.mktemp("m") / "model")


def test_short_help_and_version():
    assert "Usage" in run_cli("-h", check=True).stdout
    assert "--fraction-mid" in run_cli("threshold", "-h", check=True).stdout
    assert run_cli("--version", check=True).stdout.strip().startswith("edgeseg ")


def test_bracketed_text_is_printed_as_written(model_dir):
    proc = run_cli("eval", str(model_dir), "--data", "synthetic:2", "--device", "cpu", check=True)
    assert "synthetic:2 [val]," in proc.stdout


def test_info_reads_an_exported_file(model_dir, tmp_path):
    run_cli("export", str(model_dir), "--format", "onnx", "--out", str(tmp_path / "m.onnx"), "--check-images", "1",
            check=True)
    proc = run_cli("info", str(tmp_path / "m.onnx"), check=True)
    convs = [m for m in create_model("basic_encdec", CAMVID.num_classes, width=8).modules()
             if isinstance(m, torch.nn.Conv2d)]
    params = sum(c.weight.numel() for c in convs)
    assert f"conv params {params:,}" in proc.stdout and "precision: fp32" in proc.stdout
    assert "Conv " + str(len(convs)) in proc.stdout


def test_stage_flags_come_from_the_schema_with_its_defaults():
    flags = {path[-1]: info for path, info in schema_fields(QuantizeStage, {"quantization": QuantizeConfig})}
    assert {"scheme", "weight_bits", "freeze_ranges", "calibration_batches"} <= set(flags)
    assert "train" not in flags  # a mapping: given as train.KEY=VALUE
    assert {path for path, _ in schema_fields(ThresholdStage, {})} == {
        (name,) for name in ThresholdStage.model_fields if name != "stage"}
    help_text = run_cli("quantize", "-h", check=True).stdout
    assert "--no-freeze-ranges" in help_text and "(default: 20)" in help_text
    assert "(default: 8)" in run_cli("export", "-h", check=True).stdout  # check_images
    assert ExportStage().check_images == 8


def test_stage_settings_as_key_value_and_flags(model_dir, tmp_path):
    run_cli("threshold", str(model_dir), "fraction_low=0.9", "--value-max", "1", "--value-maxratio", "1",
            "--out", str(tmp_path / "t"), check=True)
    from edgeseg.models import load_model_dir

    entry = load_model_dir(tmp_path / "t").config.history[-1]
    assert entry.fraction_low == 0.9 and entry.value_max == 1.0
    line = error_line(run_cli("threshold", str(model_dir), "fraction_lo=0.9", "--out", str(tmp_path / "u")))
    assert "unknown key 'fraction_lo'" in line and "fraction_low" in line


@pytest.mark.parametrize("answers,message", [
    (["--path", "/no/such/folder"], "dataset path /no/such/folder: not found"),
    (["--format", "synthetic", "--path", "8", "--model", "swiftnet", "--crop", "240 330"],
     "needs multiples of its output stride 32 (e.g. 256 352)"),
])
def test_init_checks_its_answers(tmp_path, answers, message):
    line = error_line(run_cli("init", "-o", str(tmp_path / "c.yaml"), "--no-input", *answers))
    assert message in line and not (tmp_path / "c.yaml").exists()


def test_predict_threads_and_warm_up(model_dir, tmp_path):
    from conftest import write_image

    for name in ("a", "b"):
        write_image(tmp_path / "in" / f"{name}.png", np.zeros((64, 96, 3)))
    proc = run_cli("predict", str(model_dir), str(tmp_path / "in"), "--out", str(tmp_path / "p"), "--threads", "1",
                   check=True)
    assert "first image left out as warm-up" in proc.stdout


def test_export_defaults_to_the_size_of_the_datasets_images(model_dir, tmp_path):
    """Not the model's training crop (64x96 here): synthetic images are 240x320."""
    from edgeseg.data.spec import open_dataset
    from edgeseg.predict.predictors import OnnxPredictor

    run_cli("export", str(model_dir), "--out", str(tmp_path / "m.onnx"), "--check-images", "1", check=True)
    image_size = tuple(open_dataset("synthetic:2", "val").read(0)[1].shape)
    assert OnnxPredictor.from_file(tmp_path / "m.onnx").size == image_size != (64, 96)


def test_evaluate_leaves_the_dataset_as_it_was(model_dir):
    from edgeseg.data.spec import open_dataset
    from edgeseg.evaluation import evaluate
    from edgeseg.predict.predictors import load_predictor

    dataset = open_dataset("synthetic:2", "val")
    before = dataset.transform
    evaluate(load_predictor(model_dir), dataset, num_workers=0)
    assert dataset.transform is before


def test_quantize_with_a_training_config_fine_tunes(model_dir, tmp_path):
    (tmp_path / "c.yaml").write_text("data: {spec: 'synthetic:8', num_workers: 0}\naugment: {crop: [64, 96]}\n"
                                     "batch_size: 4\ntensorboard: false\n")
    proc = run_cli("quantize", str(model_dir), "--out", str(tmp_path / "q"), "--train-config", str(tmp_path / "c.yaml"),
                   "train.epochs=1", "--calibration-batches", "2", check=True)
    assert "fine-tuned: best val mIoU" in proc.stdout
    from edgeseg.models import load_model_dir

    history = [entry.stage for entry in load_model_dir(tmp_path / "q").config.history]
    assert history[-2:] == ["quantize", "train"]


def test_export_of_the_current_folder_writes_beside_it(model_dir, tmp_path):
    import shutil

    model = shutil.copytree(model_dir, tmp_path / "best.v2")
    run_cli("export", ".", "--check-images", "1", cwd=model, check=True)
    assert (tmp_path / "best.v2.onnx").is_file()
