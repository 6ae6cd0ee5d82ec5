"""edgeseg: labelled images to small, fast, sparse, int8 segmentation models."""

__version__ = "0.1.0"
