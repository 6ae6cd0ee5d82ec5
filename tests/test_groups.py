"""Grouped validation: holding out a group (a video sequence) as val, the doctor's count of
val images that share a group with train, and the leave-one-group-out folds command."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from conftest import CAMVID, error_line, needs_camvid, run_cli_here, write_image, write_label
from edgeseg.data.doctor import check_dataset, train_val_overlap
from edgeseg.data.groups import group_of
from edgeseg.data.spec import DatasetConfig, open_source
from edgeseg.errors import ConfigError, DataError
from edgeseg.models import load_model_dir

# folder layout: train has clips a, b, c; val has clip c only (it shares its clip with train)
LAYOUT = {"train": {"clipa": 3, "clipb": 2, "clipc": 2}, "val": {"clipc": 2}}


def grouped_folder(root, layout=LAYOUT, size=(32, 48)):
    """A folder dataset whose file names are <clip>_<frame>.png, 3 classes in vertical bands."""
    rng = np.random.default_rng(0)
    h, w = size
    bands = np.repeat(np.arange(3), -(-w // 3))[:w]
    for split, clips in layout.items():
        for clip, frames in clips.items():
            for frame in range(frames):
                name = f"{clip}_{split}{frame:03d}.png"
                label = np.broadcast_to(bands, (h, w))
                image = np.stack([label * 80 + rng.integers(0, 30, (h, w))] * 3, -1)
                write_image(root / split / "images" / name, image)
                write_label(root / split / "labels" / name, label)
    (root / "classes.txt").write_text("road\ncar\nsky\n")
    return root


def names(source, split):
    return sorted(s.name for s in source.splits[split])


def test_group_is_the_first_capture_group_or_the_whole_match():
    assert group_of("0016E5_07965", r"^([^_]+)_") == "0016E5"
    assert group_of("site3-cam1-0007", r"site\d+") == "site3"
    assert group_of("nothing", r"^clip(\w)_") is None


def test_holdout_group_pools_train_and_val_and_holds_one_group_out(tmp_path):
    root = grouped_folder(tmp_path / "d")
    plain = open_source(f"folder:{root}")
    source = open_source(DatasetConfig(format="folder", root=root, group_by=r"^(clip\w)_", holdout_group="clipc"))
    everything = names(plain, "train") + names(plain, "val")
    assert names(source, "val") == sorted(n for n in everything if n.startswith("clipc_"))
    assert names(source, "train") == sorted(n for n in everything if not n.startswith("clipc_"))
    assert len(source.splits["val"]) == 4 and len(source.splits["train"]) == 5
    assert len(source.dataset("val")) == 4  # files exist, readable as a split


def test_holdout_errors_name_the_key_and_the_groups_present(tmp_path):
    root = grouped_folder(tmp_path / "d")
    spec = tmp_path / "data.yaml"
    spec.write_text(yaml.safe_dump({"format": "folder", "root": str(root), "group_by": "^(clip\\w)_",
                                    "holdout_group": "clipz"}))
    line = error_line(run_cli_here("data", "check", str(spec)))
    assert "holdout_group 'clipz'" in line and "clipa (3), clipb (2), clipc (4)" in line
    with pytest.raises(ConfigError, match="bad value for 'group_by': not a regular expression"):
        from edgeseg.data.spec import parse_spec
        spec.write_text(yaml.safe_dump({"format": "folder", "root": str(root), "group_by": "(unclosed"}))
        parse_spec(str(spec))
    with pytest.raises(ValueError, match="holdout_group: a folder dataset needs group_by"):
        DatasetConfig(format="folder", root=root, holdout_group="clipa")
    with pytest.raises(DataError, match="group_by '\\^clip_' does not match the file name 'clipa_train000'"):
        open_source(DatasetConfig(format="folder", root=root, group_by="^clip_", holdout_group="clipa"))


def test_doctor_counts_val_images_that_share_a_group_with_train(tmp_path):
    root = grouped_folder(tmp_path / "d")
    proc = run_cli_here("data", "check", f"folder:{root}", "--group-by", "^(clip\\w)_", "--json",
                        str(tmp_path / "r.json"), check=True)
    assert "2 of 2 val images share a group with train images" in proc.stdout
    groups = json.loads((tmp_path / "r.json").read_text())["groups"]
    assert groups["val_images_sharing_a_group_with_train"] == 2
    assert groups["shared_groups"] == {"clipc": {"train": 2, "val": 2}}
    held = open_source(DatasetConfig(format="folder", root=root, group_by=r"^(clip\w)_", holdout_group="clipa"))
    assert check_dataset(held).groups.shared_images == 0
    assert check_dataset(open_source(f"folder:{root}")).groups is None  # no rule: nothing claimed


@needs_camvid
def test_camvid_groups_by_sequence_and_holds_one_out():
    plain = open_source(f"camvid:{CAMVID}")
    overlap = train_val_overlap(plain)
    assert (overlap.val_images, overlap.shared_images) == (101, 101)  # val is all 0016E5, as train's 204 frames
    source = open_source(DatasetConfig.model_validate({"format": "camvid", "root": str(CAMVID),
                                                       "holdout_sequence": "0006R0"}))
    assert {s.name.split("_")[0] for s in source.splits["val"]} == {"0006R0"}
    assert len(source.splits["val"]) + len(source.splits["train"]) == 468
    assert "0006R0" not in {s.name.split("_")[0] for s in source.splits["train"]}


def tiny_folds_config(tmp_path, root, **changes):
    config = {"name": "tiny", "runs_dir": str(tmp_path / "runs"), "epochs": 1, "batch_size": 2, "tensorboard": False,
              "augment": {"crop": [32, 48]}, "model": {"args": {"width": 4}}, "deterministic": True,
              "data": {"spec": {"format": "folder", "root": str(root), "group_by": "^(clip\\w)_"}, "num_workers": 0},
              **changes}
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def test_folds_command_trains_each_fold_prints_the_table_and_reuses_finished_runs(tmp_path):
    root = grouped_folder(tmp_path / "d")
    config = tiny_folds_config(tmp_path, root)
    proc = run_cli_here("folds", str(config), "seed=1", "--json", str(tmp_path / "folds.json"), check=True)
    result = json.loads((tmp_path / "folds.json").read_text())
    runs = result["runs"]
    assert [r["held_out"] for r in runs] == ["clipa", "clipb", "clipc", None]
    assert [(r["train_images"], r["val_images"]) for r in runs] == [(6, 3), (7, 2), (5, 4), (7, 2)]
    finals = [r["final_miou"] for r in runs[:3]]
    assert result["fold_miou"] == dict(zip(["clipa", "clipb", "clipc"], finals))
    assert result["mean_miou"] == pytest.approx(np.mean(finals))
    assert result["std_miou"] == pytest.approx(np.std(finals, ddof=1))
    assert result["ordinary_miou"] == runs[3]["final_miou"]
    folds = tmp_path / "runs" / "tiny-folds"
    assert sorted(p.name for p in folds.iterdir()) == ["fold-clipa", "fold-clipb", "fold-clipc", "folds.json", "ordinary"]
    for run in runs[:3]:  # each run's saved config holds its group out
        assert run["run_dir"] == str(folds / f"fold-{run['held_out']}")
        saved = yaml.safe_load((Path(run["run_dir"]) / "config.yaml").read_text())
        assert saved["data"]["spec"]["holdout_group"] == run["held_out"] and saved["seed"] == 1 == run["seed"]
    for row in ("mean over folds", "spread over folds", "(ordinary val)", "gap (ordinary - fold mean)"):
        assert row in proc.stdout

    again = run_cli_here("folds", str(config), "seed=1", check=True)  # nothing left to train
    assert again.stdout.count("trained before") == 4 and "epoch 1/1" not in again.stdout
    assert json.loads((folds / "folds.json").read_text())["runs"] == runs
    line = error_line(run_cli_here("folds", str(config), "seed=2"))
    assert "fold-clipa: --resume cannot change what the run computes (seed differ" in line
    assert line.endswith("or give these folds another name (name=...)")
    line = error_line(run_cli_here("folds", str(config), "--groups", "clipq"))
    assert "--groups: 'clipq' is not a group of train+val (clipa, clipb, clipc)" in line


def test_an_interrupted_fold_continues_to_the_result_of_an_uninterrupted_one(tmp_path):
    from edgeseg.training.config import load_train_config
    from edgeseg.training.folds import run_folds

    root = grouped_folder(tmp_path / "d")
    config = load_train_config(tiny_folds_config(tmp_path, root, epochs=2))

    def stop_after_first_epoch(line):
        if line.startswith("epoch 1/2"):
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_folds(config, ["clipb"], ordinary=False, log=stop_after_first_epoch)
    lines = []
    resumed = run_folds(config, ["clipb"], ordinary=False, log=lines.append)
    assert any("continuing" in line for line in lines) and not any(line.startswith("epoch 1/2") for line in lines)
    whole = run_folds(config.model_copy(update={"name": "whole"}), ["clipb"], ordinary=False, log=lambda _: None)
    assert resumed.runs[0].final_miou == whole.runs[0].final_miou
    assert resumed.runs[0].best_miou == whole.runs[0].best_miou
    a, b = (load_model_dir(run.runs[0].run_dir / "best").model.state_dict() for run in (resumed, whole))
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_folds_with_seeds_average_each_fold_over_its_seeds(tmp_path):
    root = grouped_folder(tmp_path / "d")
    config = tiny_folds_config(tmp_path, root)
    proc = run_cli_here("folds", str(config), "--groups", "clipa,clipb", "--no-ordinary", "--seeds", "4,5",
                        "--json", str(tmp_path / "f.json"), check=True)
    result = json.loads((tmp_path / "f.json").read_text())
    runs = {(r["held_out"], r["seed"]): r for r in result["runs"]}
    assert sorted(runs) == [("clipa", 4), ("clipa", 5), ("clipb", 4), ("clipb", 5)]
    assert runs[("clipb", 5)]["run_dir"].endswith("tiny-folds/fold-clipb-seed5")
    per_fold = {g: np.mean([runs[(g, 4)]["final_miou"], runs[(g, 5)]["final_miou"]]) for g in ("clipa", "clipb")}
    assert result["fold_miou"] == pytest.approx(per_fold)
    assert result["std_miou"] == pytest.approx(np.std(list(per_fold.values()), ddof=1))
    assert result["ordinary_miou"] is None and "clipa: mean over seeds" in proc.stdout
    assert "--seeds: expected whole numbers" in error_line(run_cli_here("folds", str(config), "--seeds", "1,x"))


def test_train_split_joins_splits_for_a_final_model_and_folds_score_it_without_them(tmp_path):
    from edgeseg.training.config import load_train_config
    from edgeseg.training.folds import fold_config
    from edgeseg.training.loop import read_metrics_csv, train

    root = grouped_folder(tmp_path / "d")
    source = open_source(f"folder:{root}")
    joined = [s.name for s in source.dataset("train+val").samples]
    assert joined == [s.name for s in source.splits["train"]] + [s.name for s in source.splits["val"]]
    for bad, message in (("train+test", "no split 'test'"), ("train++val", "empty split name"),
                         ("val+val", "named twice")):
        with pytest.raises(DataError, match=message):
            source.dataset(bad)
    with pytest.raises(DataError, match="joined with '\\+' need a dataset read from files"):
        open_source("synthetic:8").dataset("train+val")

    # 7 train + 2 val images: a batch of 9 exists only when the val images are trained on too
    config = load_train_config(tiny_folds_config(tmp_path, root, batch_size=9, name="final"),
                               ["data.train_split=train+val"])
    lines = []
    result = train(config, log=lines.append)
    assert int(read_metrics_csv(result.run_dir / "metrics.csv")[-1]["step"]) == 1
    assert any("holds the val split's images (val): val mIoU is no held-out measure" in line for line in lines)
    assert fold_config(config, None).data.train_split == "train"  # the ordinary score counts no trained image
    assert fold_config(config, "clipa").data.train_split == "train"
    with pytest.raises(ConfigError, match="nothing is left to train the ordinary run on"):
        fold_config(config.model_copy(update={"data": config.data.model_copy(update={"train_split": "val"})}), None)
