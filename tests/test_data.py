"""Behaviour of infosam_hf.data: SAM geometry, mask binarisation, prompts, batching, sources, errors."""

from __future__ import annotations

import csv
import io
import json
import logging
import tarfile

import datasets
import numpy as np
import PIL.Image
import pytest
import torch
from helpers import instance_row
from PIL import Image
from transformers import SamModel

from infosam_hf.data import (
    PAD_LABEL,
    CorruptSampleLog,
    PromptSampler,
    SamSegmentationCollator,
    SamSegmentationPreprocessor,
    load_segmentation_dataset,
    prepare_dataset,
    split_for_process,
)
from infosam_hf.synthetic import make_synthetic_sample, write_synthetic_dataset
from infosam_hf.testing import tiny_sam_config

S = 64
BATCH_KEYS_BOX = {"pixel_values", "gt_masks", "original_sizes", "reshaped_input_sizes", "input_boxes"}
BATCH_KEYS_POINTS = {
    "pixel_values",
    "gt_masks",
    "original_sizes",
    "reshaped_input_sizes",
    "input_points",
    "input_labels",
}


def random_image(height, width, seed=0, channels=3):
    rng = np.random.default_rng(seed)
    shape = (height, width, channels) if channels > 1 else (height, width)
    return rng.integers(0, 256, size=shape, dtype=np.uint8)


def rect_mask(height, width, top, bottom, left, right, value=255, dtype=np.uint8):
    mask = np.zeros((height, width), dtype=dtype)
    mask[top : bottom + 1, left : right + 1] = value
    return mask


def sam_processor(size=S, **kwargs):
    from transformers import SamImageProcessor, SamProcessor

    return SamProcessor(
        image_processor=SamImageProcessor(
            size={"longest_edge": size}, pad_size={"height": size, "width": size}, **kwargs
        )
    )


@pytest.fixture
def pre():
    return SamSegmentationPreprocessor(image_size=S)


# --------------------------------------------------------------------------- geometry


def test_rectangle_lands_where_nearest_neighbour_puts_it(pre):
    # 60x80 (HxW) -> longest side 80 -> 64: scale 0.8, reshaped 48x64, padded to 64x64.
    image = random_image(60, 80)
    mask = rect_mask(60, 80, top=10, bottom=29, left=20, right=59)
    out = pre(image, mask)
    assert out["pixel_values"].shape == (3, S, S) and out["pixel_values"].dtype == np.float32
    assert out["gt_masks"].shape == (1, S, S) and out["gt_masks"].dtype == np.float32
    assert out["original_sizes"].tolist() == [60, 80] and out["original_sizes"].dtype == np.int64
    assert out["reshaped_input_sizes"].tolist() == [48, 64] and out["reshaped_input_sizes"].dtype == np.int64
    expected = np.zeros((S, S), np.float32)
    expected[8:24, 16:48] = 1  # source rows 10..29 / cols 20..59 under pixel-centre nearest sampling
    np.testing.assert_array_equal(out["gt_masks"][0], expected)
    assert np.all(out["pixel_values"][:, 48:, :] == 0)  # bottom padding, zero in normalised space


@pytest.mark.parametrize("shape", [(50, 70), (70, 50), (64, 64), (20, 30)])
def test_pixel_values_match_samprocessor(pre, shape):
    image = PIL.Image.fromarray(random_image(*shape, seed=sum(shape)))
    reference = sam_processor()(images=image, return_tensors="np")
    out = pre(image)
    # Without torchvision SamProcessor falls back to its PIL backend; we resize as its default torchvision backend
    # does (tests/test_sam2_processor_reference.py), which rounds a few pixels one grey level apart from Pillow's.
    difference = np.abs(out["pixel_values"] - reference["pixel_values"][0])
    assert difference.max() <= 1.01 / 255 / min(pre.image_std), difference.max()
    assert (difference > 1e-5).mean() < 0.01
    assert out["reshaped_input_sizes"].tolist() == list(reference["reshaped_input_sizes"][0])
    assert out["original_sizes"].tolist() == list(reference["original_sizes"][0])


def test_from_processor_reads_size_mean_and_std():
    processor = sam_processor(size=48, image_mean=[0.5, 0.5, 0.5], image_std=[0.25, 0.5, 1.0])
    pre = SamSegmentationPreprocessor.from_processor(processor)
    assert pre.image_size == 48 and pre.image_mean == (0.5, 0.5, 0.5) and pre.image_std == (0.25, 0.5, 1.0)
    assert SamSegmentationPreprocessor.from_processor(processor.image_processor).image_size == 48
    image = PIL.Image.fromarray(random_image(30, 40, seed=3))
    np.testing.assert_allclose(
        pre(image)["pixel_values"], processor(images=image, return_tensors="np")["pixel_values"][0], atol=1e-5
    )


