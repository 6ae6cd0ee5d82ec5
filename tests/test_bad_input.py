"""Bad input: one line on stderr naming the file or key, non-zero exit, nothing destroyed."""

import numpy as np
import pytest
import torch

from conftest import error_line, random_image, run_cli_here as run_cli, write_image, write_label
from edgeseg.data.classes import CAMVID
from edgeseg.fileio import atomic_write_text
from edgeseg.models import create_model, model_config_for, save_model_dir

RNG = np.random.default_rng(5)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    model = create_model("basic_encdec", num_classes=CAMVID.num_classes, width=8)
    return save_model_dir(model, model_config_for(model, CAMVID, (16, 16)), tmp_path_factory.mktemp("m") / "model")


def camvid_fixture(root, n=2):
    for split in ("train", "val"):
        for i in range(n):
            write_image(root / split / f"f{i}.png", random_image(RNG, 16, 16))
            write_label(root / f"{split}annot" / f"f{i}.png", RNG.integers(0, 12, (16, 16)))
    return root


def eval_error(model_dir, root):
    return error_line(run_cli("eval", str(model_dir), "--data", f"camvid:{root}", "--device", "cpu"))


def test_missing_file(model_dir, tmp_path):
    root = camvid_fixture(tmp_path / "cv")
    (root / "valannot" / "f1.png").unlink()
    assert eval_error(model_dir, root).endswith("f1.png: image has no label in valannot/")


def test_missing_file_in_list(model_dir, tmp_path):
    root = camvid_fixture(tmp_path / "cv")
    (root / "val.txt").write_text("/SegNet/CamVid/val/f0.png /SegNet/CamVid/valannot/gone.png\n")
    line = eval_error(model_dir, root)
    assert line.startswith("error: ") and line.endswith("valannot/gone.png: file not found")


def test_truncated_png(model_dir, tmp_path):
    root = camvid_fixture(tmp_path / "cv")
    label = root / "valannot" / "f0.png"
    label.write_bytes(label.read_bytes()[:60])
    line = eval_error(model_dir, root)
    assert "valannot/f0.png: truncated or corrupt image" in line


def test_label_value_out_of_range(model_dir, tmp_path):
    root = camvid_fixture(tmp_path / "cv")
    write_label(root / "valannot" / "f1.png", np.full((16, 16), 40))
    line = eval_error(model_dir, root)
    assert line.endswith("valannot/f1.png: label values out of range: 40 (valid: 0-11)")


def test_image_label_size_mismatch(model_dir, tmp_path):
    root = camvid_fixture(tmp_path / "cv")
    write_label(root / "valannot" / "f0.png", np.zeros((8, 16)))
    line = eval_error(model_dir, root)
    assert line.endswith("valannot/f0.png: label size 16x8 differs from image f0.png size 16x16")


def test_unknown_config_key(model_dir, tmp_path):
    (tmp_path / "d.yaml").write_text("format: synthetic\nnum_imgs: 4\n")
    line = error_line(run_cli("eval", str(model_dir), "--data", str(tmp_path / "d.yaml")))
    assert line.endswith("d.yaml: unknown key 'num_imgs' (did you mean 'num_images'?)")


def test_bad_model_and_sources(model_dir, tmp_path):
    assert error_line(run_cli("eval", str(tmp_path / "nomodel"), "--data", "synthetic:4")).endswith(
        "nomodel: model directory not found")
    assert error_line(run_cli("predict", str(model_dir), str(tmp_path / "missing.png"))).endswith(
        "missing.png: file not found")
    assert "no CUDA device" in error_line(run_cli("eval", str(model_dir), "--data", "synthetic:4", "--device", "cuda")) \
        or torch.cuda.is_available()


def test_atomic_write_keeps_old_file_when_writing_fails(tmp_path):
    target = tmp_path / "metrics.json"
    atomic_write_text(target, "old")

    def failing(tmp):
        tmp.write_text("half")
        raise RuntimeError("killed")

    from edgeseg.fileio import atomic_write

    with pytest.raises(RuntimeError):
        atomic_write(target, failing)
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["metrics.json"]


def test_model_dir_rewrite_is_atomic(tmp_path):
    model = create_model("basic_encdec", num_classes=CAMVID.num_classes, width=8)
    config = model_config_for(model, CAMVID, (16, 16))
    path = save_model_dir(model, config, tmp_path / "m")
    before = (path / "model.safetensors").read_bytes()

    class Exploding(torch.nn.Module):
        def state_dict(self, *a, **k):
            raise RuntimeError("crash while saving")

    with pytest.raises(RuntimeError):
        save_model_dir(Exploding(), config, path)
    assert (path / "model.safetensors").read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m"]
