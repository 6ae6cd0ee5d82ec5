"""Filter pruning (issue 23): every architecture prunes, the hard-pruned model computes what
the soft-pruned one does, pruned model directories rebuild from config.json alone, and what
depends on a removed filter (add groups, concat parts, the classifier's inputs) follows it."""

import copy
import json

import pytest
import torch

from conftest import error_line, randomize_batchnorm, run_cli_here as run_cli
from edgeseg.compress.prune import hard_prune, plan_pruning, prune_model_dir
from edgeseg.compress.quant.stage import quantize_model_dir
from edgeseg.compress.specs import PruneConfig
from edgeseg.data.classes import ClassInfo
from edgeseg.errors import ConfigError, ModelError
from edgeseg.export.onnx import export_onnx
from edgeseg.models import create_model, list_models, load_model_dir, model_config_for, save_model_dir
from edgeseg.models.blocks import ConvBNAct, SegmentationModel
from edgeseg.models.pruned import apply_widths
from edgeseg.models.quant_spec import QuantizeConfig
from edgeseg.pipeline import load_recipe, run_pipeline

from test_pipeline import TINY_RECIPE, write_recipe

TINY_ARGS = {"basic_encdec": {"width": 8}, "dabnet": {"width": 0.25, "blocks": [1, 2]}, "edanet": {"width": 0.2},
             "fcn_alexnet": {"width": 0.0625}, "icnet": {"filter_scale": 0.125}, "pspnet": {"width": 0.125},
             "jacintonet11_seg": {"width": 0.25}, "lmsegnet_v1": {"width": 0.25},
             "swiftnet": {"width": 0.125, "decoder": 16}}
CLASSES = ClassInfo(("a", "b", "c"), ((0, 0, 0), (90, 90, 90), (200, 200, 200)), 255)
SIZE = (64, 96)


def tiny_model(name: str, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    model = randomize_batchnorm(create_model(name, 3, **TINY_ARGS.get(name, {})))
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.PReLU):
                module.weight.uniform_(0.0, 0.5)
    return model.eval()


def model_dir(tmp_path, name: str) -> tuple[torch.nn.Module, object]:
    model = tiny_model(name)
    path = save_model_dir(model, model_config_for(model, CLASSES, SIZE), tmp_path / name)
    return model, path


def logits(model, x):
    with torch.no_grad():
        return model.eval()(x)


@pytest.mark.parametrize("name", list_models())
def test_every_architecture_prunes_hard_as_soft_and_round_trips(tmp_path, name):
    original, source = model_dir(tmp_path, name)
    x = torch.randn(2, 3, *SIZE, generator=torch.Generator().manual_seed(1))
    _, soft_metrics, _ = prune_model_dir(source, tmp_path / "soft", PruneConfig(keep=0.5, soft=True))
    _, hard_metrics, _ = prune_model_dir(source, tmp_path / "hard", PruneConfig(keep=0.5))
    soft, hard = load_model_dir(tmp_path / "soft"), load_model_dir(tmp_path / "hard")

    assert torch.allclose(logits(hard.model, x), logits(soft.model, x), atol=1e-5, rtol=0)
    assert not torch.allclose(logits(soft.model, x), logits(original, x), atol=1e-3)  # the cut did something
    assert hard_metrics["params_after"] < 0.6 * hard_metrics["params_before"]
    assert hard_metrics["macs_after"] < 0.6 * hard_metrics["macs_before"]
    assert sum(p.numel() for p in hard.model.parameters()) == hard_metrics["params_after"]
    assert soft.config.widths == {} and soft_metrics["params_after"] == hard_metrics["params_after"]

    # the directory is config.json + weights; config.json alone rebuilds the narrow model
    config = json.loads((tmp_path / "hard" / "config.json").read_text())
    assert sorted(p.name for p in (tmp_path / "hard").iterdir()) == ["config.json", "model.safetensors"]
    assert config["widths"] and all(isinstance(w, int) for w in config["widths"].values())
    in_memory = copy.deepcopy(original)
    widths = hard_prune(in_memory, plan_pruning(in_memory, 0.5))
    assert widths == config["widths"]
    assert torch.equal(logits(in_memory, x), logits(hard.model, x))
    save_model_dir(hard.model, hard.config, tmp_path / "again")
    assert torch.equal(logits(load_model_dir(tmp_path / "again").model, x), logits(hard.model, x))


