"""The cost of writing a label map as a paletted PNG, per zlib level, on real label maps:
the per-frame encode that `edgeseg predict` and a bundle's run.py pay (they use
edgeseg.predict.outputs.LABEL_PNG_LEVEL).

    python bench/label_png.py [--labels ../shared/data/camvid/valannot] [--count 20] [--rounds 3]
"""

from __future__ import annotations

import argparse
import io
import platform
import statistics
import time
from pathlib import Path

import numpy as np
from PIL import Image

from edgeseg.data.classes import CAMVID
from edgeseg.predict.outputs import LABEL_PNG_LEVEL


def encode(label: np.ndarray, palette: list[int], level: int) -> bytes:
    image = Image.fromarray(label, mode="P")
    image.putpalette(palette)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", compress_level=level)
    return buffer.getvalue()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--labels", type=Path, default=Path("../shared/data/camvid/valannot"))
    parser.add_argument("--count", type=int, default=20, help="label files read")
    parser.add_argument("--rounds", type=int, default=3, help="encodes of each file per level")
    args = parser.parse_args()
    files = sorted(args.labels.glob("*.png"))[:args.count]
    if not files:
        raise SystemExit(f"error: {args.labels}: no PNG label files")
    labels = [np.asarray(Image.open(f), dtype=np.uint8) for f in files]
    palette = CAMVID.flat_palette()
    print(f"{len(labels)} label maps of {labels[0].shape[0]}x{labels[0].shape[1]} from {args.labels}, "
          f"{args.rounds} rounds; {platform.processor() or platform.machine()}")
    print("| zlib level | median ms | median KB |")
    print("|---:|---:|---:|")
    for level in (6, LABEL_PNG_LEVEL):
        times, sizes = [], []
        for _ in range(args.rounds):
            for label in labels:
                started = time.perf_counter()
                sizes.append(len(encode(label, palette, level)))
                times.append(1000 * (time.perf_counter() - started))
        print(f"| {level}{' (used)' if level == LABEL_PNG_LEVEL else ' (PIL default)'} | "
              f"{statistics.median(times):.2f} | {statistics.median(sizes) / 1024:.1f} |")


if __name__ == "__main__":
    main()
