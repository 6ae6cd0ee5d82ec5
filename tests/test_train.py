"""Training engine: schedules, config overrides, pickle-free checkpoints, resume, CLI."""

import math
from pathlib import Path

import pytest
import torch
from PIL import Image

from conftest import error_line, run_cli, run_cli_here
from edgeseg.errors import ConfigError
from edgeseg.models import load_model_dir
from edgeseg.training.checkpoint import load_training_state, save_training_state
from edgeseg.training.config import ScheduleSection, apply_overrides, load_train_config
from edgeseg.training.loop import read_metrics_csv, train
from edgeseg.training.schedules import lr_factor

TINY = ["data.spec=synthetic:8", "augment.crop=[64,96]", "batch_size=4", "model.args={width: 4}",
        "data.num_workers=0", "seed=3", "deterministic=true"]


def test_schedules():
    f = lambda name, step, **kw: lr_factor(ScheduleSection(name=name, **kw), step, 10, 9)
    assert f("poly", 0) == 1.0 and f("poly", 45, power=1.0) == pytest.approx(0.5) and f("poly", 90) == 0.0
    assert f("cosine", 45) == pytest.approx(0.5)
    assert [f("step", s, step_size=3) for s in (29, 30, 60)] == pytest.approx([1.0, 0.1, 0.01])
    assert [f("multistep", s, milestones=[2, 5]) for s in (19, 20, 50)] == pytest.approx([1.0, 0.1, 0.01])
    assert [f("3-step-decay", s) for s in (29, 30, 60, 80)] == pytest.approx([1.0, 0.1, 0.01, 0.001])
    assert [f("2-step-decay", s) for s in (44, 45, 80)] == pytest.approx([1.0, 0.1, 0.01])
    assert f("constant", 5, warmup_epochs=1.0, warmup_start=0.0) == pytest.approx(0.5)


def test_overrides_and_config_errors(tmp_path):
    data = apply_overrides({"optimizer": {"lr": 0.1}}, ["optimizer.lr=1e-4", "model.args={width: 8}", "epochs=2"])
    assert data == {"optimizer": {"lr": 1e-4}, "model": {"args": {"width": 8}}, "epochs": 2}
    with pytest.raises(ConfigError, match="expected KEY=VALUE"):
        apply_overrides({}, ["epochs"])
    with pytest.raises(ConfigError, match=r"unknown key 'optimizer.lrr' \(did you mean 'lr'\?\)"):
        load_train_config(None, ["optimizer.lrr=0.1"])
    (tmp_path / "c.yaml").write_text("epoch: 3\n")
    with pytest.raises(ConfigError, match=r"c\.yaml: unknown key 'epoch' \(did you mean 'epochs'\?\)"):
        load_train_config(tmp_path / "c.yaml")


@pytest.mark.parametrize("name", ["sgd", "adam"])
def test_checkpoint_round_trip_continues_bit_exactly(name, tmp_path):
    def make():
        torch.manual_seed(0)
        model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4))
        opt = (torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-3) if name == "sgd"
               else torch.optim.Adam(model.parameters(), lr=0.01, weight_decay=1e-3))
        return model, opt

    batches = torch.randn(5, 2, 3, 6, 6, generator=torch.Generator().manual_seed(1))

    def step(model, opt, index):
        loss = model(batches[index]).square().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()

    model, opt = make()
    for index in range(3):
        step(model, opt, index)
    save_training_state(tmp_path / "last", model, opt, {"epoch": 1, "step": 3, "best_miou": 0.5})
    step(model, opt, 3)
    copy, copy_opt = make()
    assert load_training_state(tmp_path / "last", copy, copy_opt) == {"epoch": 1, "step": 3, "best_miou": 0.5}
    step(copy, copy_opt, 3)
    for a, b in zip(model.state_dict().values(), copy.state_dict().values()):
        assert torch.equal(a, b)


