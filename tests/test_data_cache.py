"""Many epochs over a small data set: no pause between epochs, each image decoded once, modes chosen and said."""

import collections
import hashlib
import os
import time

import datasets
import numpy as np
import pytest
from PIL import Image

from infosam_hf.data import (
    PromptSampler,
    SamSegmentationCollator,
    SamSegmentationPreprocessor,
    choose_data_mode,
    load_segmentation_dataset,
    prepare_cached_dataset,
    prepare_dataset,
    shuffle_stream,
)
from infosam_hf.synthetic import write_synthetic_dataset


@pytest.fixture
def sleeps(monkeypatch):
    """Every `time.sleep` call, recorded instead of slept."""
    calls = []
    monkeypatch.setattr(time, "sleep", calls.append)
    return calls


@pytest.fixture
def decodes(monkeypatch):
    """How often each image was decoded, by file name or content hash: every image is opened in
    `datasets.Image.decode_example` (parquet rows carry bytes without a path)."""
    counts = collections.Counter()
    decode = datasets.Image.decode_example

    def counting(self, value, token_per_repo_id=None):
        counts[value.get("path") or hashlib.sha1(value["bytes"]).hexdigest()] += 1
        return decode(self, value, token_per_repo_id=token_per_repo_id)

    monkeypatch.setattr(datasets.Image, "decode_example", counting)
    return counts


@pytest.fixture
def small_set(tmp_path):
    """8 training images in 2 parquet shards, like the built-in data."""
    return str(write_synthetic_dataset(tmp_path / "data", "specialised", num_train=8, num_test=4, image_size=64))


def test_streamed_epochs_do_not_sleep(small_set, sleeps):
    stream = load_segmentation_dataset(small_set, split="train", streaming=True)
    assert stream.n_shards == 2

    # The library's default shuffle sleeps SLEEP_TIME_ON_THREADS_SHUTDOWN at the end of every pass (the bug).
    # Should this fail after a datasets upgrade, the sleep is gone and shuffle_stream's workaround can go too.
    default = stream.shuffle(seed=0, buffer_size=4)
    for epoch in range(3):
        default.set_epoch(epoch)
        assert sum(1 for _ in default) == 8
    assert sleeps == [datasets.config.SLEEP_TIME_ON_THREADS_SHUTDOWN] * 3

    sleeps.clear()
    shuffled = shuffle_stream(stream.cast_column("image", datasets.Image(decode=False)), seed=0, buffer_size=4)
    orders = []
    for epoch in range(3):
        shuffled.set_epoch(epoch)
        orders.append([hashlib.sha1(row["image"]["bytes"]).hexdigest() for row in shuffled])
    assert sleeps == []
    assert all(sorted(order) == sorted(orders[0]) and len(set(order)) == 8 for order in orders)  # every row, every epoch
    assert len({tuple(order) for order in orders}) > 1  # still reshuffled between epochs
    assert shuffled.n_shards == 2  # ranks and data-loader workers can still be given whole shards


def train_three_epochs(train_dataset, output_dir):
    from transformers import SamModel, TrainingArguments

    from infosam_hf import InfoSAMTrainer
    from infosam_hf.testing import tiny_sam_config

    args = TrainingArguments(
        output_dir=str(output_dir), num_train_epochs=3, per_device_train_batch_size=4, learning_rate=1e-3,
        report_to=[], save_strategy="no", disable_tqdm=True, use_cpu=True, seed=0, logging_steps=100,
    )
    trainer = InfoSAMTrainer(
        model=SamModel(tiny_sam_config()), args=args, train_dataset=train_dataset,
        data_collator=SamSegmentationCollator(PromptSampler(seed=0)),
    )
    trainer.train()
    return trainer.state.global_step


def test_three_epochs_decode_each_image_once_and_a_second_run_none(small_set, tmp_path, decodes):
    preprocessor = SamSegmentationPreprocessor(64)
    train = prepare_cached_dataset(small_set, preprocessor, cache_dir=tmp_path / "cache")
    assert len(train) == 8
    assert train_three_epochs(train, tmp_path / "run1") == 6  # 3 epochs x 2 batches
    assert len(decodes) == 16 and set(decodes.values()) == {1}  # 8 distinct images and 8 masks, once each

    decodes.clear()  # another run with the same data and settings reads the cache only
    again = prepare_cached_dataset(small_set, preprocessor, cache_dir=tmp_path / "cache")
    assert again.cache_folder == train.cache_folder
    assert train_three_epochs(again, tmp_path / "run2") == 6
    assert dict(decodes) == {}


def test_the_streamed_pipeline_decodes_every_epoch(small_set, decodes):
    # What the cache removes (and proof that the decode counter sees the streamed path).
    stream = prepare_dataset(load_segmentation_dataset(small_set, streaming=True), SamSegmentationPreprocessor(64))
    for _ in range(3):
        assert sum(1 for _ in stream) == 8
    assert set(decodes.values()) == {3} and len(decodes) == 16