def test_image_modes_rgba_grayscale_16bit(pre):
    rgb = random_image(40, 40, seed=1)
    base = pre(rgb)["pixel_values"]
    rgba = np.concatenate([rgb, np.full((40, 40, 1), 7, np.uint8)], axis=-1)
    np.testing.assert_array_equal(pre(PIL.Image.fromarray(rgba, "RGBA"))["pixel_values"], base)  # alpha dropped
    np.testing.assert_array_equal(pre(rgba)["pixel_values"], base)
    # 16-bit: full range mapped to 8 bits (PIL's own convert would clip everything above 255 to white)
    np.testing.assert_array_equal(pre(rgb.astype(np.uint16) * 257)["pixel_values"], base)
    gray = random_image(S, S, seed=2, channels=1)  # no resize, so raw values are comparable
    gray16 = PIL.Image.fromarray(gray.astype(np.uint16) * 257)
    assert gray16.mode.startswith("I")
    out_gray = pre(PIL.Image.fromarray(gray))["pixel_values"]
    np.testing.assert_array_equal(pre(gray16)["pixel_values"], out_gray)
    # grayscale: one intensity replicated to the three channels before normalisation
    std, mean = np.array(pre.image_std)[:, None, None], np.array(pre.image_mean)[:, None, None]
    raw = out_gray * std + mean
    np.testing.assert_allclose(raw[0], raw[1], atol=1e-5)
    np.testing.assert_allclose(raw[0], gray / 255.0, atol=1e-5)


def _png_roundtrip(image: PIL.Image.Image, fmt="PNG", **kwargs) -> PIL.Image.Image:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **kwargs)
    return PIL.Image.open(io.BytesIO(buffer.getvalue()))


def _mask_variants():
    truth = rect_mask(S, S, 10, 40, 5, 30, value=1)
    palette = PIL.Image.fromarray((truth * 2).astype(np.uint8), "P")
    palette.putpalette([255, 255, 255, 0, 0, 0, 200, 0, 0] + [0] * (256 * 3 - 9))  # index 0 is white!
    rgb = np.zeros((S, S, 3), np.uint8)
    rgb[truth > 0] = (200, 0, 0)
    return truth, {
        "0/1": PIL.Image.fromarray(truth),
        "0/255": PIL.Image.fromarray(truth * 255),
        "palette": _png_roundtrip(palette),
        "16bit 0/65535": _png_roundtrip(PIL.Image.fromarray(truth.astype(np.uint16) * 65535)),
        "16bit 0/1000": PIL.Image.fromarray(truth.astype(np.uint16) * 1000),
        "rgb": PIL.Image.fromarray(rgb),
        "bool array": truth.astype(bool),
        "float array": truth.astype(np.float32),
        "jpeg": _png_roundtrip(PIL.Image.fromarray(truth * 255), "JPEG", quality=60),
        "label ids": PIL.Image.fromarray(truth * 3),
    }


@pytest.mark.parametrize("kind", list(_mask_variants()[1]))
def test_mask_binarisation(pre, kind):
    truth, variants = _mask_variants()
    mask = variants[kind]
    out = pre(random_image(S, S), mask)["gt_masks"][0]
    assert set(np.unique(out)) <= {0.0, 1.0}
    if kind == "jpeg":  # compression noise near the edges: nearly equal, and no background speckle
        assert np.mean(out != truth) < 0.01
        assert out[50:, 40:].sum() == 0
    else:
        np.testing.assert_array_equal(out, truth)


def test_size_mismatch_is_a_clear_error(pre):
    with pytest.raises(ValueError, match=r"sample cat\.png.*image is 40x30.*mask is 20x15.*resize the mask"):
        pre(random_image(30, 40), np.zeros((15, 20), np.uint8), source="cat.png")


# --------------------------------------------------------------------------- prompts


def _fg_mask(top=10, bottom=30, left=12, right=40, size=S):
    mask = np.zeros((1, size, size), np.float32)
    mask[0, top : bottom + 1, left : right + 1] = 1
    return mask


def test_box_contains_mask_bbox_within_jitter():
    mask = _fg_mask()  # 29 x 21 px box
    tight = np.array([12, 10, 40, 30], np.float32)
    bound = np.array([2.9, 2.1, 2.9, 2.1])  # box_noise x side along each axis
    sampler = PromptSampler(box_noise=0.1, max_box_noise=None, seed=1)
    boxes = np.stack([sampler.box(mask, (48, 64)) for _ in range(200)])
    assert boxes.dtype == np.float32 and boxes.shape == (200, 4)
    assert np.all(np.abs(boxes - tight) <= bound + 1e-5)
    assert np.all(np.abs(boxes - tight).max(axis=0) > 0.5 * bound)  # it is actually jittered
    np.testing.assert_allclose(boxes[:, 2] - boxes[:, 0], 28, atol=1e-4)  # the reference translates the box
    np.testing.assert_allclose(boxes[:, 3] - boxes[:, 1], 20, atol=1e-4)
    np.testing.assert_array_equal(PromptSampler(box_noise=0.0).box(mask), tight)


@pytest.mark.parametrize("jitter", ["shift", "corners"])
def test_box_jitter_pixel_cap_scales_with_the_frame(jitter):
    mask = _fg_mask()
    tight = np.array([12, 10, 40, 30], np.float32)
    # the cap is given at SAM's 1024 px and scales with the frame: 16 px at 1024 -> 1 px at 64
    capped = PromptSampler(box_noise=0.1, max_box_noise=16, box_jitter=jitter, seed=1)
    assert np.abs(np.stack([capped.box(mask) for _ in range(100)]) - tight).max() <= 1 + 1e-5


