"""Compression passes: each works on a model in memory; the ``*_model_dir`` functions are
the stages (model directory in, model directory and metrics out)."""
