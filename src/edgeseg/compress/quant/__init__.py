"""Quantization passes: finding where quantizers sit, calibrating them, post-training
quantization of a model directory, Blueoil's low-bit conversion. The spec and the quantized
structure a model directory rebuilds live in ``edgeseg.models`` (quant_spec, quantizers,
quantized)."""