def test_box_corner_jitter_is_gaussian_in_box_side_units():
    mask = _fg_mask()
    tight = np.array([12, 10, 40, 30], np.float32)
    sampler = PromptSampler(box_noise=0.1, max_box_noise=None, box_jitter="corners", seed=2)
    noise = np.stack([sampler.box(mask) for _ in range(2000)]) - tight  # no clipping: the box is far from edges
    np.testing.assert_allclose(noise.std(axis=0), [2.9, 2.1, 2.9, 2.1], rtol=0.1)
    np.testing.assert_allclose(noise.mean(axis=0), 0, atol=0.2)


def test_box_clipped_to_image_near_border():
    mask = _fg_mask(top=0, bottom=20, left=0, right=63)
    sampler = PromptSampler(box_noise=0.5, max_box_noise=None, box_jitter="corners", seed=0)
    boxes = np.stack([sampler.box(mask) for _ in range(100)])
    assert boxes.min() >= 0 and boxes.max() <= S - 1


def test_points_lie_on_foreground_and_negatives_on_background():
    mask = _fg_mask()
    sampler = PromptSampler(num_points=3, num_negative_points=2, seed=4)
    for _ in range(50):
        coords, labels = sampler.points(mask, (48, 64))
        assert coords.shape == (5, 2) and coords.dtype == np.float32 and labels.dtype == np.int64
        assert labels.tolist() == [1, 1, 1, 0, 0]
        xs, ys = coords[:, 0].astype(int), coords[:, 1].astype(int)
        assert np.all(mask[0, ys[:3], xs[:3]] == 1)
        assert np.all(mask[0, ys[3:], xs[3:]] == 0) and np.all(ys[3:] < 48)  # background inside the image


def test_prompts_are_deterministic_under_seed():
    mask = _fg_mask()
    a, b, c = PromptSampler(seed=7), PromptSampler(seed=7), PromptSampler(seed=8)
    draws_a = [a.points(mask)[0].tolist() + a.box(mask).tolist() for _ in range(20)]
    draws_b = [b.points(mask)[0].tolist() + b.box(mask).tolist() for _ in range(20)]
    draws_c = [c.points(mask)[0].tolist() + c.box(mask).tolist() for _ in range(20)]
    assert draws_a == draws_b and draws_a != draws_c


def test_empty_mask_policy():
    empty = np.zeros((1, S, S), np.float32)
    sampler = PromptSampler(num_points=2, num_negative_points=1, seed=0)
    # box: the whole valid (unpadded) image
    np.testing.assert_array_equal(sampler.box(empty, (48, 64)), [0, 0, 63, 47])
    # points: random points of the valid image, all labelled background
    for _ in range(20):
        coords, labels = sampler.points(empty, (48, 64))
        assert labels.tolist() == [0, 0, 0]
        assert np.all(coords[:, 1] < 48) and np.all(coords[:, 0] < 64)


def test_full_mask_negative_points_are_padding():
    full = np.ones((1, S, S), np.float32)
    coords, labels = PromptSampler(num_points=1, num_negative_points=2).points(full)
    assert labels.tolist() == [1, PAD_LABEL, PAD_LABEL]


# --------------------------------------------------------------------------- collator


def _features(pre, n=4, seed=0, empty_index=None):
    features = []
    for i in range(n):
        height, width = (48, 64) if i % 2 else (64, 40)
        mask = rect_mask(height, width, 5 + i, 30, 8, 35, value=1)
        if i == empty_index:
            mask[:] = 0
        features.append(pre(random_image(height, width, seed=seed + i), mask))
    return features


def test_collator_shapes_dtypes_and_exact_keys(pre):
    features = _features(pre)
    boxes = SamSegmentationCollator(PromptSampler(box_probability=1.0))(features)
    assert set(boxes) == BATCH_KEYS_BOX
    assert boxes["pixel_values"].shape == (4, 3, S, S) and boxes["pixel_values"].dtype == torch.float32
    assert boxes["gt_masks"].shape == (4, 1, S, S) and boxes["gt_masks"].dtype == torch.float32
    assert boxes["input_boxes"].shape == (4, 1, 4) and boxes["input_boxes"].dtype == torch.float32
    for key in ("original_sizes", "reshaped_input_sizes"):
        assert boxes[key].shape == (4, 2) and boxes[key].dtype == torch.int64
    points = SamSegmentationCollator(PromptSampler(box_probability=0.0, num_points=2, num_negative_points=1))(features)
    assert set(points) == BATCH_KEYS_POINTS
    assert points["input_points"].shape == (4, 1, 3, 2) and points["input_points"].dtype == torch.float32
    assert points["input_labels"].shape == (4, 1, 3) and points["input_labels"].dtype == torch.int64


