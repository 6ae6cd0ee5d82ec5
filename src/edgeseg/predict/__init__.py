"""Prediction in one place: predictors (PyTorch model directories, ONNX files, deploy
bundles), the sources they read (images, folders, globs, list files, videos, cameras), the
outputs they write (label PNGs, overlays with a legend, overlay videos) and the ONNX metadata
that makes an exported file self-describing."""
