"""Every format loader on fixtures generated in its real on-disk layout."""

import numpy as np
import pytest
import yaml
from PIL import Image

from conftest import CAMVID, needs_camvid, random_image, write_image, write_label
from edgeseg.data.classes import VOC, bit_palette
from edgeseg.data.spec import open_dataset, open_source, parse_spec
from edgeseg.errors import ConfigError, DataError

RNG = np.random.default_rng(0)


def flat(colours):
    out = []
    for c in colours:
        out += list(c)
    return out + [0] * (768 - len(out))


def make_camvid(root, with_lists=True, n_train=3, n_val=2, label_values=(0, 3, 10, 11)):
    for split, n in (("train", n_train), ("val", n_val)):
        lines = []
        for i in range(n):
            name = f"0001TP_{split}{i:03d}.png"
            write_image(root / split / name, random_image(RNG, 12, 16))
            write_label(root / f"{split}annot" / name, RNG.choice(label_values, (12, 16)))
            lines.append(f"/SegNet/CamVid/{split}/{name} /SegNet/CamVid/{split}annot/{name}\n")
        if with_lists:
            (root / f"{split}.txt").write_text("".join(lines))
    return root


def test_camvid_segnet_lists_map_prefix_and_void(tmp_path):
    root = make_camvid(tmp_path / "CamVid")
    source = open_source(f"camvid:{root}")
    assert source.split_names() == ["train", "val"]
    ds = source.dataset("train")
    assert len(ds) == 3 and ds.classes.num_classes == 11
    image, label = ds[0]
    assert image.shape == (12, 16, 3) and label.shape == (12, 16)
    assert set(np.unique(label).tolist()) <= {0, 3, 10, 255}  # 11 (void) became the ignore index
    raw = np.asarray(__import__("PIL.Image").Image.open(ds.samples[0].label))
    assert ((raw == 11) == (label == 255)).all()


def test_camvid_plain_folders_without_val_get_seeded_split(tmp_path):
    root = make_camvid(tmp_path / "cv", with_lists=False, n_train=10, n_val=0)
    assert not (root / "val").exists()
    source = open_source(f"camvid:{root}")
    train, val = source.dataset("train"), source.dataset("val")
    assert (len(train), len(val)) == (9, 1)
    assert not {s.name for s in train.samples} & {s.name for s in val.samples}
    again = open_source(f"camvid:{root}").dataset("val")
    assert [s.name for s in again.samples] == [s.name for s in val.samples]


def test_camvid_out_of_range_label_names_file_and_value(tmp_path):
    root = make_camvid(tmp_path / "cv", label_values=(0, 12))
    ds = open_dataset(f"camvid:{root}", "train")
    with pytest.raises(DataError, match=r"0001TP_train000\.png: label values out of range: 12 \(valid: 0-11\)"):
        ds[0]


@needs_camvid
def test_real_camvid_layout():
    source = open_source(f"camvid:{CAMVID}")
    train, val = source.dataset("train"), source.dataset("val")
    assert (len(train), len(val)) == (367, 101)
    image, label = val[0]
    assert image.shape == (360, 480, 3) and label.shape == (360, 480)
    assert set(np.unique(label).tolist()) <= set(range(11)) | {255}


def make_cityscapes(root):
    ids = np.array([[7, 8, 26, 0], [24, 25, 19, 33], [20, 27, 11, 6]])
    for split, city in (("train", "aachen"), ("val", "frankfurt")):
        base = f"{city}_000000_000019"
        write_image(root / "leftImg8bit" / split / city / f"{base}_leftImg8bit.png", random_image(RNG, 3, 4))
        write_label(root / "gtFine" / split / city / f"{base}_gtFine_labelIds.png", ids)
    return root, ids


def test_cityscapes_label_ids_map_to_train_ids(tmp_path):
    root, _ = make_cityscapes(tmp_path / "cs")
    ds = open_dataset(f"cityscapes:{root}", "val")
    assert ds.classes.num_classes == 19
    _, label = ds[0]
    # road, sidewalk, car, unlabeled / person, rider, traffic light, bicycle / sign, truck, building, ground
    assert label.tolist() == [[0, 1, 13, 255], [11, 12, 6, 18], [7, 14, 2, 255]]