def test_collator_batch_runs_through_sam_model(pre):


    torch.manual_seed(0)
    model = SamModel(tiny_sam_config(image_size=S)).eval()
    features = _features(pre, n=2, empty_index=1)
    for prompt_type in ("box", "points"):
        batch = SamSegmentationCollator(PromptSampler(num_negative_points=1), prompt_type=prompt_type)(features)
        with torch.no_grad():
            out = model(**{k: v for k, v in batch.items() if k != "gt_masks"}, multimask_output=False)
        assert out.pred_masks.shape[:3] == (2, 1, 1)


def test_collator_mixes_per_batch_and_is_deterministic(pre):
    features = _features(pre, n=2)

    def run(seed):
        collator = SamSegmentationCollator(PromptSampler(box_probability=0.5, seed=seed))
        return [collator(features) for _ in range(60)]

    first, again, other = run(0), run(0), run(1)
    kinds = ["box" if "input_boxes" in b else "points" for b in first]
    assert 15 < kinds.count("box") < 45  # both kinds, roughly 50/50
    for x, y in zip(first, again):
        assert x.keys() == y.keys() and all(torch.equal(x[k], y[k]) for k in x)
    assert any(x.keys() != y.keys() or not all(torch.equal(x[k], y[k]) for k in x) for x, y in zip(first, other))


def test_collator_fixed_prompt_type(pre):
    features = _features(pre, n=2)
    box = SamSegmentationCollator(PromptSampler(box_probability=0.0), prompt_type="box")
    points = SamSegmentationCollator(PromptSampler(box_probability=1.0), prompt_type="points")
    assert all("input_boxes" in box(features) for _ in range(10))
    assert all("input_points" in points(features) for _ in range(10))
    with pytest.raises(ValueError, match="prompt_type"):
        SamSegmentationCollator(prompt_type="mask")


def test_collator_in_dataloader_workers_reseeds_per_worker(pre):
    features = _features(pre, n=1) * 8  # identical samples: any difference comes from the generators

    def prompts(seed):
        torch.manual_seed(seed)
        loader = torch.utils.data.DataLoader(
            features,
            batch_size=2,
            num_workers=2,
            collate_fn=SamSegmentationCollator(PromptSampler(box_probability=0.0, seed=0)),
        )
        return [b["input_points"] for b in loader]

    a, b = prompts(0), prompts(0)
    assert all(torch.equal(x, y) for x, y in zip(a, b))  # reproducible under torch.manual_seed (Trainer's seed)
    # without the per-worker reseed both workers would draw identical points for identical masks
    assert not torch.equal(a[0], a[1]) or not torch.equal(a[2], a[3])


# --------------------------------------------------------------------------- sources


