"""examples/train.py and examples/evaluate_adapter.py on instance data in each layout (ids, masks, coco), tiny sets."""

from __future__ import annotations

import json
import os

import datasets
import numpy as np
import PIL.Image
import pytest
from helpers import load_example

from infosam_hf.data import decode_instances
from infosam_hf.synthetic import make_synthetic_instances

FORMATS = ("ids", "masks", "coco")


def polygon(mask: np.ndarray) -> list[float]:
    """The object's bounding rectangle as a COCO polygon (pixel borders, so it covers the object's box)."""
    rows, cols = np.nonzero(mask)
    x0, y0, x1, y1 = float(cols.min()), float(rows.min()), float(cols.max() + 1), float(rows.max() + 1)
    return [x0, y0, x1, y0, x1, y1, x0, y1]


def write_instance_parquet(folder, instance_format: str, num_train: int = 4, num_test: int = 3, size=(48, 64)):
    """Parquet shards with `image` and `label` in the given instance layout, from the synthetic instance domain
    (non-square images, so that padding and the resize back to the original size are exercised)."""
    rng = np.random.default_rng(0)
    height, width = size
    if instance_format == "masks":
        label = datasets.Sequence(datasets.Image())
    elif instance_format == "coco":
        label = datasets.Sequence(datasets.Sequence(datasets.Sequence(datasets.Value("float64"))))
    else:
        label = datasets.Image()
    features = datasets.Features({"image": datasets.Image(), "label": label})
    os.makedirs(folder, exist_ok=True)
    for split, count in (("train", num_train), ("test", num_test)):
        images, labels = [], []
        for _ in range(count):
            image, ids = make_synthetic_instances("general", max(size), rng, max_objects=3)
            image = image.crop((0, 0, width, height))
            ids = np.asarray(ids)[:height, :width]
            objects = [ids == k for k in np.unique(ids) if k != 0]
            images.append(image)
            if instance_format == "masks":
                labels.append([PIL.Image.fromarray(m.astype(np.uint8) * 255) for m in objects])
            elif instance_format == "coco":
                labels.append([[polygon(m)] for m in objects])
            else:
                labels.append(PIL.Image.fromarray(ids.astype(np.uint8)))
        dataset = datasets.Dataset.from_dict({"image": images, "label": labels}, features=features)
        dataset.to_parquet(os.path.join(folder, f"{split}-00000-of-00001.parquet"))
    return folder


TRAIN_FLAGS = ["--max_steps", "2", "--per_device_train_batch_size", "2", "--per_device_eval_batch_size", "2",
               "--logging_steps", "1", "--disable_tqdm", "true", "--lora_r", "2", "--max_objects_per_image", "2"]


@pytest.mark.slow
@pytest.mark.parametrize("instance_format", FORMATS)
def test_train_script_on_every_instance_layout_draws_each_object_and_scores_as_evaluate(tmp_path, instance_format):
    data = write_instance_parquet(tmp_path / "data", instance_format)
    out = tmp_path / "run"
    summary = load_example("train").main(
        ["--dataset_name", str(data), "--output_dir", str(out), "--instance_format", instance_format, *TRAIN_FLAGS]
    )
    assert summary["metrics_per"] == "object"

    # the overlays: every object of each evaluation image prompted, drawn and scored
    scores = json.loads((out / "eval_overlays" / "step-2" / "scores.json").read_text())
    raw = datasets.load_dataset("parquet", data_files=str(data / "test-*.parquet"), split="train")
    objects = [len(decode_instances(row["label"], instance_format, (48, 64))) for row in raw]
    assert [s["objects"] for s in scores["samples"]] == objects[: len(scores["samples"])] and max(objects) > 1
    assert all(len(s["object_iou"]) == s["objects"] for s in scores["samples"])
    assert sorted(os.listdir(out / "eval_overlays" / "step-2")) == ["grid.png", "sample-00.png", "sample-01.png",
                                                                      "sample-02.png", "scores.json"]

    # the run's per-object numbers (and so the card's) are examples/evaluate_adapter.py's on the saved adapter,
    # same split
    evaluated = load_example("evaluate_adapter").main(
        ["--adapter", str(out), "--dataset_name", str(data), "--disable_tqdm",
         "true", "--batch_size", "2", "--instance_format", instance_format,
         # the same split as a retention set: its prompt-following figures must be the main table's
         "--retention_dataset", str(data), "--retention_split", "test", "--retention_instance_format", instance_format])
    assert evaluated["num_objects"] == sum(objects)
    for prefix, row in (("zero_shot_", "zero_shot"), ("", "adapter")):
        for key in ("iou", "dice"):
            assert summary[prefix + key] == pytest.approx(evaluated["metrics"][row][key], abs=1e-6), (prefix, key)
    # on instance data the main table also says whether each prompt got its own object (prompt following)
    retention = evaluated["retention"]["metrics"]
    for row in ("zero_shot", "adapter"):
        for key in ("object_iou", "confusion"):
            assert evaluated["metrics"][row][key] == pytest.approx(retention[row][key], abs=1e-6), (row, key)


