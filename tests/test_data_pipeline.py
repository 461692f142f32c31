"""Data pipeline: SAM geometry, mask binarisation, prompts, collator, sources and their errors."""

import csv

import numpy as np
import pytest
import torch
from PIL import Image

from infosam_hf.data import (
    PromptSampler,
    SamSegmentationCollator,
    SamSegmentationPreprocessor,
    load_segmentation_dataset,
    prepare_dataset,
    split_for_process,
)
from infosam_hf.synthetic import make_synthetic_sample, write_synthetic_dataset


def rect_mask(h, w, box, value=255, mode="L"):
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
    out = pre(image, rect_mask(60, 100, (50, 30, 100, 60)))
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
        rect_mask(32, 32, (8, 8, 24, 24), value=1),
        rect_mask(32, 32, (8, 8, 24, 24), value=255),
        rect_mask(32, 32, (8, 8, 24, 24), value=3, mode="P"),
        Image.fromarray(np.asarray(rect_mask(32, 32, (8, 8, 24, 24), value=1)).astype(np.uint16) * 40000),
    ],
    ids=["0-1", "0-255", "palette", "16-bit"],
)
def test_masks_are_binarised_whatever_their_encoding(mask):
    out = SamSegmentationPreprocessor(32)(Image.new("RGB", (32, 32)), mask)
    assert out["gt_masks"].sum() == 16 * 16 and out["gt_masks"][0, 8:24, 8:24].all()


def test_rgba_grayscale_and_16bit_images_are_accepted():
    pre = SamSegmentationPreprocessor(32)
    mask = rect_mask(32, 32, (0, 0, 4, 4))
    for image in (Image.new("RGBA", (32, 32), (10, 20, 30, 0)), Image.new("L", (32, 32), 128),
                  Image.fromarray(np.full((32, 32), 65535, dtype=np.uint16))):
        out = pre(image, mask)
        assert out["pixel_values"].shape == (3, 32, 32) and np.isfinite(out["pixel_values"]).all()


def test_size_mismatch_names_both_sizes():
    with pytest.raises(ValueError, match="32x32.*16x16"):
        SamSegmentationPreprocessor(32)(Image.new("RGB", (32, 32)), rect_mask(16, 16, (0, 0, 4, 4)))


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


def test_empty_mask_policy():
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


def write_csv_layout(root, n=3, broken=None):
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


def test_reference_csv_layout(tmp_path):
    write_csv_layout(tmp_path)
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
