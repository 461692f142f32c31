"""What the data pipeline and the example scripts tell a user: empty-mask data, skip reports, mode lines, bad flags."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import PIL.Image
import pytest
from helpers import load_example, write_csv_index

from infosam_hf.callbacks import EvalOverlayCallback
from infosam_hf.data import (
    CorruptSampleLog,
    SamSegmentationPreprocessor,
    check_masks_not_empty,
    choose_data_mode,
    load_segmentation_dataset,
    prepare_dataset,
)
from infosam_hf.visualization import BOX_COLOR, GT_COLOR, NEGATIVE_POINT_COLOR, OBJECT_COLORS, POSITIVE_POINT_COLOR


def write_csv(root: Path, masks: dict[str, list[np.ndarray]], size=(40, 48)) -> Path:
    """<root>/{split}.csv with random images and the given masks (a mask of another size is a mis-sized one)."""
    rng = np.random.default_rng(0)
    (root / "img").mkdir(parents=True, exist_ok=True)
    for split, split_masks in masks.items():
        rows = []
        for i, mask in enumerate(split_masks):
            image, mask_file = f"img/{split}-{i}.png", f"img/{split}-{i}-mask.png"
            PIL.Image.fromarray(rng.integers(0, 256, (*size, 3), dtype=np.uint8)).save(root / image)
            PIL.Image.fromarray(mask.astype(np.uint8) * 255).save(root / mask_file)
            rows.append({"image": image, "label": mask_file})
        write_csv_index(root / f"{split}.csv", rows)
    return root


def square(size=(40, 48), on=True) -> np.ndarray:
    mask = np.zeros(size, dtype=bool)
    mask[10:25, 12:30] = on
    return mask


# ------------------------------------------------------------------------------------------- empty masks


def test_a_data_set_of_empty_masks_stops_train_py_before_training(tmp_path):
    data = write_csv(tmp_path / "data", {"train": [square(on=False)] * 4, "test": [square(on=False)] * 2})
    with pytest.raises(ValueError, match=r"all of the first 4 training masks are empty.*--allow_empty_masks true"):
        load_example("train").main(["--dataset_name", str(data), "--output_dir", str(tmp_path / "run"),
                                   "--max_steps", "1"])


def test_nearly_all_empty_is_refused_and_a_few_empty_masks_are_fine():
    import datasets

    def prepared(masks):
        images = [np.zeros((40, 48, 3), np.uint8)] * len(masks)
        raw = datasets.Dataset.from_dict({"image": images, "mask": [m.astype(np.uint8) for m in masks]})
        return prepare_dataset(raw, SamSegmentationPreprocessor(image_size=32))

    with pytest.raises(ValueError, match="19 of the first 20 evaluation masks are empty"):
        check_masks_not_empty(prepared([square()] + [square(on=False)] * 19), "evaluation")
    assert check_masks_not_empty(prepared([square()] * 3 + [square(on=False)] * 7)) == (7, 10)
    assert check_masks_not_empty(prepared([square(on=False)] * 5), max_samples=0) == (0, 0)


# ------------------------------------------------------------------------------------------- skip reports


def test_a_mis_sized_eval_mask_is_listed_once_and_its_report_not_repeated_at_the_end(tmp_path):
    data = write_csv(tmp_path / "data", {"test": [square(), square((20, 30)), square()]})
    raw = load_segmentation_dataset(str(data), split="test", streaming=False)
    log = CorruptSampleLog()
    evaluation = prepare_dataset(raw, SamSegmentationPreprocessor(image_size=32), corrupt_log=log,
                                 keep_original_mask=True)
    assert evaluation[1]["pixel_values"] is None
    EvalOverlayCallback(raw, num_samples=3, corrupt_log=log)  # train.py shares one log between the two
    report = log.report()
    assert report.startswith("Skipped 1 corrupt sample(s): ") and report.count("test-1.png") == 1, report
    assert "skip_corrupt" not in report and "--validate_data" in report  # a flag a CLI user can pass
    assert log.unreported() == []  # train.py printed the report: the trainer's end-of-run summary adds nothing
    log.add("another.png", "unreadable")
    assert log.unreported() == ["another.png"]  # a skip after the last report is reported


def test_the_trainer_ends_evaluate_and_train_with_the_skipped_samples_once(tmp_path, caplog):
    """What an exit hook used to print (`import infosam_hf` installs none): the trainer's own summary."""
    from transformers import SamModel, TrainingArguments

    from infosam_hf import InfoSAMTrainer
    from infosam_hf.data import PromptSampler, SamSegmentationCollator
    from infosam_hf.testing import tiny_sam_config

    data = write_csv(tmp_path / "data", {"train": [square()] * 3 + [square((20, 30))], "test": [square()] * 2})
    preprocessor = SamSegmentationPreprocessor(image_size=32)
    train_log = CorruptSampleLog()
    train = prepare_dataset(load_segmentation_dataset(str(data), split="train", streaming=False), preprocessor,
                            corrupt_log=train_log)
    evaluation = prepare_dataset(load_segmentation_dataset(str(data), split="test", streaming=False), preprocessor,
                                 keep_original_mask=True)
    args = TrainingArguments(output_dir=str(tmp_path / "run"), max_steps=2, per_device_train_batch_size=2,
                             report_to=[], save_strategy="no", disable_tqdm=True, use_cpu=True)
    trainer = InfoSAMTrainer(model=SamModel(tiny_sam_config(image_size=32)), args=args, train_dataset=train,
                             eval_dataset=evaluation, data_collator=SamSegmentationCollator(PromptSampler(seed=0)))
    with caplog.at_level(logging.WARNING):
        trainer.evaluate()
    assert "Skipped" not in caplog.text  # nothing skipped yet: no summary
    with caplog.at_level(logging.WARNING):
        trainer.train()
    summaries = [r.getMessage() for r in caplog.records if r.getMessage().startswith("Skipped 1 corrupt sample(s)")]
    assert len(summaries) == 1 and "train-3.png" in summaries[0], caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        trainer.evaluate()
        trainer.train()  # meets train-3.png again: already named, not summarised again
    assert "Skipped 1 corrupt sample(s)" not in caplog.text and train_log.count > 1