def test_cityscapes_jacinto_five_classes(tmp_path):
    root, _ = make_cityscapes(tmp_path / "cs")
    (tmp_path / "cs5.yaml").write_text(yaml.safe_dump({"format": "cityscapes", "root": "cs", "label_set": "jacinto5"}))
    ds = open_dataset(str(tmp_path / "cs5.yaml"), "train")
    assert ds.classes.names == ("background", "road", "person", "road sign", "vehicle")
    _, label = ds[0]
    assert label.tolist() == [[1, 0, 4, 255], [2, 2, 3, 4], [3, 4, 0, 255]]


def test_cityscapes_label_id_above_33_is_refused(tmp_path):
    root, ids = make_cityscapes(tmp_path / "cs")
    label_file = next((root / "gtFine" / "val").rglob("*.png"))
    write_label(label_file, np.full_like(ids, 40))
    with pytest.raises(DataError, match="label values out of range: 40"):
        open_dataset(f"cityscapes:{root}", "val")[0]


def make_voc(root):
    voc = root / "VOCdevkit" / "VOC2012"
    values = np.array([[0, 1, 1], [15, 255, 0]])
    for i, split in enumerate(("train", "val")):
        name = f"2007_00003{i}"
        write_image(voc / "JPEGImages" / f"{name}.jpg", random_image(RNG, 2, 3))
        write_label(voc / "SegmentationClass" / f"{name}.png", values, flat(bit_palette(256)))
        (voc / "ImageSets" / "Segmentation").mkdir(parents=True, exist_ok=True)
        (voc / "ImageSets" / "Segmentation" / f"{split}.txt").write_text(f"{name}\n")
    return root, voc, values


def test_voc_palette_indices_and_255_ignore(tmp_path):
    root, voc, values = make_voc(tmp_path)
    assert bit_palette(16)[1] == (128, 0, 0) and bit_palette(16)[15] == (192, 128, 128)
    ds = open_dataset(f"voc:{root}", "val")
    assert ds.classes.names[15] == "person" and ds.classes.num_classes == 21
    _, label = ds[0]
    assert label.tolist() == values.tolist()


def test_voc_rgb_converted_label_decodes_the_same(tmp_path):
    root, voc, values = make_voc(tmp_path)
    label_file = voc / "SegmentationClass" / "2007_000031.png"
    colours = VOC.colour_lut()[values]
    write_image(label_file, colours)
    _, label = open_dataset(f"voc:{voc}", "val")[0]
    assert label.tolist() == values.tolist()


def make_folder(root, n=4, label_fn=None, split_folders=False):
    for i in range(n):
        base = root / ("train" if split_folders and i < n - 1 else "val" if split_folders else "")
        write_image(base / "images" / f"img{i:02d}.jpg", random_image(RNG, 6, 8))
        values = RNG.integers(0, 3, (6, 8))
        values[0, 0] = 255
        label_fn(base / "labels" / f"img{i:02d}.png", values)
    return root


def test_folder_index_pngs_with_classes_file(tmp_path):
    root = make_folder(tmp_path / "f", n=10, label_fn=write_label)
    (root / "classes.txt").write_text("background\nroad\ncar\n")
    source = open_source(f"folder:{root}")
    assert source.classes.names == ("background", "road", "car")
    assert (len(source.dataset("train")), len(source.dataset("val"))) == (9, 1)
    _, label = source.dataset("train")[0]
    assert label[0, 0] == 255 and label[label < 255].max() <= 2


def test_folder_paletted_labels_and_inferred_classes(tmp_path):
    palette = flat([(10, 20, 30), (40, 50, 60), (70, 80, 90)])
    root = make_folder(tmp_path / "f", label_fn=lambda p, v: write_label(p, v, palette), split_folders=True)
    source = open_source(f"folder:{root}")
    assert source.split_names() == ["train", "val"]
    assert source.classes.num_classes == 3
    assert source.classes.palette == ((10, 20, 30), (40, 50, 60), (70, 80, 90))


