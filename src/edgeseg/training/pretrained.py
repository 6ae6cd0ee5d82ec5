"""Optional pretrained weights, only from what the user names: a local .safetensors file,
a model directory, or an explicit http(s) URL. Nothing is ever fetched by default."""

from __future__ import annotations

import hashlib
import urllib.request
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

from edgeseg.errors import ConfigError

CACHE = Path.home() / ".cache" / "edgeseg" / "weights"


def resolve_weights(source: str) -> Path:
    """A local weights file for ``source``; URLs are downloaded once into the cache."""
    if source.startswith(("http://", "https://")):
        target = CACHE / (hashlib.sha256(source.encode()).hexdigest()[:16] + ".safetensors")
        if not target.is_file():
            target.parent.mkdir(parents=True, exist_ok=True)
            tmp = target.with_suffix(".part")
            try:
                urllib.request.urlretrieve(source, tmp)
            except OSError as err:
                raise ConfigError(f"model.pretrained: cannot download {source} ({err})") from None
            tmp.replace(target)
        return target
    path = Path(source)
    if path.is_dir():
        path = path / "model.safetensors"
    if not path.is_file():
        raise ConfigError(f"model.pretrained: {path}: file not found")
    return path


def load_pretrained(model: torch.nn.Module, source: str) -> tuple[int, list[str]]:
    """Copy every tensor whose name and shape match; returns (copied, names of the model's
    tensors left at initialisation).

    Tensors that do not fit (a different class count, another architecture's head) are
    skipped, so a backbone can be reused; if nothing fits, that is an error.
    """
    path = resolve_weights(source)
    try:
        state = load_file(str(path))
    except (SafetensorError, OSError) as err:
        raise ConfigError(f"model.pretrained: {path}: unreadable safetensors file ({err})") from None
    own = model.state_dict()
    fitting = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
    if not fitting:
        raise ConfigError(f"model.pretrained: {path}: no tensor matches this model's names and shapes")
    model.load_state_dict(fitting, strict=False)
    return len(fitting), [name for name in own if name not in fitting]


def describe_unmatched(names: list[str], shown: int = 8) -> str:
    """The modules whose tensors were left at initialisation, grouped by module, a few named."""
    modules = list(dict.fromkeys(name.rsplit(".", 1)[0] for name in names))
    listed = ", ".join(modules[:shown]) + (f" and {len(modules) - shown} more" if len(modules) > shown else "")
    return f"{len(names)} tensors of {len(modules)} modules left at initialisation" + (f": {listed}" if names else "")
