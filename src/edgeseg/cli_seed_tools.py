"""Commands for DIGITS' FCN-AlexNet workflow: ``edgeseg data prepare voc`` (the VOC archive
to train/val folders) and ``edgeseg surgery convolutionalize`` (an ImageNet AlexNet to an
fcn_alexnet model directory)."""

from __future__ import annotations

from pathlib import Path

import typer

from edgeseg.cli_app import ForceOption, app, data_app, out
from edgeseg.errors import ConfigError

surgery_app = typer.Typer(no_args_is_help=True, context_settings={"help_option_names": ["-h", "--help"]},
                          rich_markup_mode=None,
                          help="Net surgery: turn a classifier's weights into a model directory.")
app.add_typer(surgery_app, name="surgery")


@data_app.command("prepare")
def data_prepare(
    kind: str = typer.Argument(..., help="archive kind (voc: VOCtrainval_11-May-2012.tar)"),
    archive: Path = typer.Argument(..., help="the downloaded archive"),
    out_dir: Path = typer.Argument(..., help="folder to write train/ and val/ (images/, labels/) and classes.txt into"),
    force: bool = typer.Option(False, "--force", help="replace OUT even if edgeseg did not write it"),
) -> None:
    """Unpack a dataset archive into DIGITS' folder layout (read it as folder:OUT); the archive's
    MD5 is checked when its name is a published one's."""
    from edgeseg.data.prepare import prepare_voc
    from edgeseg.fileio import check_output, mark_output

    if kind != "voc":
        raise ConfigError(f"data prepare: unknown archive kind '{kind}' (known: voc)")
    check_output(out_dir, "data prepare", [archive], force, kind="dir", flag="OUT")
    result = prepare_voc(archive, out_dir)
    mark_output(out_dir, "data prepare")
    out.print(f"checksum: {result['checksum']}; train {result['train']} images, val {result['val']} images")
    out.print(f"wrote {out_dir} (dataset spec folder:{out_dir})")


@surgery_app.command("convolutionalize")
def convolutionalize_command(
    weights: str = typer.Argument(..., help="torchvision-layout AlexNet state dict: .safetensors or .pth "
                                            "(read with weights_only), or an explicit http(s) URL"),
    out_dir: Path = typer.Option(..., "--out", help="the model directory to write"),
    classes: str = typer.Option(..., "--classes", help="voc, camvid, cityscapes or a class-labels file"),
    force: bool = ForceOption,
) -> None:
    """fc6 -> 6x6 conv, fc7 -> 1x1 conv, fc8 dropped: an fcn_alexnet model directory to train
    with model.init_from (DIGITS' net_surgery.py); the pipeline's 'convolutionalize' stage.
    Downloads nothing unless given a URL."""
    from edgeseg.fileio import check_output, mark_output
    from edgeseg.pipeline.stages import STAGES, StageContext, run_stage
    from edgeseg.schema import validate

    spec = validate(STAGES["convolutionalize"].spec, {"weights": weights, "classes": classes}, "surgery options")
    local = [] if weights.startswith(("http://", "https://")) else [weights]
    check_output(out_dir, "surgery", local, force, kind="dir")
    context = StageContext(work_dir=out_dir.with_name(out_dir.name + ".work"),
                           log=lambda line: out.print(line, markup=False, soft_wrap=True))
    run_stage(spec, None, out_dir, context)
    mark_output(out_dir, "surgery")
    out.print(f"wrote {out_dir}")