def test_add_groups_share_the_shortcuts_indices_and_the_classifier_keeps_its_filters():
    model = tiny_model("swiftnet")
    plan = plan_pruning(model, 0.5)
    kept = {name: torch.tensor(flags).nonzero().flatten().tolist() for name, (_, flags) in plan.importance.items()}
    for group in (["stem.1", "stage1.0.conv2", "stage1.1.conv2"],
                  ["stage2.0.shortcut", "stage2.0.conv2", "stage2.1.conv2"]):
        assert all(kept[name] == kept[group[0]] for name in group)
        assert len(kept[group[0]]) == model.get_submodule(group[0]).conv.out_channels // 2
    shortcut = model.stage2[0].shortcut.conv.weight.abs().flatten(1).sum(1)  # ICNet: the shortcut's L1 norms decide
    assert kept["stage2.0.shortcut"] == sorted(shortcut.topk(len(kept["stage2.0.shortcut"])).indices.tolist())

    classifier = model.classifier.conv.weight.clone()
    hard_prune(model, plan)
    assert model.classifier.conv.out_channels == 3
    assert torch.equal(model.classifier.conv.weight, classifier[:, kept["up4.blend"]])


def test_concat_parts_are_sliced_each_by_its_own_indices():
    model = tiny_model("basic_encdec")  # fuse reads concat(context: 4w, skip: 2w)
    fuse = model.fuse.conv.weight.clone()
    plan = plan_pruning(model, 0.5)
    kept = {name: torch.tensor(flags).nonzero().flatten() for name, (_, flags) in plan.importance.items()}
    hard_prune(model, plan)
    inputs = torch.cat([kept["stage3.2"], kept["stage2.1"] + 32])
    assert torch.equal(model.fuse.conv.weight, fuse[kept["fuse"]][:, inputs])
    assert model.fuse.conv.in_channels == 16 + 8


def test_grouped_convs_keep_equal_groups():
    model = tiny_model("jacintonet11_seg", seed=3)
    hard_prune(model, plan_pruning(model, 0.5))
    for name in ("conv1.1", "res2a.1", "out5a", "out3a"):
        conv = model.get_submodule(name).conv
        assert conv.groups in (2, 4) and conv.out_channels % conv.groups == 0 and conv.in_channels % conv.groups == 0


def test_skip_keeps_named_layers_and_their_add_group(tmp_path):
    _, source = model_dir(tmp_path, "swiftnet")
    prune_model_dir(source, tmp_path / "out", PruneConfig(keep=0.5, skip=["stem.1*", "context"]))
    widths = load_model_dir(tmp_path / "out").config.widths
    assert "stem.1.conv" not in widths and "stage1.0.conv2.conv" not in widths  # same add group as stem.1
    assert not any(name.startswith("context.") for name in widths)
    assert widths["stem.0.conv"] == 2 and widths["stage2.0.conv2.conv"] == 8


def test_pruning_again_narrows_further_and_still_rebuilds(tmp_path):
    original, source = model_dir(tmp_path, "jacintonet11_seg")  # grouped convs end at one channel per group
    prune_model_dir(source, tmp_path / "once", PruneConfig(keep=0.5))
    prune_model_dir(tmp_path / "once", tmp_path / "twice", PruneConfig(keep=0.5))
    once, twice = load_model_dir(tmp_path / "once"), load_model_dir(tmp_path / "twice")
    assert twice.config.widths["res5a.0.conv"] == once.config.widths["res5a.0.conv"] // 2
    assert twice.model.conv1[1].conv.groups == original.conv1[1].conv.groups
    assert [h.stage for h in twice.config.history] == ["prune", "prune"]


class PlainConvNet(SegmentationModel):
    def __init__(self) -> None:
        super().__init__()
        self.body = ConvBNAct(3, 8)
        self.head = torch.nn.Conv2d(8, 3, 1)

    def forward_features(self, x):
        return self.head(self.body(x))


def test_a_layer_pruning_cannot_follow_is_named_in_one_line():
    with pytest.raises(ModelError, match="^cannot prune through layer 'head' \\(Conv2d\\): its effect on channels is "
                                         "unknown$"):
        plan_pruning(PlainConvNet(), 0.5)


