"""edgeseg: labelled images to small, fast, sparse, int8 segmentation models.

    from edgeseg import Segmenter       # label images with a model dir, .onnx file or bundle
    edgeseg.train(config, **overrides)     # train as `edgeseg train` does
    edgeseg.evaluate(model, data)         # evaluate as `edgeseg eval` does

The API loads on first use, so that ``edgeseg --help`` and the errors of the command line do
not wait for PyTorch.
"""

import importlib

__version__ = "0.1.0"

_API = ("Segmenter", "evaluate", "train")
__all__ = ["__version__", *_API]


def __getattr__(name: str):
    if name not in _API:
        raise AttributeError(f"module 'edgeseg' has no attribute '{name}'")
    return getattr(importlib.import_module("edgeseg.api"), name)