def test_precompute_teacher_ends_with_the_samples_it_skipped(tmp_path, capsys):
    data = write_csv(tmp_path / "data", {"train": [square(), square((20, 30))]})
    summary = load_example("precompute_teacher").main(
        ["--teacher_store", str(tmp_path / "store"), "--dataset_name", str(data), "--image_size", "64"]
    )
    assert summary["computed"] == 1
    assert "Skipped 1 corrupt sample(s): " in capsys.readouterr().out


def test_instance_data_does_not_claim_streaming_true_was_passed(tmp_path):
    mode = choose_data_mode(tmp_path, "auto", instance_format="ids")
    assert mode.streaming and "--streaming true was passed" not in str(mode) and "--instance_format ids" in str(mode)
    assert "does not apply" in str(choose_data_mode(tmp_path, "false", instance_format="masks"))
    assert "--streaming true was passed" in str(choose_data_mode(tmp_path, "true"))
    with pytest.raises(ValueError, match="streaming must be"):
        choose_data_mode(tmp_path, "sometimes", instance_format="ids")


# ------------------------------------------------------------------------------------------- scripts


@pytest.mark.parametrize(
    "script, flag",
    [("train", "--max_steps"), ("evaluate_adapter", "--batch_size"), ("predict", "--threshold")],
)
def test_a_non_numeric_flag_is_one_error_line_naming_flag_value_and_type(script, flag, capsys):
    with pytest.raises(SystemExit) as exit_info:
        load_example(script).main([flag, "ten"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert err[0].startswith("error: argument " + flag) and "'ten'" in err[0] and "invalid" in err[0], err[0]


@pytest.mark.parametrize("script", ["train", "evaluate_adapter"])
def test_an_unknown_instance_format_is_the_same_error_in_both_scripts_before_anything_loads(script, monkeypatch):
    """One check reads --instance_format for both scripts (train.py had its own, raising SystemExit only once the
    model had loaded): a ValueError naming the flag and the choices, at parse time."""
    import infosam_hf.hub

    def no_loading(*args, **kwargs):
        raise AssertionError("a model loaded before the flag was checked")

    monkeypatch.setattr(infosam_hf.hub, "load_processor", no_loading)
    monkeypatch.setattr(infosam_hf.hub, "load_model_or_base", no_loading)
    with pytest.raises(ValueError, match=r"--instance_format must be one of \('ids', 'masks', 'coco'\) or 'none', "
                                         r"got 'polygons'"):
        load_example(script).main(["--instance_format", "polygons"])


def test_instance_format_none_means_one_mask_per_image():
    from infosam_hf.data.arguments import DataArguments, DatasetArguments

    for value in (None, "", "none", "None"):
        assert DataArguments(instance_format=value).instance_format is None
    assert DatasetArguments(instance_format="coco").instance_format == "coco"


def test_object_colours_differ_from_the_prompt_and_ground_truth_colours():
    def distance(a, b):
        return float(np.linalg.norm(np.subtract(a, b)))

    for k, colour in enumerate(OBJECT_COLORS):
        for taken in (BOX_COLOR, POSITIVE_POINT_COLOR, NEGATIVE_POINT_COLOR, GT_COLOR, *OBJECT_COLORS[:k]):
            assert distance(colour, taken) > 100, (colour, taken)  # RGB units: told apart at a glance
    assert load_example("predict").OBJECT_COLORS is OBJECT_COLORS  # predict.py draws objects with the same palette
