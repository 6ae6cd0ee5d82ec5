"""Architectures, the blocks they are made of, and model directories.

The names below load on first use, so that importing a schema from ``edgeseg.models`` (say,
``edgeseg.models.quant_spec``) does not import PyTorch.
"""

import importlib

_EXPORTS = {
    "LoadedModel": "edgeseg.models.model_dir", "ModelConfig": "edgeseg.models.model_dir",
    "load_model_dir": "edgeseg.models.model_dir", "model_config_for": "edgeseg.models.model_dir",
    "save_model_dir": "edgeseg.models.model_dir", "create_model": "edgeseg.models.zoo",
    "list_models": "edgeseg.models.zoo", "register_model": "edgeseg.models.registry",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'edgeseg.models' has no attribute '{name}'")
    return getattr(importlib.import_module(_EXPORTS[name]), name)
