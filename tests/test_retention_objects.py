"""Multi-object retention (issue 30, second stage): prompt following on a retention set of several objects per image,
the built-in run's general-domain pair (one mask per image, then multi-object), examples/evaluate_adapter.py's
retention table from the same code, and a run's skipped samples listed once.

Tiny sets: the built-in SAM (128 px) on a few synthetic images; the whole-script runs are marked slow."""

from __future__ import annotations

import json
import logging
import os

import numpy as np
import PIL.Image
import pytest
from helpers import load_example, write_csv_index
from huggingface_hub import ModelCard
from transformers import EvalPrediction
from transformers.trainer_pt_utils import nested_concat

import infosam_hf.builtin
from infosam_hf.data.arguments import DataArguments, RetentionSpec
from infosam_hf.packing import pack_maps_per_image
from infosam_hf.prompt_following import PromptFollowingMetrics, WithPromptFollowing
from infosam_hf.synthetic import make_synthetic_instances, write_synthetic_dataset

PROMPT_FOLLOWING = ("object_iou", "confusion")


# ------------------------------------------------------------------------------------------ the metrics
def two_halves():
    """Two objects (left and right half of a 6 x 8 image); prompt 0 answered exactly, prompt 1 with a mask that
    covers all of object 0 and half of object 1 (IoU 12 / 48 with its object, confused)."""
    left = np.zeros((6, 8), np.uint8)
    left[:, :4] = 1
    right = 1 - left
    wrong = np.full((6, 8), -2.0, np.float32)
    wrong[:, :6] = 2.0
    return [np.where(left > 0, 3.0, -3.0).astype(np.float32), wrong], [left, right]


def one_object():
    mask = np.zeros((5, 5), np.uint8)
    mask[1:4, 1:4] = 1
    return [np.where(mask > 0, 1.0, -1.0).astype(np.float32)], [mask]


def test_prompt_following_metrics_score_the_objects_of_an_image_together():
    metrics = PromptFollowingMetrics()
    metrics.update_image(*two_halves())
    assert metrics.compute() == pytest.approx({"object_iou": (1 + 12 / 48) / 2, "confusion": 0.5})
    metrics.update_image(*one_object())  # a lone object cannot be confused with another
    assert metrics.num_objects == 3
    assert metrics.compute() == pytest.approx({"object_iou": (1 + 12 / 48 + 1) / 3, "confusion": 1 / 3})
    # the same maps as two images of one object each: nothing to confuse, and IoU 0.25 for the wrong mask
    alone = PromptFollowingMetrics()
    for logits, mask in zip(*two_halves()):
        alone.update_image([logits], [mask])
    assert alone.compute()["confusion"] == 0.0
    with pytest.raises(ValueError, match="2 logit maps for 1 object masks"):
        alone.update_image(two_halves()[0], [one_object()[1][0]])


def test_the_trainer_metrics_wrapper_reads_packed_rows_whole_or_batch_by_batch():
    """What InfoSAMTrainer's retention pass adds to compute_metrics on instance data: one packed row per image
    (padded by the Trainer's gathering), every object of an image together, with and without batch_eval_metrics."""
    images = [two_halves(), one_object()]
    rows = [(pack_maps_per_image(logits, [len(logits)]), pack_maps_per_image(masks, [len(masks)]))
            for logits, masks in images]
    predictions = nested_concat(rows[0][0], rows[1][0], padding_index=-100)  # rows of different lengths
    labels = nested_concat(rows[0][1], rows[1][1], padding_index=-100)
    expected = PromptFollowingMetrics()
    for logits, masks in images:
        expected.update_image(logits, masks)
    seen = []

    def inner(eval_pred, compute_result=None):
        seen.append(compute_result)
        return {"iou": 0.5} if compute_result in (None, True) else {}

    whole = WithPromptFollowing(inner)(EvalPrediction(predictions=predictions.numpy(), label_ids=labels.numpy()))
    assert whole == pytest.approx({"iou": 0.5, **expected.compute()})
    batched = WithPromptFollowing(inner)
    assert batched(EvalPrediction(predictions=rows[0][0], label_ids=rows[0][1]), compute_result=False) == {}
    last = batched(EvalPrediction(predictions=rows[1][0], label_ids=rows[1][1]), compute_result=True)
    assert last == pytest.approx(whole) and seen == [None, False, True]
    assert batched.metrics.num_objects == 0  # reset for the next evaluation


# ------------------------------------------------------------------------------------------ which sets
@pytest.fixture
def builtin_names(monkeypatch):
    """builtin_dataset_path without writing data: the name of what it would write."""
    monkeypatch.setattr(infosam_hf.builtin, "builtin_dataset_path",
                        lambda domain="specialised", seed=0, max_objects=1: f"{domain}-{max_objects}")


