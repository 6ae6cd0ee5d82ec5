"""Net surgery (DIGITS' net_surgery.py): an ImageNet AlexNet classifier "convolutionalized"
into FCN-AlexNet. Its convs are copied by name, fc6 (4096 x 9216) becomes a 6x6 conv
(4096 x 256 x 6 x 6, the flattening order of pool5 is channels, rows, columns), fc7 a 1x1
conv; fc8, the ImageNet classifier, is dropped and the score conv starts at zero as FCN's
does. The weights are a torchvision-layout state dict in a .safetensors file or a .pth file
read with ``weights_only=True`` (tensors only, nothing executed); an http(s) URL is
downloaded only when given explicitly.
"""

from __future__ import annotations

import tempfile
import urllib.request
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

from edgeseg.data.classes import CAMVID, CITYSCAPES, VOC, ClassInfo, generic_classes
from edgeseg.data.formats.common import read_class_names
from edgeseg.errors import ConfigError, ModelError
from edgeseg.models.model_dir import model_config_for, save_model_dir
from edgeseg.models.zoo import create_model

# FCN-AlexNet conv name -> torchvision AlexNet parameter prefix
ALEXNET_LAYERS = {"conv1": "features.0", "conv2": "features.3", "conv3": "features.6", "conv4": "features.8",
                  "conv5": "features.10", "fc6": "classifier.1", "fc7": "classifier.4"}
DROPPED = ("classifier.6",)  # fc8: ImageNet's 1000 classes
ALEXNET_WIDTH = 64  # conv1's filters at width 1.0


def surgery_classes(value: str) -> ClassInfo:
    """A known class set by name (voc, camvid, cityscapes) or a class-labels file (line i names
    class i, DIGITS)."""
    named = {"voc": VOC, "camvid": CAMVID, "cityscapes": CITYSCAPES}
    if value in named:
        return named[value]
    path = Path(value)
    if not path.is_file():
        raise ConfigError(f"classes: '{value}' is neither {', '.join(named)} nor a class-labels file")
    return generic_classes(0, read_class_names(path))


def read_state_dict(source: str | Path) -> dict[str, torch.Tensor]:
    """The tensors of a .safetensors or .pth file (``weights_only``), or of an explicit URL to one."""
    text = str(source)
    if text.startswith(("http://", "https://")):
        suffix = ".safetensors" if text.split("?")[0].endswith(".safetensors") else ".pth"
        with tempfile.TemporaryDirectory() as tmp:
            local = Path(tmp) / f"weights{suffix}"
            try:
                urllib.request.urlretrieve(text, local)
            except OSError as err:
                raise ModelError(f"{text}: cannot download ({err})") from None
            return read_state_dict(local)
    path = Path(source)
    if not path.is_file():
        raise ModelError(f"{path}: file not found")
    try:
        if path.suffix == ".safetensors":
            state = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except (SafetensorError, OSError, RuntimeError, ValueError) as err:
        reason = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise ModelError(f"{path}: unreadable weights ({reason})") from None
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ModelError(f"{path}: not a state dict (name -> tensor)")
    return {k.removeprefix("module."): v for k, v in state.items()}


def convolutionalized_state(state: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], float]:
    """FCN-AlexNet tensors (conv1..fc7) from an AlexNet state dict, and the width they imply."""
    missing = [f"{prefix}.{kind}" for prefix in ALEXNET_LAYERS.values() for kind in ("weight", "bias")
               if f"{prefix}.{kind}" not in state]
    if missing:
        raise ModelError(f"not a torchvision AlexNet state dict (no tensor '{missing[0]}')")
    width = state["features.0.weight"].shape[0] / ALEXNET_WIDTH
    pool5_channels = state["features.10.weight"].shape[0]
    out = {}
    for name, prefix in ALEXNET_LAYERS.items():
        weight, bias = state[f"{prefix}.weight"], state[f"{prefix}.bias"]
        if name == "fc6":
            if weight.shape[1] != pool5_channels * 36:
                raise ModelError(f"'{prefix}.weight' has {weight.shape[1]} inputs; a 6x6 window of "
                                 f"{pool5_channels} pool5 channels has {pool5_channels * 36}")
            weight = weight.reshape(weight.shape[0], pool5_channels, 6, 6)
        elif name == "fc7":
            weight = weight.reshape(*weight.shape, 1, 1)
        out[f"{name}.conv.weight"], out[f"{name}.conv.bias"] = weight.float().contiguous(), bias.float()
    return out, width


def convolutionalize(state: dict[str, torch.Tensor], classes: ClassInfo) -> torch.nn.Module:
    """fcn_alexnet for ``classes`` holding an AlexNet's convs, fc6 and fc7; score_fr zero."""
    tensors, width = convolutionalized_state(state)
    model = create_model("fcn_alexnet", classes.num_classes, **({} if width == 1.0 else {"width": width}))
    own = model.state_dict()
    for key, tensor in tensors.items():
        if own[key].shape != tensor.shape:
            raise ModelError(f"'{key}' has shape {tuple(tensor.shape)}, fcn_alexnet at width {width:g} expects "
                             f"{tuple(own[key].shape)}")
    with torch.no_grad():
        model.score_fr.conv.weight.zero_()
        model.score_fr.conv.bias.zero_()
    model.load_state_dict(tensors, strict=False)
    return model.eval()


def convolutionalize_to_dir(source: str | Path, classes: ClassInfo, out: str | Path,
                            input_size: tuple[int, int] = (500, 500)) -> dict:
    """Write the convolutionalized model as a model directory (atomically); returns what was done."""
    state = read_state_dict(source)
    model = convolutionalize(state, classes)
    mean, std = model.input_normalization
    stage = {"stage": "convolutionalize", "weights": str(source),
             "copied": [prefix for prefix in ALEXNET_LAYERS.values()],
             "dropped": [name for name in DROPPED if f"{name}.weight" in state]}
    config = model_config_for(model, classes, input_size, mean, std, [stage])
    save_model_dir(model, config, out)
    return stage