def test_bad_input_is_one_line(tmp_path):
    _, source = model_dir(tmp_path, "basic_encdec")
    with pytest.raises(ConfigError, match=r"skip: 'stemm' matches no conv \(did you mean 'stem'\?"):
        prune_model_dir(source, tmp_path / "out", PruneConfig(skip=["stemm"]))
    quantized = tmp_path / "q"
    quantize_model_dir(source, quantized, QuantizeConfig(scheme="power-of-two", calibration_batches=1),
                       [torch.randn(3, *SIZE)])
    with pytest.raises(ModelError, match="the model is quantized \\(power-of-two\\); prune the float model"):
        prune_model_dir(quantized, tmp_path / "out", PruneConfig())
    config = json.loads((tmp_path / "basic_encdec" / "config.json").read_text())
    config["widths"] = {"stem.0.con": 4}
    (tmp_path / "basic_encdec" / "config.json").write_text(json.dumps(config))
    with pytest.raises(ModelError, match="widths: 'stem.0.con' is no prunable conv of this model \\(did you mean "
                                         "'stem.0.conv'\\?\\)"):
        load_model_dir(source)

    swift, _ = model_dir(tmp_path, "swiftnet")
    with pytest.raises(ModelError, match="widths: 'stage2.0.add' adds inputs of 8 and 16 channels \\(stage2.0.conv2, "
                                         "stage2.0.shortcut\\); convs added together need the same width"):
        apply_widths(swift, {"stage2.0.conv2.conv": 8})

    # through the command line, as a user types it
    _, source = model_dir(tmp_path, "swiftnet")
    assert error_line(run_cli("prune", str(source), "--out", str(tmp_path / "o"), "--keep", "0")) == \
        "error: prune options: bad value for 'keep': Input should be greater than 0"
    assert error_line(run_cli("prune", str(source), "--out", str(tmp_path / "o"), "--target-macs", "0.5")).endswith(
        "swiftnet: a prune target needs val images for its scan, and no training dataset is recorded; pass --data SPEC")
    assert not (tmp_path / "o").exists()


def test_cli_prints_the_table_plots_and_exports(tmp_path):
    _, source = model_dir(tmp_path, "swiftnet")
    out, plot = tmp_path / "pruned", tmp_path / "prune.png"
    proc = run_cli("prune", str(source), "--out", str(out), "--compression-factor", "0.5", "--plot", str(plot),
                   check=True)
    assert "stage2.0.shortcut.conv" in proc.stdout and "16 -> 8" in proc.stdout and "params 186,423 -> " in proc.stdout
    assert plot.read_bytes()[:4] == b"\x89PNG" and load_model_dir(out).config.widths["stem.0.conv"] == 2
    image = torch.randn(3, *SIZE)
    metrics = export_onnx(out, tmp_path / "pruned.onnx", False, SIZE, [(image, None)])
    assert metrics["max_abs_diff"] < 1e-4


def test_prune_stage_in_a_recipe_then_fine_tuned_and_folded(tmp_path):
    train = {**TINY_RECIPE["train"], "epochs": 1, "eval_every": 1}
    recipe = write_recipe(tmp_path, {**TINY_RECIPE, "train": train, "stages": {
        "dense": {"stage": "train"}, "prune": {"keep": 0.5, "skip": ["classifier"]},
        "finetune": {"stage": "train"},
        "again": {"stage": "prune", "target_macs": 0.8, "scan_images": 2, "scan_ratios": [0.5]},
        "fold": {"stage": "fold-bn", "check_images": 1}}})
    loaded, stages = load_recipe(recipe)
    report = run_pipeline(loaded, stages, log=lambda line: None)
    rows = {row["stage"]: row for row in report["stages"]}
    assert list(rows) == ["01-dense", "02-prune", "03-finetune", "04-again", "05-fold"]
    assert rows["02-prune"]["params"] < 0.5 * rows["01-dense"]["params"]
    assert rows["03-finetune"]["params"] == rows["02-prune"]["params"]
    assert rows["04-again"]["macs"] <= 0.8 * rows["03-finetune"]["macs"]
    assert rows["04-again"]["params"] > rows["05-fold"]["params"]
    again = tmp_path / "pipeline" / "stages" / "04-again" / "model"
    assert (again / "sensitivity.json").is_file()
    finetuned = load_model_dir(tmp_path / "pipeline" / "stages" / "03-finetune" / "model").config
    folded = load_model_dir(tmp_path / "pipeline" / "stages" / "05-fold" / "model").config
    assert finetuned.widths and folded.widths == load_model_dir(again).config.widths and folded.batchnorm_folded
    assert [h.stage for h in folded.history] == ["train", "prune", "train", "prune", "fold-bn"]
    assert folded.history[3].model_extra["keeps"]
    assert all(row.get("latency_ms") for row in report["stages"])