def test_folder_rgb_masks_through_colormap(tmp_path):
    colours = [(0, 0, 0), (255, 0, 0), (0, 255, 0)]
    lut = np.array(colours + [(0, 0, 0)] * 252 + [(255, 255, 255)], dtype=np.uint8)
    saved = {}

    def write_rgb(path, values):
        saved[path.stem] = values
        write_image(path, lut[values])

    root = make_folder(tmp_path / "f", label_fn=write_rgb)
    (root / "colormap.txt").write_text("0 0 0\n255 0 0\n0 255 0\n")
    (root / "dataset.yaml").write_text(yaml.safe_dump({"format": "folder", "root": ".", "void_colours": [[255, 255, 255]]}))
    source = open_source(str(root / "dataset.yaml"))
    ds = source.dataset("train")
    for index in range(len(ds)):
        assert ds[index][1].tolist() == saved[ds.sample_name(index)].tolist()
    write_image(root / "labels" / "img00.png", np.full((6, 8, 3), (1, 2, 3), np.uint8))
    ds = open_source(str(root / "dataset.yaml")).dataset("train", check_files=False)
    broken = next(i for i in range(len(ds)) if ds.sample_name(i) == "img00")
    with pytest.raises(DataError, match=r"img00\.png: colours not in the colour map: \(1 2 3\)"):
        ds[broken]


def test_list_pairs_and_two_lists(tmp_path):
    for i in range(3):
        write_image(tmp_path / "imgs" / f"a{i}.png", random_image(RNG, 4, 4))
        write_label(tmp_path / "lbls" / f"a{i}.png", np.full((4, 4), i))
    (tmp_path / "pairs.txt").write_text("".join(f"imgs/a{i}.png lbls/a{i}.png\n" for i in range(3)))
    (tmp_path / "images.txt").write_text("".join(f"imgs/a{i}.png\n" for i in range(3)))
    (tmp_path / "labels.txt").write_text("".join(f"lbls/a{i}.png\n" for i in range(3)))
    (tmp_path / "classes.txt").write_text("x\ny\nz\n")
    one = open_source(f"list:{tmp_path / 'pairs.txt'}")
    two = open_source(f"list:{tmp_path / 'images.txt'},{tmp_path / 'labels.txt'}")
    assert one.classes.names == ("x", "y", "z")
    for source in (one, two):
        ds = source.dataset("train")
        assert len(ds) + len(source.dataset("val")) == 3
        for i in range(len(ds)):
            assert int(ds[i][1][0, 0]) == int(ds.sample_name(i)[1])
    (tmp_path / "bad.txt").write_text("imgs/a0.png\n")
    with pytest.raises(DataError, match=r"bad\.txt:1: expected 'IMAGE LABEL'"):
        open_source(f"list:{tmp_path / 'bad.txt'}")


def test_synthetic_is_seeded_sized_and_covers_all_classes(tmp_path):
    ds = open_dataset("synthetic:16", "train")
    assert len(ds) == 16 and ds.classes.num_classes == 11
    a, b = ds[3], ds[3]
    assert (a[0] == b[0]).all() and (a[1] == b[1]).all()
    assert not (ds[4][0] == a[0]).all()
    assert not (open_dataset("synthetic:16", "val")[3][0] == a[0]).all()
    seen = np.zeros(256, int)
    for i in range(len(ds)):
        seen += np.bincount(ds[i][1].ravel(), minlength=256)
    assert (seen[:11] > 0).all() and seen[11:255].sum() == 0
    (tmp_path / "s.yaml").write_text("format: synthetic\nnum_images: 2\nheight: 64\nwidth: 96\n")
    image, label = open_dataset(str(tmp_path / "s.yaml"), "test")[0]
    assert image.shape == (64, 96, 3) and label.shape == (64, 96)


def test_spec_errors_are_one_line_config_errors(tmp_path):
    with pytest.raises(ConfigError, match="unknown format 'camvd' \\(did you mean 'camvid:'\\?\\)"):
        parse_spec("camvd:/x")
    (tmp_path / "d.yaml").write_text("format: folder\nroot: .\nclases: [a]\n")
    with pytest.raises(ConfigError, match=r"d\.yaml: unknown key 'clases' \(did you mean 'classes'\?\)"):
        parse_spec(str(tmp_path / "d.yaml"))
    with pytest.raises(DataError, match="no split 'tset'"):
        open_dataset("synthetic:4", "tset")


def test_cache_returns_the_decoded_samples_without_rereading(tmp_path):
    root = make_camvid(tmp_path / "cv")
    ds = open_dataset(f"camvid:{root}", "train", cache=True).preload()
    first = ds[1]
    (root / "trainannot" / ds.samples[1].label.name).unlink()  # gone from disk, still served
    again = ds[1]
    assert (first[0] == again[0]).all() and (first[1] == again[1]).all()


