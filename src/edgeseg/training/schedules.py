"""Learning-rate schedules as pure functions of progress, so resuming needs only the step."""

from __future__ import annotations

import math

from edgeseg.training.config import ScheduleSection


def lr_factor(schedule: ScheduleSection, step: int, steps_per_epoch: int, epochs: int) -> float:
    """The multiplier of the base lr at optimisation ``step`` (0-based).

    Blueoil's decays multiply by ``gamma`` at fixed epochs: '2-step-decay' at E/2 and E-1,
    '3-step-decay' at E/3, 2E/3 and E-1. Warmup ramps linearly from ``warmup_start`` times
    the scheduled value.
    """
    total = max(1, steps_per_epoch * epochs)
    epoch = step / steps_per_epoch
    progress = min(1.0, step / total)
    name = schedule.name
    if name == "constant":
        factor = 1.0
    elif name == "poly":
        factor = (1 - progress) ** schedule.power
    elif name == "cosine":
        factor = 0.5 * (1 + math.cos(math.pi * progress))
    elif name == "step":
        factor = schedule.gamma ** int(epoch // schedule.step_size)
    else:
        milestones = {
            "multistep": schedule.milestones,
            "2-step-decay": [epochs / 2, epochs - 1],
            "3-step-decay": [epochs / 3, epochs * 2 / 3, epochs - 1],
        }[name]
        factor = schedule.gamma ** sum(1 for m in milestones if epoch >= m)
    if schedule.warmup_epochs and epoch < schedule.warmup_epochs:
        ramp = epoch / schedule.warmup_epochs
        factor *= schedule.warmup_start + (1 - schedule.warmup_start) * ramp
    return factor
