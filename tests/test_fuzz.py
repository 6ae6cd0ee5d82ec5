"""Fuzzing the readers a user's files reach: image and label decoding, the config loader,
dataset specs. The only outcomes allowed are success or an edgeseg error of one line."""

import io
import string
import warnings

import numpy as np
import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from edgeseg.data.imageio import LabelCoding, read_image, read_label_raw
from edgeseg.data.doctor import check_dataset
from edgeseg.data.spec import open_source, parse_spec
from edgeseg.errors import EdgesegError
from edgeseg.training.config import load_train_config

FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
PNG_MODES = ["1", "L", "P", "I", "I;16", "RGB", "RGBA", "LA", "PA", "F"]
SAVE_AS = {"F": "TIFF", "PA": "TIFF"}


def outcome(call) -> str:
    """Run ``call``; 'ok', or the error's message after checking it is one edgeseg line."""
    try:
        call()
    except EdgesegError as err:
        message = str(err)
        assert message and "\n" not in message, repr(message)
        return message
    return "ok"


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    return tmp_path_factory.mktemp("fuzz")


def read_all(path):
    outcome(lambda: read_image(path))
    outcome(lambda: LabelCoding.identity(3).decode(path))
    outcome(lambda: read_label_raw(path))


@FUZZ
@given(data=st.binary(max_size=2048), header=st.sampled_from([b"", b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff", b"GIF89a",
                                                               b"BM", b"II*\x00", b"RIFF"]))
def test_random_bytes(work, data, header):
    path = work / "bytes.png"
    path.write_bytes(header + data)
    read_all(path)


@st.composite
def encoded_images(draw):
    mode = draw(st.sampled_from(PNG_MODES))
    h, w = draw(st.integers(1, 48)), draw(st.integers(1, 48))
    seed = draw(st.integers(0, 2**31))
    rng = np.random.default_rng(seed)
    image = Image.new(mode, (w, h))
    if mode == "F":
        image = Image.fromarray(rng.normal(0, 100, (h, w)).astype(np.float32), "F")
    elif mode in ("I", "I;16"):
        image = Image.fromarray(rng.integers(0, 2**16, (h, w)).astype(np.uint16 if mode == "I;16" else np.int32))
    else:
        image.frombytes(rng.integers(0, 256, len(image.tobytes()), dtype=np.uint8).tobytes())
    if mode in ("P", "PA"):
        image.putpalette(rng.integers(0, 256, 3 * draw(st.integers(1, 256)), dtype=np.uint8).tolist())
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        image.save(buffer, SAVE_AS.get(mode, "PNG"))
    data = buffer.getvalue()
    cut = draw(st.one_of(st.none(), st.integers(0, len(data))))
    return data if cut is None else data[:cut]


@FUZZ
@given(data=encoded_images())
def test_random_png_modes_sizes_and_truncations(work, data):
    path = work / "image.png"
    path.write_bytes(data)
    read_all(path)


yaml_scalars = st.one_of(st.none(), st.booleans(), st.integers(-10**6, 10**6), st.floats(allow_nan=True),
                         st.text(string.printable, max_size=12))
config_keys = st.sampled_from(["epochs", "batch_size", "name", "data", "spec", "model", "args", "width", "augment",
                               "crop", "optimizer", "lr", "schedule", "name", "history", "seed", "runs_dir",
                               "loss", "quantize", "scheme", "x", "1"])
yaml_values = st.recursive(yaml_scalars, lambda inner: st.one_of(
    st.lists(inner, max_size=4), st.dictionaries(config_keys, inner, max_size=5)), max_leaves=12)


@FUZZ
@given(value=yaml_values)
def test_random_yaml_structures(work, value):
    path = work / "config.yaml"
    path.write_text(yaml.safe_dump(value))
    outcome(lambda: load_train_config(path))


@FUZZ
@given(text=st.text(max_size=300))
def test_random_yaml_text(work, text):
    path = work / "config.yaml"
    path.write_bytes(text.encode("utf-8", errors="replace"))
    outcome(lambda: load_train_config(path))
    outcome(lambda: load_train_config(None, [text]))


@FUZZ
@given(spec=st.text(max_size=40))
def test_random_dataset_specs(spec):
    outcome(lambda: parse_spec(spec))


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(label=st.one_of(encoded_images(), st.binary(max_size=512)), size=st.integers(1, 48))
def test_random_label_files_in_a_folder_dataset(work, label, size):
    root = work / "folder"
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "labels").mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (size, size)).save(root / "images" / "a.png")
    (root / "labels" / "a.png").write_bytes(label)

    def read():
        source = open_source(f"folder:{root}")
        source.dataset("train").read(0)

    outcome(read)
    outcome(lambda: check_dataset(open_source(f"folder:{root}")))


list_text = st.lists(st.sampled_from(list("ab ./\n\t#,0123456789") + ["a.png", "b.png", "x/", "255", "-1", "\n"]),
                     max_size=30).map("".join)


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(pairs=list_text, classes=list_text, colours=list_text)
def test_random_list_class_and_colour_files(work, pairs, classes, colours):
    root = work / "lists"
    root.mkdir(exist_ok=True)
    Image.new("RGB", (8, 8)).save(root / "a.png")
    Image.new("L", (8, 8)).save(root / "b.png")
    (root / "train.txt").write_text(pairs)
    (root / "classes.txt").write_text(classes)
    (root / "colormap.txt").write_text(colours)

    def read():
        source = open_source(f"list:{root / 'train.txt'}")
        dataset = source.dataset("train")
        for index in range(len(dataset)):
            dataset.read(index)

    outcome(read)