def _write_pairs(folder, n, size=(24, 32), corrupt=(), mismatched=()):
    folder.mkdir(parents=True, exist_ok=True)
    names = []
    for i in range(n):
        image, mask = f"img_{i}.png", f"img_{i}_mask.png"
        height, width = size
        if i in corrupt:
            (folder / image).write_bytes(b"\x89PNG\r\n\x1a\n this is not a png")
        else:
            PIL.Image.fromarray(random_image(height, width, seed=i)).save(folder / image)
        mask_hw = (height // 2, width // 2) if i in mismatched else (height, width)
        PIL.Image.fromarray(rect_mask(*mask_hw, 2, 10, 3, 12 + i)).save(folder / mask)
        names.append((image, mask))
    return names


def _iterate(dataset, image_size=S):
    return list(
        prepare_dataset(dataset, SamSegmentationPreprocessor(image_size=image_size), corrupt_log=CorruptSampleLog())
    )


def _write_csv(path, rows, header=("image", "label")):
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(rows)


def test_parquet_shards_stream(tmp_path):
    write_synthetic_dataset(tmp_path, "general", num_train=6, num_test=2, image_size=48, num_shards=3)
    dataset = load_segmentation_dataset(str(tmp_path), split="train")
    assert isinstance(dataset, datasets.IterableDataset)
    assert list(dataset.features) == ["image", "mask"] and dataset.n_shards == 3
    rows = _iterate(dataset)
    assert len(rows) == 6
    assert all(r["gt_masks"].sum() > 0 and r["reshaped_input_sizes"].tolist() == [S, S] for r in rows)
    # also through the builder name with data_files, and as a single file
    by_files = load_segmentation_dataset("parquet", data_files=str(tmp_path / "test-*.parquet"), split="test")
    assert len(_iterate(by_files)) == 2
    single = load_segmentation_dataset(str(tmp_path / "test-00000-of-00002.parquet"), split="test")
    assert len(_iterate(single)) == 1


def test_imagefolder_with_mask_file_name(tmp_path):
    folder = tmp_path / "imf" / "train"
    names = _write_pairs(folder, 3)
    with open(folder / "metadata.jsonl", "w") as handle:
        for image, mask in names:
            handle.write(json.dumps({"file_name": image, "mask_file_name": mask}) + "\n")
    dataset = load_segmentation_dataset(str(tmp_path / "imf"), mask_column="mask")  # mask_file_name -> "mask"
    rows = _iterate(dataset)
    assert len(rows) == 3
    # 24x32 -> 48x64: mask rows 2..10, cols 3..(12+i) scale by 2
    assert rows[0]["gt_masks"][0, 4:22, 6:26].min() == 1 and rows[0]["gt_masks"].sum() == 18 * 20


def test_webdataset_tar_shards(tmp_path):
    shards = tmp_path / "wds"
    shards.mkdir()
    for shard in range(2):
        with tarfile.open(shards / f"train-{shard:05d}.tar", "w") as tar:
            for i in range(3):
                for suffix, array in (
                    ("image.png", random_image(20, 20, seed=i)),
                    ("label.png", rect_mask(20, 20, 0, 9, 0, 9)),
                ):
                    data = io.BytesIO()
                    PIL.Image.fromarray(array).save(data, format="PNG")
                    info = tarfile.TarInfo(f"s{shard}_{i}.{suffix}")
                    info.size = data.getbuffer().nbytes
                    data.seek(0)
                    tar.addfile(info, data)
    dataset = load_segmentation_dataset(str(shards))  # columns "image.png" / "label.png"
    assert dataset.n_shards == 2
    rows = _iterate(dataset, image_size=40)
    assert len(rows) == 6 and all(r["gt_masks"].sum() == 400 for r in rows)


def test_reference_csv_layout(tmp_path):
    root = tmp_path / "polyp" / "polyp"  # the reference downloads nest <name>/<name>/
    _write_pairs(root / "images", 4)
    _write_csv(root / "train.csv", [(f"images/img_{i}.png", f"images/img_{i}_mask.png") for i in range(3)])
    _write_csv(root / "test_Kvasir.csv", [("images/img_3.png", "images/img_3_mask.png")])
    train = load_segmentation_dataset(str(tmp_path / "polyp"), split="train")
    assert train.n_shards == 2  # power of two <= rows, so ranks can split it by shard
    assert len(_iterate(train)) == 3
    test = load_segmentation_dataset(str(root), split="test_Kvasir", streaming=False)
    assert len(test) == 1 and isinstance(test[0]["image"], PIL.Image.Image)
    with pytest.raises(FileNotFoundError, match=r"without validation\.csv.*test_Kvasir.*--eval_split"):
        load_segmentation_dataset(str(root), split="validation")


def test_map_style_dataset_prepares_lazily_and_collator_drops_corrupt(tmp_path):
    root = tmp_path / "ds"
    _write_pairs(root, 3, corrupt=(1,))
    _write_csv(root / "train.csv", [(f"img_{i}.png", f"img_{i}_mask.png") for i in range(3)])
    dataset = load_segmentation_dataset(str(root), streaming=False)
    prepared = prepare_dataset(dataset, SamSegmentationPreprocessor(image_size=S))
    assert len(prepared) == 3 and prepared[1]["pixel_values"] is None and prepared.corrupt_log.count == 1
    batch = SamSegmentationCollator()([prepared[i] for i in range(3)])
    assert batch["pixel_values"].shape[0] == 2


# --------------------------------------------------------------------------- bad input


def test_missing_column_names_columns_and_flag(tmp_path):
    write_synthetic_dataset(tmp_path, "general", num_train=2, num_test=0, image_size=32, num_shards=1)
    with pytest.raises(ValueError, match=r"no column 'segmap'.*\['image', 'label'\].*--mask_column"):
        load_segmentation_dataset(str(tmp_path), mask_column="segmap")
    with pytest.raises(ValueError, match=r"no column 'photo'.*--image_column"):
        load_segmentation_dataset(str(tmp_path), image_column="photo")
    root = tmp_path / "csvroot"
    _write_pairs(root, 1)
    _write_csv(root / "train.csv", [("img_0.png", "img_0_mask.png")], header=("img", "gt"))
    with pytest.raises(ValueError, match=r"no column 'image'.*\['img', 'gt'\].*--image_column"):
        load_segmentation_dataset(str(root))


def test_classlabel_column_is_not_a_mask(tmp_path):
    for cls in ("cat", "dog"):
        _write_pairs(tmp_path / "cls" / cls, 1)
    with pytest.raises(ValueError, match=r"'label'.*ClassLabel.*mask_file_name"):
        load_segmentation_dataset(str(tmp_path / "cls"))


def test_missing_csv_file_names_csv_row_and_path(tmp_path):
    _write_pairs(tmp_path, 2)
    _write_csv(tmp_path / "train.csv", [("img_0.png", "img_0_mask.png"), ("img_1.png", "gone/img_1_mask.png")])
    with pytest.raises(FileNotFoundError) as info:
        load_segmentation_dataset(str(tmp_path))
    message = str(info.value)
    assert "train.csv" in message and "row 2" in message and "gone/img_1_mask.png" in message
    assert "Fix the path" in message


def test_missing_file_in_a_stream_raises(tmp_path):
    root = tmp_path / "imf"
    names = _write_pairs(root, 2)
    with open(root / "metadata.jsonl", "w") as handle:
        for image, mask in names:
            handle.write(json.dumps({"file_name": image, "mask_file_name": mask}) + "\n")
    dataset = load_segmentation_dataset(str(root), mask_column="mask")
    (root / names[1][1]).unlink()
    with pytest.raises(FileNotFoundError, match=r"img_1_mask\.png.*does not exist"):
        _iterate(dataset)


def test_corrupt_image_skipped_counted_and_reported(tmp_path, caplog):
    root = tmp_path / "ds"
    _write_pairs(root, 4, corrupt=(2,))
    _write_csv(root / "train.csv", [(f"img_{i}.png", f"img_{i}_mask.png") for i in range(4)])
    dataset = load_segmentation_dataset(str(root))
    log = CorruptSampleLog()
    with caplog.at_level(logging.WARNING, logger="infosam_hf.data.sources"):
        rows = list(prepare_dataset(dataset, SamSegmentationPreprocessor(image_size=S), corrupt_log=log))
    assert len(rows) == 3 and log.count == 1
    assert log.skipped[0].endswith("img_2.png")
    assert "img_2.png" in caplog.text and "Skipped 1 corrupt sample(s)" in log.report()
    with pytest.raises(ValueError, match=r"Cannot decode the image .*img_2\.png.*re-save"):
        list(prepare_dataset(dataset, SamSegmentationPreprocessor(image_size=S), skip_corrupt=False))


def test_size_mismatch_in_stream_names_the_file(tmp_path):
    root = tmp_path / "ds"
    _write_pairs(root, 2, mismatched=(1,))
    _write_csv(root / "train.csv", [(f"img_{i}.png", f"img_{i}_mask.png") for i in range(2)])
    # issue 11: a bad sample like a corrupt file, skipped, counted and named with both sizes
    prepared = prepare_dataset(load_segmentation_dataset(str(root)), SamSegmentationPreprocessor(image_size=S))
    assert len(list(prepared)) == 1
    assert prepared.corrupt_log.count == 1 and "img_1.png" in prepared.corrupt_log.skipped[0]
    with pytest.raises(ValueError, match=r"img_1\.png.*img_1_mask\.png.*sizes differ|sizes differ.*img_1\.png"):
        list(prepare_dataset(load_segmentation_dataset(str(root)), SamSegmentationPreprocessor(image_size=S),
                             skip_corrupt=False))


def test_empty_datasets_are_errors(tmp_path):
    _write_csv(tmp_path / "train.csv", [])
    with pytest.raises(ValueError, match=r"lists no samples"):
        load_segmentation_dataset(str(tmp_path))
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises((ValueError, FileNotFoundError)):
        load_segmentation_dataset(str(empty))
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_segmentation_dataset(str(tmp_path / "nowhere"))
    no_rows = datasets.Dataset.from_dict(
        {"image": [], "label": []}, features=datasets.Features({"image": datasets.Image(), "label": datasets.Image()})
    )
    no_rows.to_parquet(str(tmp_path / "rows" / "train-00000-of-00001.parquet"))
    with pytest.raises(ValueError, match=r"'train' split of .* is empty"):
        load_segmentation_dataset(str(tmp_path / "rows"))


# --------------------------------------------------------------------------- multi-process


def _names(dataset):
    plain = dataset.cast_column("image", datasets.Image(decode=False))
    return [row["image"]["path"] for row in plain]


@pytest.mark.parametrize("num_shards", [4, 3])
def test_ranks_see_disjoint_parts_covering_the_set(tmp_path, num_shards):
    root = tmp_path / "ds"
    _write_pairs(root, 8)
    _write_csv(root / "train.csv", [(f"img_{i}.png", f"img_{i}_mask.png") for i in range(8)])
    dataset = load_segmentation_dataset(str(root), num_shards=num_shards)
    everything = _names(dataset)
    parts = [_names(split_for_process(dataset, rank=r, world_size=2)) for r in range(2)]
    assert set(parts[0]).isdisjoint(parts[1])
    assert sorted(parts[0] + parts[1]) == sorted(everything) and len(everything) == 8
    map_style = load_segmentation_dataset(str(root), streaming=False)
    halves = [split_for_process(map_style, rank=r, world_size=2) for r in range(2)]
    assert len(halves[0]) + len(halves[1]) == 8
    assert set(_names(halves[0])).isdisjoint(_names(halves[1]))


# -------------------------------------------------------------------- prompts over epochs and workers (issue 32 audit)
def test_every_epoch_and_every_worker_draws_new_prompts():
    rows = [instance_row(1, 0) for _ in range(8)]  # identical samples: any difference comes from the generators
    for row in rows:
        row["gt_masks"] = row["gt_masks"][0]

    torch.manual_seed(0)
    loader = torch.utils.data.DataLoader(
        rows, batch_size=2, num_workers=2, collate_fn=SamSegmentationCollator(PromptSampler(box_probability=0.0))
    )
    epochs = [[b["input_points"] for b in loader] for _ in range(2)]
    first, second = epochs
    assert not all(torch.equal(x, y) for x, y in zip(first, second))  # epoch 2 draws new prompts
    assert not torch.equal(first[0], first[1])  # batch 0 and 1 come from workers 0 and 1
    # in the main process too: the next epoch continues the generator
    main = torch.utils.data.DataLoader(
        rows, batch_size=2, collate_fn=SamSegmentationCollator(PromptSampler(box_probability=0.0))
    )
    assert not all(torch.equal(x["input_points"], y["input_points"]) for x, y in zip(main, main))


# ------------------------------------------------------------ each area once more, end to end on synthetic samples
def boxed_mask(h, w, box, value=255, mode="L"):
    array = np.zeros((h, w), dtype=np.uint8)
    x0, y0, x1, y1 = box
    array[y0:y1, x0:x1] = value
    return Image.fromarray(array, mode=mode) if mode != "P" else Image.fromarray(array).convert("P")


def test_geometry_matches_sam_processor_and_mask_lands_in_place():
    from transformers import SamImageProcessor, SamProcessor

    rng = np.random.default_rng(0)
    image = Image.fromarray((rng.random((60, 100, 3)) * 255).astype(np.uint8))
    processor = SamProcessor(image_processor=SamImageProcessor(size={"longest_edge": 64}, pad_size={"height": 64, "width": 64}))
    pre = SamSegmentationPreprocessor.from_processor(processor)
    out = pre(image, boxed_mask(60, 100, (50, 30, 100, 60)))
    expected = processor(images=image, return_tensors="pt")["pixel_values"][0].numpy()
    # Without torchvision this is SamProcessor's PIL backend: Pillow's resize, one grey level from the torch one
    one_grey_level = 1.01 / 255 / min(pre.image_std)
    np.testing.assert_allclose(out["pixel_values"], expected, atol=one_grey_level, rtol=0)
    assert out["reshaped_input_sizes"].tolist() == [38, 64] and out["original_sizes"].tolist() == [60, 100]
    gt = out["gt_masks"][0]
    assert gt[20:37, 33:63].all() and not gt[:17, :].any() and not gt[38:, :].any()  # padded rows are background
    assert set(np.unique(gt)) <= {0.0, 1.0}


@pytest.mark.parametrize(
    "mask",
    [
        boxed_mask(32, 32, (8, 8, 24, 24), value=1),
        boxed_mask(32, 32, (8, 8, 24, 24), value=255),
        boxed_mask(32, 32, (8, 8, 24, 24), value=3, mode="P"),
        Image.fromarray(np.asarray(boxed_mask(32, 32, (8, 8, 24, 24), value=1)).astype(np.uint16) * 40000),
    ],
    ids=["0-1", "0-255", "palette", "16-bit"],
)
def test_masks_are_binarised_whatever_their_encoding(mask):
    out = SamSegmentationPreprocessor(32)(Image.new("RGB", (32, 32)), mask)
    assert out["gt_masks"].sum() == 16 * 16 and out["gt_masks"][0, 8:24, 8:24].all()


def test_rgba_grayscale_and_16bit_images_are_accepted():
    pre = SamSegmentationPreprocessor(32)
    mask = boxed_mask(32, 32, (0, 0, 4, 4))
    for image in (Image.new("RGBA", (32, 32), (10, 20, 30, 0)), Image.new("L", (32, 32), 128),
                  Image.fromarray(np.full((32, 32), 65535, dtype=np.uint16))):
        out = pre(image, mask)
        assert out["pixel_values"].shape == (3, 32, 32) and np.isfinite(out["pixel_values"]).all()


def test_size_mismatch_names_both_sizes():
    with pytest.raises(ValueError, match="32x32.*16x16"):
        SamSegmentationPreprocessor(32)(Image.new("RGB", (32, 32)), boxed_mask(16, 16, (0, 0, 4, 4)))


def test_box_prompt_contains_the_mask_within_the_jitter_and_points_are_foreground():
    mask = np.zeros((64, 64), dtype=np.float32)
    mask[10:30, 20:50] = 1
    sampler = PromptSampler(box_noise=0.1, num_points=3, seed=0)
    # "shift": one offset for the whole box, uniform within min(box_noise * side, cap) per axis, where the
    # cap is max_box_noise pixels of SAM's 1024 px input (here 5 * 64 / 1024 = 0.3125 px, below 0.1 * side).
    cap = sampler.max_box_noise * 64 / 1024
    shifts = []
    for _ in range(20):
        x0, y0, x1, y1 = (float(v) for v in sampler.box(mask))
        dx, dy = x0 - 20, y0 - 10
        assert abs(dx) <= cap + 1e-6 and abs(dy) <= cap + 1e-6, (dx, dy, cap)
        assert x1 - 49 == pytest.approx(dx, abs=1e-5) and y1 - 29 == pytest.approx(dy, abs=1e-5)
        shifts += [abs(dx), abs(dy)]
        coords, labels = sampler.points(mask)
        assert labels.tolist() == [1, 1, 1]
        assert all(mask[int(y), int(x)] == 1 for x, y in coords)
    assert max(shifts) > cap / 2  # it does jitter
    exact = PromptSampler(box_noise=0.0).box(mask)
    assert exact.tolist() == [20, 10, 49, 29]
    # a small object: the jitter is 0.1 of its side (0.2 px), under the pixel cap
    small = np.zeros((64, 64), dtype=np.float32)
    small[30:32, 30:32] = 1
    offsets = [float(PromptSampler(box_noise=0.1, seed=seed).box(small)[0]) - 30 for seed in range(20)]
    assert max(abs(d) for d in offsets) <= 0.2 + 1e-6 and max(abs(d) for d in offsets) > 0.1


def test_empty_mask_box_is_the_valid_region_and_its_point_is_a_background_click():
    empty = np.zeros((32, 32), dtype=np.float32)
    sampler = PromptSampler(seed=0)
    assert sampler.box(empty, (20, 32)).tolist() == [0, 0, 31, 19]  # the whole valid region
    coords, labels = sampler.points(empty)
    assert labels.tolist() == [0]  # a background click: "not this"


def test_collator_shapes_mix_and_determinism():
    rng = np.random.default_rng(0)
    pre = SamSegmentationPreprocessor(64)
    samples = [pre(*make_synthetic_sample("general", 64, rng)) for _ in range(4)]

    def run(seed):
        collator = SamSegmentationCollator(PromptSampler(box_probability=0.5, seed=seed))
        return [collator(samples) for _ in range(12)]

    first, again, other = run(0), run(0), run(1)
    kinds = {"input_boxes" in b for b in first}
    assert kinds == {True, False}  # both prompt types occur
    for a, b in zip(first, again):
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert any(not torch.equal(a.get("input_boxes", a.get("input_points")), b.get("input_boxes", b.get("input_points")))
               for a, b in zip(first, other) if a.keys() == b.keys())
    box = next(b for b in first if "input_boxes" in b)
    assert box["input_boxes"].shape == (4, 1, 4) and box["gt_masks"].shape == (4, 1, 64, 64)
    pts = next(b for b in first if "input_points" in b)
    assert pts["input_points"].shape == (4, 1, 1, 2) and pts["input_labels"].dtype == torch.int64
    fixed = SamSegmentationCollator(PromptSampler(), prompt_type="box")
    assert all("input_boxes" in fixed(samples) for _ in range(5))


def test_synthetic_parquet_streams_and_is_deterministic(tmp_path):
    write_synthetic_dataset(tmp_path / "a", "specialised", 6, 2, image_size=32, seed=3)
    write_synthetic_dataset(tmp_path / "b", "specialised", 6, 2, image_size=32, seed=3)
    for name in ("train-00000-of-00002.parquet", "test-00001-of-00002.parquet"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
    stream = load_segmentation_dataset(str(tmp_path / "a"), split="train", streaming=True)
    rows = list(prepare_dataset(stream, SamSegmentationPreprocessor(32)))
    assert len(rows) == 6 and all(np.asarray(r["gt_masks"]).sum() > 0 for r in rows)
    assert sum(1 for _ in split_for_process(stream, 0, 2)) + sum(1 for _ in split_for_process(stream, 1, 2)) == 6


def write_synthetic_csv_layout(root, n=3, broken=None):
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    rng = np.random.default_rng(0)
    with open(root / "train.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["image", "label"])
        for i in range(n):
            image, mask = make_synthetic_sample("general", 32, rng)
            image.save(root / "images" / f"{i}.jpg")
            mask.save(root / "masks" / f"{i}.png")
            writer.writerow([f"images/{i}.jpg", f"masks/{i}.png"])


def test_reference_csv_layout_names_the_row_of_a_missing_mask_and_a_missing_split(tmp_path):
    write_synthetic_csv_layout(tmp_path)
    rows = list(prepare_dataset(load_segmentation_dataset(str(tmp_path), "train"), SamSegmentationPreprocessor(32)))
    assert len(rows) == 3 and np.asarray(rows[0]["pixel_values"]).shape == (3, 32, 32)
    (tmp_path / "masks" / "1.png").unlink()
    with pytest.raises(FileNotFoundError, match=r"train.csv, line 3.*masks/1.png"):
        load_segmentation_dataset(str(tmp_path), "train")
    with pytest.raises(FileNotFoundError, match="test.csv"):
        load_segmentation_dataset(str(tmp_path), "test")


def test_imagefolder_missing_column_and_corrupt_samples_are_reported(tmp_path):
    rng = np.random.default_rng(0)
    lines = []
    for i in range(4):
        image, mask = make_synthetic_sample("general", 32, rng)
        image.save(tmp_path / f"{i}.png")
        mask.save(tmp_path / f"{i}_mask.png")
        lines.append(f'{{"file_name": "{i}.png", "mask_file_name": "{i}_mask.png"}}')
    (tmp_path / "metadata.jsonl").write_text("\n".join(lines) + "\n")
    with pytest.raises(ValueError, match="no column 'label'.*--mask_column"):
        load_segmentation_dataset(str(tmp_path), "train", mask_column="label")
    (tmp_path / "2.png").write_bytes(b"not a png at all")
    stream = load_segmentation_dataset(str(tmp_path), "train", mask_column="mask")  # imagefolder names it "mask"
    prepared = prepare_dataset(stream, SamSegmentationPreprocessor(32))
    rows = list(prepared)
    assert len(rows) == 3
    assert len(prepared.corrupt_log.skipped) == 1 and "2.png" in prepared.corrupt_log.report()
