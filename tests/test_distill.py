"""Knowledge distillation: the KL term against a hand computation, its masking of void
pixels, a frozen teacher, and training with it."""

import math

import numpy as np
import pytest
import torch

from conftest import error_line, randomize_batchnorm, run_cli_here
from edgeseg.data.classes import CAMVID, ClassInfo
from edgeseg.models import create_model, load_model_dir, model_config_for, save_model_dir
from edgeseg.training.config import DistillSection, load_train_config
from edgeseg.training.distill import Distiller, distillation_loss
from edgeseg.training.loop import read_metrics_csv, train

TINY = ["data.spec=synthetic:8", "augment.crop=[64,96]", "batch_size=4", "model.args={width: 4}",
        "data.num_workers=0", "seed=3", "deterministic=true", "tensorboard=false", "epochs=1"]


def save_tiny_model(path, classes=CAMVID, seed=0, mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225)):
    torch.manual_seed(seed)
    model = randomize_batchnorm(create_model("basic_encdec", classes.num_classes, width=4)).eval()
    save_model_dir(model, model_config_for(model, classes, (64, 96), mean, std), path)
    return model


def test_kl_term_matches_a_hand_computation_and_skips_void_pixels():
    rng = np.random.default_rng(1)
    student, teacher = rng.normal(size=(1, 3, 2, 2)) * 2, rng.normal(size=(1, 3, 2, 2)) * 2
    labels = np.array([[[0, 255], [2, 1]]])
    t = 2.0
    expected = []
    for y, x in [(0, 0), (1, 0), (1, 1)]:  # every pixel but the void one
        p = np.exp(teacher[0, :, y, x] / t) / np.exp(teacher[0, :, y, x] / t).sum()
        q = np.exp(student[0, :, y, x] / t) / np.exp(student[0, :, y, x] / t).sum()
        expected.append(sum(pi * math.log(pi / qi) for pi, qi in zip(p, q)))
    got = distillation_loss(torch.tensor(student), torch.tensor(teacher), torch.tensor(labels), t, 255)
    assert float(got) == pytest.approx(t * t * np.mean(expected), rel=1e-5)
    all_void = torch.full((1, 2, 2), 255)
    assert float(distillation_loss(torch.tensor(student), torch.tensor(teacher), all_void, t, 255)) == 0.0


def test_teacher_identical_to_the_student_adds_nothing_and_only_the_student_gets_gradients(tmp_path):
    student = save_tiny_model(tmp_path / "teacher")
    distiller = Distiller(DistillSection(teacher=str(tmp_path / "teacher"), temperature=3.0, weight=2.0), CAMVID,
                          (0.485, 0.456, 0.406), (0.229, 0.224, 0.225), torch.device("cpu"))
    images, labels = torch.randn(2, 3, 64, 96), torch.randint(0, 11, (2, 64, 96))
    with torch.no_grad():
        assert float(distiller(images, student(images), labels)) == pytest.approx(0.0, abs=1e-6)

    other = create_model("basic_encdec", 11, width=4).train()
    term = distiller(images, other(images), labels)
    assert float(term.detach()) > 0
    term.backward()
    assert all(p.grad is not None for p in other.parameters() if p.requires_grad)
    teacher = distiller.teacher.model
    assert not teacher.training and all(p.grad is None and not p.requires_grad for p in teacher.parameters())


def test_teacher_gets_inputs_in_its_own_normalisation(tmp_path):
    save_tiny_model(tmp_path / "teacher", mean=(0.5, 0.5, 0.5), std=(0.5, 0.25, 1.0))
    student_mean, student_std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    distiller = Distiller(DistillSection(teacher=str(tmp_path / "teacher")), CAMVID, student_mean, student_std,
                          torch.device("cpu"))
    rgb = torch.rand(1, 3, 64, 96)
    as_student = (rgb - torch.tensor(student_mean).view(1, 3, 1, 1)) / torch.tensor(student_std).view(1, 3, 1, 1)
    as_teacher = (rgb - 0.5) / torch.tensor([0.5, 0.25, 1.0]).view(1, 3, 1, 1)
    teacher = load_model_dir(tmp_path / "teacher").model.eval()
    with torch.no_grad():
        torch.testing.assert_close(distiller.teacher_logits(as_student), teacher(as_teacher), atol=1e-4, rtol=1e-4)


def test_weight_zero_trains_exactly_as_without_distillation(tmp_path):
    plain = train(load_train_config(None, TINY + [f"runs_dir={tmp_path}", "name=plain"]), log=lambda _: None)
    teacher = tmp_path / "teacher"
    save_tiny_model(teacher, seed=5)
    zero = train(load_train_config(None, TINY + [f"runs_dir={tmp_path}", "name=zero",
                                                 f"distill={{teacher: {teacher}, weight: 0}}"]), log=lambda _: None)
    taught = train(load_train_config(None, TINY + [f"runs_dir={tmp_path}", "name=taught",
                                                   f"distill={{teacher: {teacher}, weight: 1, temperature: 2}}"]),
                   log=lambda _: None)
    loss = lambda run: float(read_metrics_csv(run.run_dir / "metrics.csv")[0]["train_loss"])  # noqa: E731
    assert loss(zero) == loss(plain) and loss(taught) > loss(plain)
    weights = lambda run: load_model_dir(run.run_dir / "best").model.state_dict()  # noqa: E731
    for name, value in weights(plain).items():
        torch.testing.assert_close(weights(zero)[name], value, rtol=0, atol=0)


def test_teacher_with_other_classes_is_one_line(tmp_path):
    save_tiny_model(tmp_path / "teacher", classes=ClassInfo(("a", "b", "c"), ((0, 0, 0), (1, 1, 1), (2, 2, 2))))
    line = error_line(run_cli_here("train", *TINY, f"runs_dir={tmp_path}", f"distill.teacher={tmp_path / 'teacher'}"))
    assert "distill.teacher:" in line and "predicts 3 classes (a, b, c) but the dataset has 11" in line
