"""Knowledge distillation: a frozen teacher's softened per-pixel class distribution as a
second target for the student (Hinton et al. 2015, pixel-wise as in Liu et al. 2019)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from edgeseg.data.classes import ClassInfo
from edgeseg.errors import ConfigError
from edgeseg.models import load_model_dir
from edgeseg.predict.predictors import TorchPredictor
from edgeseg.training.config import DistillSection


def distillation_loss(student: torch.Tensor, teacher: torch.Tensor, labels: torch.Tensor, temperature: float,
                      ignore_index: int) -> torch.Tensor:
    """T^2 x KL(teacher || student) of the class distributions softened by ``temperature``,
    averaged over the labelled pixels (``labels`` != ``ignore_index``; 0 when there are none).
    ``student`` and ``teacher`` are (N, C, H, W) logits, ``labels`` (N, H, W)."""
    log_student = F.log_softmax(student.float() / temperature, dim=1)
    log_teacher = F.log_softmax(teacher.float() / temperature, dim=1)
    per_pixel = (log_teacher.exp() * (log_teacher - log_student)).sum(dim=1)
    labelled = (labels != ignore_index).to(per_pixel.dtype)
    return temperature ** 2 * (per_pixel * labelled).sum() / labelled.sum().clamp_min(1.0)


class Distiller:
    """The teacher of ``distill`` (eval mode, no gradients, its own normalisation) and the
    weighted distillation term it adds to the student's loss."""

    def __init__(self, section: DistillSection, classes: ClassInfo, mean, std, device: torch.device) -> None:
        loaded = load_model_dir(section.teacher, device)
        if list(loaded.config.classes) != list(classes.names):
            raise ConfigError(f"distill.teacher: {section.teacher} predicts {loaded.config.num_classes} classes "
                              f"({', '.join(loaded.config.classes)}) but the dataset has {classes.num_classes} "
                              f"({', '.join(classes.names)}); the teacher needs the same classes in the same order")
        loaded.model.eval().requires_grad_(False)
        self.teacher = TorchPredictor(loaded.model, loaded.config, device)
        self.section, self.ignore_index = section, classes.ignore_index
        # student inputs are (x - mean) / std; the teacher's are (x - its mean) / its std
        as_tensor = lambda v: torch.tensor(v, dtype=torch.float32, device=device).view(1, 3, 1, 1)  # noqa: E731
        self.scale = as_tensor(std) / as_tensor(loaded.config.std)
        self.shift = (as_tensor(mean) - as_tensor(loaded.config.mean)) / as_tensor(loaded.config.std)

    def teacher_logits(self, images: torch.Tensor) -> torch.Tensor:
        """The teacher's logits for the student's normalised ``images`` (no gradients)."""
        return self.teacher.logits(images * self.scale + self.shift)

    def __call__(self, images: torch.Tensor, student_logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """``weight`` x T^2 x KL of the student's logits against the teacher's on ``images``."""
        teacher = self.teacher_logits(images)
        return self.section.weight * distillation_loss(student_logits, teacher, labels, self.section.temperature,
                                                       self.ignore_index)
