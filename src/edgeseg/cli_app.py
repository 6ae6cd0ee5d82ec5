"""The command line's app objects and the options several commands share."""

from __future__ import annotations

import sys

import typer
from rich.console import Console

from edgeseg import __version__
from edgeseg.predict.frames import DEFAULT_WORKERS

HELP_OPTIONS = {"help_option_names": ["-h", "--help"]}
app = typer.Typer(no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False,
                  context_settings=HELP_OPTIONS, rich_markup_mode=None,
                  help="Train, compress, export and run small fast segmentation models.")
data_app = typer.Typer(no_args_is_help=True, context_settings=HELP_OPTIONS, rich_markup_mode=None,
                       help="Dataset tools: the label doctor, list files and archive preparation.")
app.add_typer(data_app, name="data")
# markup off: our messages hold paths and "[val]"-like text that rich would take for tags
out = Console(highlight=False, markup=False, width=None if sys.stdout.isatty() else 160)

DeviceOption = typer.Option("auto", "--device", help="auto, cpu, cuda or cuda:N")
ThreadsOption = typer.Option(None, "--threads", min=1, help="CPU threads for inference (default: all)")
WorkersOption = typer.Option(DEFAULT_WORKERS, "--workers", min=0,
                             help="threads that decode, encode and write images while the model runs "
                                  "(0: one step after the other; the outputs are the same)")
TTAOption = typer.Option(None, "--tta", help="test-time augmentation, off by default: flip and/or scales, e.g. "
                                             "'flip' or 'flip,0.75,1.25' (softmax averaged; one forward pass per view)")


def with_tta(predictor, tta: str | None):
    """``predictor`` itself, or with ``tta`` its test-time-augmented wrapper."""
    if not tta:
        return predictor
    from edgeseg.predict.tta import TTAPredictor, parse_tta

    return TTAPredictor(predictor, parse_tta(tta))


def _print_version(value: bool) -> None:
    if value:
        print(f"edgeseg {__version__}")
        raise typer.Exit()


@app.callback()
def main_options(version: bool = typer.Option(False, "--version", "-V", callback=_print_version, is_eager=True,
                                              help="print the edgeseg version and exit")) -> None:
    """Train, compress, export and run small fast segmentation models."""


def set_threads(threads: int | None) -> None:
    """Use ``threads`` CPU threads for PyTorch and for the ONNX Runtime sessions made after."""
    if threads:
        import torch

        torch.set_num_threads(threads)


def after_warmup(milliseconds: list[float]) -> float:
    """The median time, leaving out the first (warm-up) run when there are others."""
    times = sorted(milliseconds[1:] or milliseconds)
    return times[len(times) // 2]


OutOption = typer.Option(..., "--out", help="the model directory to write")
DataOption = typer.Option(None, "--data", help="dataset spec the stage checks (and calibrates) on; default: the one "
                                               "the model was trained on")
SplitOption = typer.Option("val", "--split", help="the split the stage checks on")
ForceOption = typer.Option(False, "--force", help="replace --out even if edgeseg did not write it")