def test_the_builtin_run_scores_the_general_domain_one_mask_and_multi_object(builtin_names):
    assert DataArguments().retention_specs(None) == [RetentionSpec("general-1", "test", 64),
                                                     RetentionSpec("general-6", "test", 32, "ids")]
    assert DataArguments(instance_format="ids").retention_specs(None)[1].max_samples == 32  # no longer refused
    assert [s.max_samples for s in DataArguments(retention_max_samples=8).retention_specs(None)] == [8, 8]
    assert DataArguments(retention_object_images=0).retention_specs(None) == [RetentionSpec("general-1", "test", 64)]
    assert DataArguments(dataset_name="mine").retention_specs("mine") == []  # your data: no default retention set
    assert DataArguments(retention_dataset="None").retention_specs(None) == []
    assert DataArguments(retention_dataset="d", retention_instance_format="coco", retention_split="val",
                         retention_max_samples=5).retention_specs("mine") == [RetentionSpec("d", "val", 5, "coco")]
    assert DataArguments(retention_dataset="d").retention_source == "d"


def test_retention_flags_are_checked_when_parsed():
    with pytest.raises(ValueError, match="--retention_instance_format must be one of"):
        DataArguments(retention_dataset="d", retention_instance_format="polygons")
    with pytest.raises(ValueError, match="pass --retention_dataset"):
        DataArguments(retention_instance_format="ids")
    with pytest.raises(ValueError, match="--retention_object_images"):
        DataArguments(retention_object_images=-1)
    evaluate = load_example("evaluate_adapter")
    with pytest.raises(ValueError, match="--retention_instance_format must be one of"):
        evaluate.EvaluationArguments(retention_dataset="d", retention_instance_format="polygons")


def test_a_log_whose_maker_reports_it_is_not_summarised_by_the_trainer(tmp_path, caplog):
    """examples/train.py prints its skipped samples at the end; the trainer listing them too named them twice."""
    from transformers import SamModel, TrainingArguments

    from infosam_hf import InfoSAMTrainer
    from infosam_hf.data import CorruptSampleLog
    from infosam_hf.testing import tiny_sam_config

    trainer = InfoSAMTrainer(model=SamModel(tiny_sam_config(image_size=32)),
                             args=TrainingArguments(output_dir=str(tmp_path), report_to=[], use_cpu=True))

    class Holder:
        def __init__(self, log):
            self.corrupt_log = log

    own, theirs = CorruptSampleLog(summary_by_caller=True), CorruptSampleLog()
    own.add("mine.png", "unreadable")
    theirs.add("theirs.png", "unreadable")
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        trainer._report_corrupt_samples(Holder(own), Holder(theirs))
    summaries = [r.getMessage() for r in caplog.records if r.getMessage().startswith("Skipped ")]
    assert len(summaries) == 1 and "theirs.png" in summaries[0] and "mine.png" not in summaries[0]
    assert own.unreported() == ["mine.png"]  # left for its maker's report


# ------------------------------------------------------------------------------------------ whole runs
RUN_FLAGS = ["--max_steps", "2", "--per_device_train_batch_size", "2", "--per_device_eval_batch_size", "3",
             "--disable_tqdm", "true", "--lora_r", "2", "--eval_overlays", "0", "--learning_rate", "1e-2"]


def write_instance_csv(root, num: int, corrupt: int | None = None, seed: int = 3):
    """A reference CSV layout (test split) of general-domain images with instance-id masks; image `corrupt` is
    not a PNG."""
    rng = np.random.default_rng(seed)
    (root / "images").mkdir(parents=True)
    rows = []
    for i in range(num):
        image, ids = make_synthetic_instances("general", 128, rng, max_objects=4)
        if i == corrupt:
            (root / "images" / f"{i}.png").write_bytes(b"\x89PNG\r\n\x1a\n not a png")
        else:
            image.save(root / "images" / f"{i}.png")
        PIL.Image.fromarray(np.asarray(ids, dtype=np.uint8)).save(root / "images" / f"{i}_ids.png")
        rows.append({"image": f"images/{i}.png", "label": f"images/{i}_ids.png"})
    write_csv_index(root / "test.csv", rows)
    return root


def assert_retention_equal(summary: dict, retention: dict, names) -> None:
    for name in names:
        for prefix, row in (("zero_shot_", "zero_shot"), ("", "adapter")):
            assert summary[f"{prefix}retention_{name}"] == pytest.approx(retention["metrics"][row][name], abs=1e-6), (
                prefix, name)


def card_entries(folder):
    """The card's retention table rows and its model-index retention entry's metric types."""
    card = ModelCard.load(folder / "README.md")
    entries = card.data.to_dict()["model-index"][0]["results"]
    return card.text, [m["type"] for m in entries[1]["metrics"]]