@pytest.mark.parametrize("instance_format", FORMATS)
def test_overlay_callback_prompts_draws_and_scores_every_object(tmp_path, instance_format):
    """What train.py's default --eval_overlays 4 builds: it crashed at start-up on 'masks' and 'coco' mask columns."""
    import torch
    from transformers import SamModel

    from infosam_hf.callbacks import EvalOverlayCallback
    from infosam_hf.data import SamSegmentationPreprocessor, load_segmentation_dataset
    from infosam_hf.testing import tiny_sam_config

    data = write_instance_parquet(tmp_path / "data", instance_format, num_train=1, num_test=3)
    raw = load_segmentation_dataset(str(data), split="test", streaming=False)
    callback = EvalOverlayCallback(raw, num_samples=3, instance_format=instance_format,
                                   preprocessor=SamSegmentationPreprocessor(image_size=64))
    torch.manual_seed(0)
    overlays, scores = callback.render(SamModel(tiny_sam_config(image_size=64)))
    counts = [len(decode_instances(row["mask"], instance_format, (48, 64))) for row in raw]
    assert [s["objects"] for s in scores] == counts and max(counts) > 1
    assert [len(s["object_iou"]) for s in scores] == counts
    assert all(s["iou@0.5"] == pytest.approx(np.mean(s["object_iou"])) for s in scores)
    assert all(overlay.size == (64, 48) for overlay in overlays)


def test_trainer_evaluate_and_evaluate_script_give_the_same_per_object_scores(tmp_path):
    """The Trainer's per-object metrics (train.py's summary, the card) scored the padded model frame,
    evaluate_adapter.py the original image: with padding (48 x 64 images) they disagreed. Both now score each object
    at its image's size."""
    import torch
    from helpers import save_adapter, tiny_processor
    from transformers import SamModel, TrainingArguments

    from infosam_hf import InfoSAMConfig, InfoSAMModel, InfoSAMTrainer
    from infosam_hf.data import (
        PromptSampler,
        SamSegmentationCollator,
        SamSegmentationPreprocessor,
        load_segmentation_dataset,
        prepare_instance_dataset,
    )
    from infosam_hf.loading import load
    from infosam_hf.metrics import build_compute_metrics
    from infosam_hf.testing import tiny_sam_config

    data = write_instance_parquet(tmp_path / "data", "masks", num_train=1, num_test=4)
    torch.manual_seed(0)
    SamModel(tiny_sam_config(image_size=64)).save_pretrained(tmp_path / "base")
    adapter = save_adapter(tmp_path / "base", tmp_path / "adapter", tiny_processor(), perturb=True)

    raw = load_segmentation_dataset(str(data), split="test", streaming=False)
    preprocessor = SamSegmentationPreprocessor(image_size=64)
    model, _ = load(adapter)
    trainer = InfoSAMTrainer(
        model=InfoSAMModel(model, InfoSAMConfig()),
        args=TrainingArguments(output_dir=str(tmp_path / "run"), per_device_eval_batch_size=2, report_to="none",
                               use_cpu=True, disable_tqdm=True),
        eval_dataset=prepare_instance_dataset(raw, preprocessor, "masks", keep_original_mask=True),
        eval_data_collator=SamSegmentationCollator(PromptSampler(box_probability=1.0, box_noise=0.0, seed=0),
                                                   prompt_type="box", max_objects_per_image=255),
        compute_metrics=build_compute_metrics(),
    )
    from_trainer = trainer.evaluate()
    evaluated = load_example("evaluate_adapter").main(
        ["--adapter", adapter, "--dataset_name", str(data), "--disable_tqdm",
         "true", "--batch_size", "3", "--instance_format", "masks",
         "--compare_base", "false"])
    assert evaluated["num_objects"] > evaluated["num_images"]  # several objects per image were scored
    for key in ("iou", "dice", "iou@0.5", "dice@0.5"):
        assert from_trainer[f"eval_{key}"] == pytest.approx(evaluated["metrics"]["adapter"][key], abs=1e-6), key
