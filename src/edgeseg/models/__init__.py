"""Architectures, the blocks they are made of, and model directories."""

from edgeseg.models.model_dir import LoadedModel, ModelConfig, load_model_dir, model_config_for, save_model_dir
from edgeseg.models.registry import create_model, list_models, register_model

__all__ = ["LoadedModel", "ModelConfig", "create_model", "list_models", "load_model_dir",
           "model_config_for", "register_model", "save_model_dir"]
