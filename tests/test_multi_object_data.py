"""Instance layouts through `datasets`: id masks, lists of masks, COCO polygons/RLE; bad input; skipped objects."""

from __future__ import annotations

import datasets
import numpy as np
import PIL.Image
import pytest

from infosam_hf.data import SamSegmentationPreprocessor, decode_instances, prepare_instance_dataset
from infosam_hf.data.instances import _decode_rle_counts
from infosam_hf.synthetic import make_synthetic_instances, write_synthetic_dataset

H, W = 24, 32


def two_objects() -> np.ndarray:
    ids = np.zeros((H, W), dtype=np.uint8)
    ids[2:8, 3:12] = 1
    ids[10:20, 15:30] = 2
    return ids


def encode_rle(mask: np.ndarray) -> dict:
    """Uncompressed COCO RLE (column-major runs, starting with background)."""
    flat = mask.T.reshape(-1).astype(np.uint8)
    runs, value, count = [], 0, 0
    for pixel in flat:
        if pixel != value:
            runs.append(count)
            value, count = pixel, 0
        count += 1
    runs.append(count)
    return {"size": [mask.shape[0], mask.shape[1]], "counts": runs}


def test_instance_id_mask_gives_one_mask_per_object():
    masks = decode_instances(PIL.Image.fromarray(two_objects()), "ids", (H, W))
    assert len(masks) == 2
    assert np.array_equal(masks[0], two_objects() == 1) and np.array_equal(masks[1], two_objects() == 2)


def test_non_integer_instance_ids_are_refused():
    ids = two_objects().astype(np.float32)
    ids[0, 0] = 0.5
    with pytest.raises(ValueError, match="non-integer"):
        decode_instances(ids, "ids", (H, W), "img7.png")
    with pytest.raises(ValueError, match="one channel"):
        decode_instances(PIL.Image.new("RGB", (W, H)), "ids", (H, W), "img7.png")


def test_coco_polygons_and_rle_match_the_drawn_objects():
    ids = two_objects()
    polygon = [[3, 2, 11, 2, 11, 7, 3, 7]]  # the first rectangle's pixel centres
    masks = decode_instances([polygon, encode_rle(ids == 2), {"segmentation": polygon}], "coco", (H, W))
    assert np.array_equal(masks[0], ids == 1) and np.array_equal(masks[2], ids == 1)
    assert np.array_equal(masks[1], ids == 2)


def test_compressed_rle_string_decodes():
    # pycocotools.mask.encode of a 4x4 mask with a 2x2 block at rows 1-2, cols 1-2 gives b"52203"
    assert _decode_rle_counts("52203") == [5, 2, 2, 2, 5]


def test_polygon_outside_the_image_names_sample_and_point():
    with pytest.raises(ValueError, match=r"img3\.png.*\(40, 5\).*outside"):
        decode_instances([[[1, 1, 40, 5, 2, 9]]], "coco", (H, W), "img3.png")


def test_corrupt_rle_is_refused():
    with pytest.raises(ValueError, match="RLE"):
        decode_instances([{"size": [H, W], "counts": [3, 4]}], "coco", (H, W), "img1.png")


def _dataset(masks_column, feature):
    image = PIL.Image.fromarray(np.full((H, W, 3), 120, dtype=np.uint8))
    features = datasets.Features({"image": datasets.Image(), "mask": feature})
    return datasets.Dataset.from_dict({"image": [image] * len(masks_column), "mask": masks_column}, features=features)


def test_list_of_binary_masks_through_datasets_with_min_area_and_empty_images_counted():
    big = (two_objects() == 2).astype(np.uint8) * 255
    tiny = np.zeros((H, W), np.uint8)
    tiny[0, 0] = 255  # 1 pixel: below min_object_area
    column = [
        [PIL.Image.fromarray(big), PIL.Image.fromarray(tiny)],
        [PIL.Image.fromarray(tiny)],  # no object left: skipped and counted
    ]
    raw = _dataset(column, datasets.Sequence(datasets.Image()))
    prepared = prepare_instance_dataset(raw, SamSegmentationPreprocessor(image_size=32), "masks", min_object_area=4)
    rows = [prepared[i] for i in range(len(raw))]
    assert rows[1]["pixel_values"] is None
    assert tuple(np.shape(rows[0]["gt_masks"])) == (1, 32, 32)
    stats = prepared.instance_stats
    assert (stats.objects, stats.small_objects_skipped, len(stats.images_without_objects)) == (1, 2, 1)


def test_streamed_synthetic_instance_data_keeps_every_object(tmp_path):
    write_synthetic_dataset(tmp_path, "general", num_train=3, num_test=0, image_size=32, num_shards=1, max_objects=6)
    from infosam_hf.data import load_segmentation_dataset

    stream = load_segmentation_dataset(tmp_path, split="train", streaming=True)
    rows = list(prepare_instance_dataset(stream, SamSegmentationPreprocessor(image_size=32), "ids", min_object_area=0))
    counts = [np.shape(r["gt_masks"])[0] for r in rows]
    raw = load_segmentation_dataset(tmp_path, split="train", streaming=False)
    expected = [len(np.unique(np.asarray(raw[i]["mask"]))) - 1 for i in range(3)]
    assert counts == expected and max(counts) >= 1


def test_synthetic_instances_have_several_distinct_objects_of_varied_size():
    rng = np.random.default_rng(0)
    counts, fractions = [], []
    for _ in range(40):
        image, ids = make_synthetic_instances("general", 64, rng)
        ids = np.asarray(ids)
        counts.append(ids.max())
        fractions += [(ids == k).mean() for k in range(1, ids.max() + 1)]
        assert set(np.unique(ids)) == set(range(ids.max() + 1))  # ids 0..K, none fully hidden
    assert min(counts) >= 1 and max(counts) == 6 and np.mean(counts) > 2.5
    assert min(fractions) < 0.02 and max(fractions) > 0.15
