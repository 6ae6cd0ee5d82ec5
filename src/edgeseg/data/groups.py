"""Groups of samples (video sequences, drives, sites) read from file names, and the
leave-one-group-out split: a val split that measures images from a group training never saw.

A group rule is a regular expression searched in the sample name (the file name without its
extension); the group is its first capture group, or the whole match when it has none.
CamVid's rule is built in: the sequence before the first '_' (``0016E5_07965`` -> ``0016E5``).
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass

from edgeseg.data.dataset import Sample
from edgeseg.errors import DataError

SEQUENCE_RULE = r"^([^_]+)_"
DEFAULT_RULES = {"camvid": SEQUENCE_RULE}
POOLED_SPLITS = ("train", "val")


def group_rule(config) -> str | None:
    """The regex that groups ``config``'s samples: ``group_by``, else the format's own rule, else None."""
    return config.group_by or DEFAULT_RULES.get(config.format)


def group_of(name: str, rule: str) -> str | None:
    """The group of a sample name under ``rule``, or None when the rule does not match it."""
    match = re.search(rule, name)
    if match is None:
        return None
    return match.group(1) if match.re.groups else match.group(0)


def groups_of(samples: list[Sample], rule: str, where: str) -> list[str]:
    """The group of every sample; a name the rule does not match is a DataError naming it."""
    groups = [group_of(s.name, rule) for s in samples]
    unmatched = [s for s, g in zip(samples, groups) if g is None]
    if unmatched:
        more = f" (and {len(unmatched) - 1} more)" if len(unmatched) > 1 else ""
        raise DataError(f"{where}: group_by '{rule}' does not match the file name '{unmatched[0].name}'{more}")
    return groups


def hold_out_group(splits: dict[str, list[Sample]], rule: str, group: str, where: str) -> dict[str, list[Sample]]:
    """train+val pooled, then split by group: val = the samples of ``group``, train = the rest.
    Other splits (test) are kept as they are. A group with no samples, or one that would leave
    nothing to train on, is a DataError that lists the groups present."""
    pooled = [s for split in POOLED_SPLITS for s in splits.get(split, [])]
    groups = groups_of(pooled, rule, where)
    counts = Counter(groups)
    present = ", ".join(f"{g} ({n})" for g, n in sorted(counts.items()))
    if group not in counts:
        raise DataError(f"{where}: holdout_group '{group}' is not among the groups of train+val: {present}")
    if counts[group] == len(pooled):
        raise DataError(f"{where}: holdout_group '{group}' holds every train+val image; nothing is left to train on")
    held = [s for s, g in zip(pooled, groups) if g == group]
    rest = [s for s, g in zip(pooled, groups) if g != group]
    return {**splits, "train": rest, "val": held}


@dataclass(frozen=True)
class GroupOverlap:
    """How much of val comes from groups that train also has."""

    rule: str
    val_images: int
    shared_images: int
    shared_groups: dict[str, tuple[int, int]]  # group -> (train images, val images)

    def sentence(self) -> str:
        if not self.shared_images:
            return f"val shares no group with train (groups by '{self.rule}'): it measures unseen groups"
        groups = ", ".join(f"{g} (train {t}, val {v})" for g, (t, v) in sorted(self.shared_groups.items()))
        return (f"{self.shared_images} of {self.val_images} val images share a group with train images "
                f"(groups by '{self.rule}': {groups}); val mIoU then rewards remembering those groups, "
                f"a held-out group (holdout_group) measures unseen ones")


def group_overlap(train: list[Sample], val: list[Sample], rule: str) -> GroupOverlap:
    """Count the val samples whose group also occurs in train; unmatched names belong to no group."""
    train_counts = Counter(g for g in (group_of(s.name, rule) for s in train) if g is not None)
    val_counts = Counter(g for g in (group_of(s.name, rule) for s in val) if g is not None)
    shared = {g: (train_counts[g], n) for g, n in val_counts.items() if g in train_counts}
    return GroupOverlap(rule, len(val), sum(v for _, v in shared.values()), shared)


def pooled_groups(splits: dict[str, list[Sample]], rule: str, where: str) -> list[str]:
    """The groups of train+val, sorted: the folds of a leave-one-group-out validation."""
    pooled = [s for split in POOLED_SPLITS for s in splits.get(split, [])]
    return sorted(set(groups_of(pooled, rule, where)))