def write_csv_layout(root, sizes):
    rng = np.random.default_rng(0)
    (root / "img").mkdir(parents=True)
    lines = ["image,label"]
    for i, (w, h) in enumerate(sizes):
        Image.fromarray((rng.random((h, w, 3)) * 255).astype(np.uint8)).save(root / "img" / f"{i}.png")
        mask = np.zeros((h, w), dtype=np.uint8)
        mask[h // 4 : h // 2, w // 3 : w // 2] = 255
        Image.fromarray(mask).save(root / "img" / f"{i}_mask.png")
        lines.append(f"img/{i}.png,img/{i}_mask.png")
    (root / "train.csv").write_text("\n".join(lines) + "\n")
    return root


def test_cached_rows_equal_fresh_preprocessing_bit_for_bit_and_prompts_stay_random(tmp_path):
    root = write_csv_layout(tmp_path / "csv", [(100, 60), (48, 90), (64, 64)])  # wide, tall and square
    preprocessor = SamSegmentationPreprocessor(64)
    cached = prepare_cached_dataset(str(root), preprocessor, cache_dir=tmp_path / "cache")
    for i in range(3):
        expected = preprocessor(str(root / "img" / f"{i}.png"), str(root / "img" / f"{i}_mask.png"))
        row = cached[i]
        assert sorted(row) == sorted(expected)
        for key in expected:
            assert row[key].dtype == expected[key].dtype and row[key].shape == expected[key].shape, key
            assert np.array_equal(row[key], expected[key]), key
    # prompts are drawn by the collator per batch, not frozen into the cache
    collator = SamSegmentationCollator(PromptSampler(box_noise=1.0, seed=0), prompt_type="box")
    batch = [cached[i] for i in range(3)]
    assert not np.array_equal(collator(batch)["input_boxes"].numpy(), collator(batch)["input_boxes"].numpy())


def test_cache_key_follows_settings_and_source_files(tmp_path, decodes):
    root = write_csv_layout(tmp_path / "csv", [(40, 30), (30, 40)])
    cache = tmp_path / "cache"
    first = prepare_cached_dataset(str(root), SamSegmentationPreprocessor(32), cache_dir=cache)
    assert prepare_cached_dataset(str(root), SamSegmentationPreprocessor(32), cache_dir=cache).cache_folder == (
        first.cache_folder
    )
    other_size = prepare_cached_dataset(str(root), SamSegmentationPreprocessor(48), cache_dir=cache)
    assert other_size.cache_folder != first.cache_folder and other_size[0]["pixel_values"].shape == (3, 48, 48)
    other_threshold = prepare_cached_dataset(str(root), SamSegmentationPreprocessor(32, mask_threshold=200), cache_dir=cache)
    assert other_threshold.cache_folder != first.cache_folder

    # a changed image file is a new cache with the new pixels
    Image.fromarray(np.full((30, 40, 3), 255, dtype=np.uint8)).save(root / "img" / "0.png")
    os.utime(root / "img" / "0.png", ns=(1, 1))
    changed = prepare_cached_dataset(str(root), SamSegmentationPreprocessor(32), cache_dir=cache)
    assert changed.cache_folder != first.cache_folder
    assert np.array_equal(changed[0]["pixel_values"], SamSegmentationPreprocessor(32)(str(root / "img" / "0.png"))["pixel_values"])
    assert len(os.listdir(cache)) == 4


def test_corrupt_samples_are_skipped_once_and_reported_on_reuse(tmp_path, caplog):
    root = write_csv_layout(tmp_path / "csv", [(40, 30), (30, 40), (32, 32)])
    (root / "img" / "1.png").write_bytes(b"not a png")
    cached = prepare_cached_dataset(str(root), SamSegmentationPreprocessor(32), cache_dir=tmp_path / "cache")
    assert len(cached) == 2 and cached.corrupt_log.count == 1 and "1.png" in cached.corrupt_log.report()
    again = prepare_cached_dataset(str(root), SamSegmentationPreprocessor(32), cache_dir=tmp_path / "cache")
    assert again.cache_folder == cached.cache_folder
    assert again.corrupt_log.count == 1 and "1.png" in again.corrupt_log.skipped[0]


def test_choose_data_mode(small_set, tmp_path):
    auto = choose_data_mode(small_set, "auto", image_size=64, cache_dir=tmp_path)
    assert not auto.streaming and "~12 rows" in str(auto) and "--streaming true" in str(auto)
    big = choose_data_mode(small_set, "auto", image_size=64, max_cache_gb=1e-6, cache_dir=tmp_path)
    assert big.streaming and "above the 1e-06 GB threshold" in str(big)
    hub = choose_data_mode("someone/polyp-dataset", "auto", cache_dir=tmp_path)
    assert hub.streaming and "not a local path" in hub.reason
    assert choose_data_mode(small_set, "true").streaming and choose_data_mode(small_set, True).streaming
    assert not choose_data_mode("someone/polyp-dataset", "false").streaming
    with pytest.raises(ValueError, match="'auto', 'true' or 'false'"):
        choose_data_mode(small_set, "sometimes")


def test_train_script_picks_and_prints_the_mode(small_set, tmp_path, monkeypatch, capsys):
    from transformers import TrainingArguments

    from infosam_hf.data.arguments import DataArguments
    from infosam_hf.data.training_data import build_datasets

    monkeypatch.setenv("INFOSAM_HF_CACHE", str(tmp_path / "cache-root"))
    args = TrainingArguments(output_dir=str(tmp_path / "out"), max_steps=4, report_to=[], use_cpu=True)
    preprocessor = SamSegmentationPreprocessor(64)
    dataset, _, _ = build_datasets(DataArguments(dataset_name=small_set), preprocessor, args)
    assert isinstance(dataset, datasets.Dataset) and len(dataset) == 8
    assert "Training data preprocessed once into a cache" in capsys.readouterr().out
    assert os.listdir(tmp_path / "cache-root" / "preprocessed")

    stream, _, _ = build_datasets(DataArguments(dataset_name=small_set, streaming="true"), preprocessor, args)
    assert isinstance(stream, datasets.IterableDataset)
    assert "Training data streamed: --streaming true" in capsys.readouterr().out