def write_channel_folder(root, sizes=((8, 10),) * 5):
    """images/ (an RGB, a grey 'L', an RGBA and a paletted image, then RGB ones) and labels/ of
    the given (height, width) sizes; 3 classes."""
    palette = flat([(10, 200, 30), (250, 0, 90), (5, 5, 5)])
    for i, (h, w) in enumerate(sizes):
        rgb = random_image(RNG, h, w)
        image = [Image.fromarray(rgb), Image.fromarray(rgb).convert("L"), Image.fromarray(rgb).convert("RGBA"),
                 Image.fromarray(RNG.integers(0, 3, (h, w)).astype(np.uint8), mode="P")][i % 4]
        if image.mode == "P":
            image.putpalette(palette)
        (root / "images").mkdir(parents=True, exist_ok=True)
        image.save(root / "images" / f"c{i}.png")
        write_label(root / "labels" / f"c{i}.png", RNG.integers(0, 3, (h, w)))
    (root / "classes.txt").write_text("a\nb\nc\n")
    return root


def test_channels_gray_is_luminance_on_three_channels_and_as_is_keeps_grey(tmp_path):
    root = write_channel_folder(tmp_path / "f")
    (root / "d.yaml").write_text("format: folder\nroot: .\nval_fraction: 0.2\nchannels: gray\n")
    dataset = open_dataset(str(root / "d.yaml"), "train")
    for index in range(len(dataset)):
        image, _ = dataset[index]
        stored = Image.open(dataset.samples[index].image)
        reference = np.asarray(stored.convert("L"))
        assert image.shape == (*reference.shape, 3) and image.dtype == np.uint8
        assert all((image[..., c] == reference).all() for c in range(3))
    (root / "d.yaml").write_text("format: folder\nroot: .\nval_fraction: 0.2\nchannels: as_is\n")
    as_is = open_dataset(str(root / "d.yaml"), "train")
    rgb = open_dataset(f"folder:{root}", "train")
    for index in range(len(as_is)):
        stored = Image.open(as_is.samples[index].image)
        image = as_is[index][0]
        if stored.mode == "L":  # stays grey: the stored value on all 3 channels
            assert all((image[..., c] == np.asarray(stored)).all() for c in range(3))
        else:  # palette / RGBA / RGB: what the model cannot take becomes RGB
            assert (image == np.asarray(stored.convert("RGB"))).all()
        assert (rgb[index][0] == np.asarray(stored.convert("RGB"))).all()
    (root / "d.yaml").write_text("format: folder\nroot: .\nchannels: L\n")
    with pytest.raises(ConfigError, match=r"d\.yaml: bad value for 'channels': Input should be 'rgb', 'gray' or 'as_is'"):
        parse_spec(str(root / "d.yaml"))
    (tmp_path / "s.yaml").write_text("format: synthetic\nchannels: gray\n")
    with pytest.raises(ConfigError, match="channels: a synthetic dataset is generated in RGB"):
        open_source(str(tmp_path / "s.yaml"))


def test_same_shape_names_the_odd_file_in_the_doctor_and_when_opened(tmp_path):
    from edgeseg.data.doctor import check_dataset

    root = write_channel_folder(tmp_path / "f", sizes=[(8, 10)] * 3 + [(12, 10)] + [(8, 10)] * 2)
    write_label(root / "labels" / "c5.png", RNG.integers(0, 3, (8, 9)))  # image 10 wide, label 9
    open_dataset(f"folder:{root}", "train")  # without same_shape: sizes may differ
    (root / "d.yaml").write_text("format: folder\nroot: .\nval_fraction: 0.2\nsame_shape: true\n")
    with pytest.raises(DataError, match=r"^\S+/(images/c3\.png: size 10x12|labels/c3\.png: size 10x12|labels/c5\.png: "
                                        r"size 9x8) differs from the dataset's size 10x8 \(9 files; same_shape: "
                                        r"true\) \(and 2 more odd files\)$"):
        open_dataset(str(root / "d.yaml"), "val")
    report = check_dataset(open_source(str(root / "d.yaml")))
    problems = [p for split in report.splits for p in split.problems]
    odd = sorted(p.split(": ")[0] for p in problems if "same_shape: true" in p)
    assert odd == [str(root / "images" / "c3.png"), str(root / "labels" / "c3.png"), str(root / "labels" / "c5.png")]
    assert not report.clean