@pytest.mark.parametrize("options", [[], ["weight_average=0.9"]], ids=["plain", "weight-average"])
def test_killed_run_resumes_to_the_same_result(options, tmp_path):
    """A real process is killed once its first checkpoint exists, then resumed."""
    import signal
    import subprocess
    import sys
    import time

    args = [*TINY, *options, "epochs=4", f"runs_dir={tmp_path}"]
    run_cli("train", *args, "name=full", check=True)  # same process settings as the killed run
    run_dir = tmp_path / "killed"
    proc = subprocess.Popen([sys.executable, "-m", "edgeseg", "train", *args, "name=killed"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while not (run_dir / "last" / "state.json").exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done = len(read_metrics_csv(run_dir / "metrics.csv"))
    assert 1 <= done < 4, "the kill should land before the run finished"
    proc = run_cli("train", "--resume", str(run_dir), check=True)
    assert f"resuming {run_dir} after epoch" in proc.stdout
    full_dir = tmp_path / "full"
    rows_full, rows_resumed = read_metrics_csv(full_dir / "metrics.csv"), read_metrics_csv(run_dir / "metrics.csv")
    assert len(rows_resumed) == 4
    for key in ("train_loss", "val_miou", "lr"):
        assert [r[key] for r in rows_full] == [r[key] for r in rows_resumed]
    a = load_model_dir(full_dir / "best").model.state_dict()
    b = load_model_dir(run_dir / "best").model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_train_command_end_to_end(tmp_path):
    proc = run_cli("train", *TINY, "epochs=2", f"runs_dir={tmp_path}", "name=cli", check=True)
    run_dir = tmp_path / "cli"
    assert proc.stdout.strip().splitlines()[-1] == str(run_dir)
    assert (run_dir / "config.yaml").is_file() and len(read_metrics_csv(run_dir / "metrics.csv")) == 2
    for picture in ("curves.png", "confusion.png"):  # drawn at the end of the run
        with Image.open(run_dir / picture) as image:
            assert image.format == "PNG" and image.size[0] >= 400 and image.size[1] >= 250
    evaluated = run_cli("eval", str(run_dir / "best"), "--data", "synthetic:8", check=True)
    assert "mIoU" in evaluated.stdout
    assert error_line(run_cli_here("train", "optimizer.name=rmsprop", f"runs_dir={tmp_path}")).startswith(
        "error: defaults: bad value for 'optimizer.name'")
    assert not math.isnan(float(read_metrics_csv(run_dir / "metrics.csv")[-1]["val_miou"]))


def test_the_engine_trains_each_phase_at_its_own_crop(tmp_path):
    from edgeseg.models.blocks import SegmentationModel

    seen = []
    record = lambda module, args: seen.append(tuple(args[0].shape[-2:])) if isinstance(module, SegmentationModel) \
        and module.training else None
    config = load_train_config(None, TINY + ["epochs=3", "eval_every=3", f"runs_dir={tmp_path}", "tensorboard=false",
                                             "augment.phases=[{epochs: 1, crop: [32, 48]}, {epochs: 1, crop: [40, 48]}]"])
    handle = torch.nn.modules.module.register_module_forward_pre_hook(record)
    try:
        train(config, log=lambda _: None)
    finally:
        handle.remove()
    assert seen == [(32, 48)] * 2 + [(40, 48)] * 2 + [(64, 96)] * 2  # 8 images, batch 4


def test_phase_mistakes_are_config_errors(tmp_path):
    with pytest.raises(ConfigError, match="augment.phases: they last 3 epochs, but training has only 3"):
        load_train_config(None, TINY + ["epochs=3", "augment.phases=[{epochs: 3, crop: [32, 48]}]"])
    config = load_train_config(None, TINY + ["epochs=2", f"runs_dir={tmp_path}",
                                             "augment.phases=[{epochs: 1, crop: [30, 48]}]"])
    with pytest.raises(ConfigError, match=r"augment.phases\[0\].crop: 30x48 is not a multiple of the model's "
                                          r"output stride 8"):
        train(config, log=lambda _: None)
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("path", sorted((Path(__file__).resolve().parents[1] / "configs").glob("*.yaml")),
                         ids=lambda p: p.name)
def test_shipped_configs_are_valid_for_their_models(path):
    from edgeseg.models import create_model
    from edgeseg.training.loop import check_crops

    config = load_train_config(path)
    check_crops(config, create_model(config.model.name, 11, **config.model.args).output_stride)


def test_tensorboard_events_and_inline_dataset_mapping(tmp_path):
    """A run shorter than log_every steps still logs its loss and lr (per epoch)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    config = load_train_config(None, TINY + ["epochs=1", f"runs_dir={tmp_path}", "log_every=1000",
                                             "data.spec={format: synthetic, num_images: 8, height: 64, width: 96}"])
    result = train(config, log=lambda _: None)
    events = EventAccumulator(str(result.run_dir / "tb")).Reload()
    assert {"epoch/train_loss", "epoch/lr", "val/miou"} <= set(events.Tags()["scalars"])
    row = read_metrics_csv(result.run_dir / "metrics.csv")[0]
    assert events.Scalars("epoch/train_loss")[0].value == pytest.approx(float(row["train_loss"]), abs=1e-4)


def test_pretrained_weights_from_a_local_model_dir(tmp_path):
    from edgeseg.data.classes import CAMVID, generic_classes
    from edgeseg.models import create_model, model_config_for, save_model_dir
    from edgeseg.training.pretrained import load_pretrained

    source = create_model("basic_encdec", num_classes=11, width=4)
    path = save_model_dir(source, model_config_for(source, CAMVID, (64, 64)), tmp_path / "m")
    same = create_model("basic_encdec", num_classes=11, width=4)
    assert load_pretrained(same, str(path)) == (len(same.state_dict()), [])
    assert all(torch.equal(a, b) for a, b in zip(source.state_dict().values(), same.state_dict().values()))
    other = create_model("basic_encdec", num_classes=3, width=4)  # new classifier, reused backbone
    loaded, skipped = load_pretrained(other, str(path / "model.safetensors"))
    assert skipped == ["classifier.conv.weight", "classifier.conv.bias"] and torch.equal(other.stem[0].conv.weight, source.stem[0].conv.weight)
    with pytest.raises(ConfigError, match="model.pretrained: .*nope.safetensors: file not found"):
        load_pretrained(other, str(tmp_path / "nope.safetensors"))
    with pytest.raises(ConfigError, match="no tensor matches"):
        load_pretrained(create_model("jacintonet11_seg", 3, width=0.25), str(path))


def test_defaults_file_is_the_schema(tmp_path):
    from edgeseg.training.config import TrainConfig, defaults_yaml

    shipped = Path(__file__).resolve().parents[1] / "configs" / "defaults.yaml"
    assert shipped.read_text() == defaults_yaml(), "regenerate: edgeseg train --defaults > configs/defaults.yaml"
    assert load_train_config(shipped) == TrainConfig()


def test_init_with_options_and_with_piped_answers(tmp_path):
    import subprocess
    import sys

    out = tmp_path / "c.yaml"
    run_cli_here("init", "-o", str(out), "--no-input", "--format", "synthetic", "--path", "8", "--model", "basic_encdec",
                 "--epochs", "3", "--crop", "64 96", "--augment", "flip", check=True)
    config = load_train_config(out)
    assert config.data.spec == "synthetic:8" and config.epochs == 3 and config.augment.crop == (64, 96)
    assert config.augment.scale is None and config.augment.hflip == 0.5
    assert "already exists" in error_line(run_cli_here("init", "-o", str(out), "--no-input"))

    answers = "\n".join(["exp", "folder", "data/x", "0.2", "dabnet", "128 128", "4", "7", "sgd", "0.01",
                         "cosine", "flip,scale,color"]) + "\n"
    (tmp_path / "data" / "x").mkdir(parents=True)  # init refuses a dataset path that does not exist
    proc = subprocess.run([sys.executable, "-m", "edgeseg", "init", "-o", str(tmp_path / "i.yaml")],
                          input=answers, capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    config = load_train_config(tmp_path / "i.yaml")
    assert config.data.spec.format == "folder" and config.data.spec.val_fraction == 0.2
    assert (config.model.name, config.optimizer.name, config.schedule.name, config.epochs) == ("dabnet", "sgd", "cosine", 7)
    assert config.augment.color_jitter is not None


def test_two_process_gloo_ddp_run(tmp_path):
    """torchrun with 2 CPU processes: rank 0 writes, validation is sharded and all-reduced;
    gradient checkpointing (modules and the loss) runs under DDP."""
    import subprocess
    import sys

    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "edgeseg",
         "train", *TINY, "epochs=2", f"runs_dir={tmp_path}", "name=ddp", "data.spec=synthetic:16",
         "memory_saving=[stage2, fuse]"],
        capture_output=True, text=True, timeout=300, env={**__import__("os").environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    assert proc.stdout.count("epoch 2/2") == 1  # only rank 0 logs
    assert "memory_saving: checkpointing stage2, fuse and the loss's upsampled logits" in proc.stdout
    assert [p.name for p in tmp_path.iterdir()] == ["ddp"]
    rows = read_metrics_csv(tmp_path / "ddp" / "metrics.csv")
    assert len(rows) == 2 and int(rows[-1]["step"]) == 4  # 16 images / 2 ranks / batch 4 = 2 steps an epoch
    best_row = max((r for r in rows if r["val_miou"]), key=lambda r: float(r["val_miou"]))
    evaluated = run_cli("eval", str(tmp_path / "ddp" / "best"), "--data", "synthetic:16", "--json",
                        str(tmp_path / "e.json"), check=True)
    import json

    assert json.loads((tmp_path / "e.json").read_text())["miou"] == pytest.approx(float(best_row["val_miou"]), abs=1e-5)


def test_cpu_amp_runs_the_forward_in_bfloat16_and_trains(tmp_path):
    from edgeseg.training.loop import training_autocast

    conv = torch.nn.Conv2d(3, 4, 3)
    x = torch.randn(1, 3, 8, 8)
    on = load_train_config(None, ["cpu_amp=true"])
    with training_autocast(on, cuda=False)():
        assert conv(x).dtype == torch.bfloat16
    with training_autocast(load_train_config(None, []), cuda=False)():
        assert conv(x).dtype == torch.float32
    result = train(load_train_config(None, TINY + ["epochs=1", "cpu_amp=true", f"runs_dir={tmp_path}"]),
                   log=lambda _: None)
    rows = read_metrics_csv(result.run_dir / "metrics.csv")
    assert math.isfinite(float(rows[0]["train_loss"])) and load_model_dir(result.run_dir / "best").model is not None


@pytest.mark.parametrize("native", [True, False])
def test_cpu_amp_auto_follows_the_cpus_bfloat16_support(monkeypatch, native):
    import edgeseg.training.loop as loop

    monkeypatch.setattr(loop, "cpu_has_native_bfloat16", lambda: native)
    conv, x = torch.nn.Conv2d(3, 4, 3), torch.randn(1, 3, 8, 8)
    with loop.training_autocast(load_train_config(None, ["cpu_amp=auto"]), cuda=False)():
        assert conv(x).dtype == (torch.bfloat16 if native else torch.float32)
    with loop.training_autocast(load_train_config(None, ["cpu_amp=true"]), cuda=False)():
        assert conv(x).dtype == torch.bfloat16
    with pytest.raises(ConfigError, match="cpu_amp"):
        load_train_config(None, ["cpu_amp=sometimes"])


def test_weight_average_follows_its_formula():
    from edgeseg.training.weight_average import WeightAverage

    model = torch.nn.Sequential(torch.nn.Conv2d(2, 3, 1), torch.nn.BatchNorm2d(3))
    average = WeightAverage(model, decay=0.5)
    expected = {k: v.clone() for k, v in model.state_dict().items()}
    for updates in range(3):
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.randn_like(p))
        model(torch.randn(4, 2, 5, 5))  # moves the BatchNorm statistics and its batch counter
        decay = min(0.5, (1 + updates) / (10 + updates))
        for k, v in model.state_dict().items():
            expected[k] = decay * expected[k] + (1 - decay) * v if v.is_floating_point() else v.clone()
        average.update(updates)
    for k, v in average.model.state_dict().items():
        torch.testing.assert_close(v, expected[k], rtol=1e-6, atol=1e-7)
    assert not any(p.requires_grad for p in average.model.parameters())


def test_weight_average_is_what_the_engine_evaluates_and_saves(tmp_path):
    from safetensors.torch import load_file

    result = train(load_train_config(None, TINY + ["epochs=2", "eval_every=9", "weight_average=0.9",
                                                   f"runs_dir={tmp_path}"]), log=lambda _: None)
    last = result.run_dir / "last"
    average, raw = load_file(str(last / "average.safetensors")), load_file(str(last / "model.safetensors"))
    best = load_model_dir(result.run_dir / "best").model.state_dict()  # evaluated once, at the end
    assert all(torch.equal(best[k], average[k]) for k in best)
    assert not all(torch.equal(raw[k], average[k]) for k in raw)
    with pytest.raises(ConfigError, match="weight_average"):
        load_train_config(None, ["weight_average=0.99", "sparsity.sparsity_target=0.5"])


def test_a_gray_dataset_trains_a_model_that_sees_colour_input_as_grey(tmp_path):
    import numpy as np

    from conftest import write_tiny_folders
    from edgeseg.predict.predictors import TorchPredictor, label_map, model_input

    data = write_tiny_folders(tmp_path / "data", count=6)
    (data / "d.yaml").write_text("format: folder\nroot: .\nval_fraction: 0.34\nchannels: gray\n")
    result = train(load_train_config(None, [f"data.spec={data / 'd.yaml'}", "model.name=basic_encdec",
                                            "model.args={width: 4}", "augment.crop=[32,32]", "batch_size=2",
                                            "epochs=1", "data.num_workers=0", f"runs_dir={tmp_path}",
                                            "tensorboard=false"]), log=lambda _: None)
    predictor = TorchPredictor.from_dir(result.run_dir / "best", torch.device("cpu"))
    assert predictor.config.input_channels == "gray"
    colour = np.array(Image.open(data / "images" / "im00.png").convert("RGB"))
    grey = np.repeat(np.asarray(Image.open(data / "images" / "im00.png").convert("L"))[..., None], 3, axis=2)
    assert torch.equal(model_input(predictor, colour), model_input(predictor, grey))
    assert (label_map(predictor, colour) == label_map(predictor, grey)).all()
    predictor.config.input_channels = "rgb"
    assert not torch.equal(model_input(predictor, colour), model_input(predictor, grey))