@pytest.mark.slow  # a 2-step train.py run scoring 3 small sets twice, and one evaluate_adapter.py run
def test_builtin_run_prints_three_lines_and_evaluate_adapter_gives_the_same_retention(tmp_path, monkeypatch, capsys):
    """The built-in run (no --dataset_name): specialised IoU, general retention IoU, general prompt following,
    with the built-in data swapped for a few images of the same domains."""
    folders = {
        ("specialised", 1): write_synthetic_dataset(tmp_path / "spec", "specialised", 6, 3, seed=1),
        ("general", 1): write_synthetic_dataset(tmp_path / "gen", "general", 0, 4, seed=2),
        ("general", 6): write_synthetic_dataset(tmp_path / "gen6", "general", 0, 3, seed=2, max_objects=6),
    }
    monkeypatch.setattr(infosam_hf.builtin, "builtin_dataset_path",
                        lambda domain="specialised", seed=0, max_objects=1: str(folders[domain, max_objects]))
    out = tmp_path / "run"
    summary = load_example("train").main(["--output_dir", str(out), "--streaming", "true", *RUN_FLAGS])
    printed = capsys.readouterr().out.splitlines()
    lines = [line for line in printed if " -> " in line]
    assert lines[0].startswith(f"IoU before {summary['zero_shot_iou']:.4f} -> after {summary['iou']:.4f}")
    assert lines[1].startswith(f"general (retention) IoU before {summary['zero_shot_retention_iou']:.4f} -> after "
                               f"{summary['retention_iou']:.4f}")
    assert lines[2] == (
        f"general prompt following: IoU per object {summary['zero_shot_retention_object_iou']:.4f} -> "
        f"{summary['retention_object_iou']:.4f}, confusion {100 * summary['zero_shot_retention_confusion']:.1f}% -> "
        f"{100 * summary['retention_confusion']:.1f}%")
    assert len(lines) == 3
    assert summary["retention_object_iou"] != summary["zero_shot_retention_object_iou"]  # it trained
    saved = json.loads((out / "iou_before_after.json").read_text())
    assert {k: saved[k] for k in summary if "retention" in k} == {k: v for k, v in summary.items() if "retention" in k}

    text, types = card_entries(out)
    assert {"iou", "zero_shot_iou", "object_iou", "zero_shot_object_iou", "confusion", "zero_shot_confusion"} <= set(
        types)
    assert "| object_iou |" in text and "| confusion |" in text and "its multi-object variant" in text

    # examples/evaluate_adapter.py on the saved adapter, same defaults: the same retention numbers
    evaluated = load_example("evaluate_adapter").main(["--adapter", str(out), "--disable_tqdm", "true",
                                                       "--max_samples", "3"])
    retention = evaluated["retention"]
    assert [(s["num_images"], s["instance_format"]) for s in retention["sets"]] == [(4, None), (3, "ids")]
    assert_retention_equal(summary, retention, ("iou", "dice", *PROMPT_FOLLOWING))
    assert "Retention: " in capsys.readouterr().out


@pytest.mark.slow  # one train.py run with evaluations at steps 0 and 2, one evaluate_adapter.py run, ~1 min
def test_an_instance_retention_set_is_scored_per_object_with_prompt_following(tmp_path, capsys, caplog):
    """Your own retention set of several objects per image, with an undecodable image among them: skipped, counted
    and named once at the end of the run; the run's retention metrics are evaluate_adapter.py's."""
    target = write_synthetic_dataset(tmp_path / "target", "specialised", 6, 3, seed=1)
    retention = write_instance_csv(tmp_path / "objects", 5, corrupt=1)
    out = tmp_path / "run"
    flags = ["--retention_dataset", str(retention), "--retention_instance_format", "ids"]
    with caplog.at_level(logging.WARNING):
        summary = load_example("train").main(
            ["--dataset_name", str(target), "--output_dir", str(out), "--eval_strategy", "steps", "--eval_steps", "2",
             "--save_strategy", "steps", "--save_steps", "2", *flags, *RUN_FLAGS])
    printed = capsys.readouterr().out
    assert f"objects (retention) per-object IoU before {summary['zero_shot_retention_iou']:.4f}" in printed
    assert "objects prompt following: IoU per object" in printed
    # the undecodable image: skipped at every evaluation, and listed once, at the end
    everything = printed + "\n".join(r.getMessage() for r in caplog.records)
    assert everything.count("Skipped 1 corrupt sample(s)") == 1, everything
    (report,) = [line for line in printed.splitlines() if line.startswith("Skipped 1 corrupt sample(s): ")]
    assert "images/1.png" in report

    history = json.loads((out / "checkpoint-2" / "trainer_state.json").read_text())["log_history"]
    logged = [entry for entry in history if "eval_retention_confusion" in entry]
    assert len(logged) == 1 and logged[0]["eval_retention_object_iou"] == summary["retention_object_iou"]
    text, types = card_entries(out)
    assert {"object_iou", "zero_shot_object_iou", "confusion", "zero_shot_confusion"} <= set(types)
    assert "one prompt per object, metrics averaged over objects, with prompt following" in text

    evaluated = load_example("evaluate_adapter").main(
        ["--adapter", str(out), "--dataset_name", str(target), "--disable_tqdm", "true", *flags])
    assert [os.path.basename(p) for p in evaluated["skipped_samples"]] == ["1.png"]
    assert evaluated["retention"]["sets"][0]["num_images"] == 4
    assert_retention_equal(summary, evaluated["retention"], ("iou", "dice", *PROMPT_FOLLOWING))
    assert summary["retention_iou"] != summary["zero_shot_retention_iou"]
