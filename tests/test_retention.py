"""Retention (issue 30): a set the base already segments well, scored beside the target set at every evaluation, so
a run shows what fine-tuning cost. Tiny runs of the built-in SAM on a few synthetic images."""

import json
import os

import pytest
import torch
from helpers import write_target_and_retention
from huggingface_hub import ModelCard
from transformers import SamModel, SamProcessor, TrainingArguments

from infosam_hf import InfoSAMTrainer, PeftArguments
from infosam_hf.builtin import BUILTIN_MODEL_PATH
from infosam_hf.data import (
    PromptSampler,
    SamSegmentationCollator,
    SamSegmentationPreprocessor,
    load_segmentation_dataset,
    prepare_dataset,
)
from infosam_hf.evaluation import evaluate_segmentation
from infosam_hf.metrics import build_compute_metrics
from infosam_hf.testing import load_script

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return write_target_and_retention(tmp_path_factory.mktemp("retention-data"), num_retention_test=5)


def _prepared(folder, processor):
    raw = load_segmentation_dataset(folder, split="test", streaming=False)
    return raw, prepare_dataset(raw, SamSegmentationPreprocessor.from_processor(processor), keep_original_mask=True)


def _trainer(data, tmp_path, retention: bool, **args):
    """A 2-step run evaluated at each step, the zero-shot evaluation first (as examples/train.py runs it)."""
    processor = SamProcessor.from_pretrained(BUILTIN_MODEL_PATH)
    train = prepare_dataset(load_segmentation_dataset(data["target"], split="train", streaming=False),
                            SamSegmentationPreprocessor.from_processor(processor))
    _, target = _prepared(data["target"], processor)
    raw_retention, retention_set = _prepared(data["retention"], processor)
    args = TrainingArguments(
        output_dir=str(tmp_path / "run"), max_steps=2, eval_strategy="steps", eval_steps=1, save_strategy="steps",
        save_steps=2, per_device_train_batch_size=4, per_device_eval_batch_size=3, learning_rate=1e-2,
        report_to="none", disable_tqdm=True, use_cpu=True, seed=0, **args,
    )
    trainer = InfoSAMTrainer(
        model=SamModel.from_pretrained(BUILTIN_MODEL_PATH),
        args=args,
        peft_config=PeftArguments(lora_r=2),
        train_dataset=train,
        eval_dataset=target,
        retention_dataset=retention_set if retention else None,
        data_collator=SamSegmentationCollator(PromptSampler(seed=0)),
        eval_data_collator=SamSegmentationCollator(PromptSampler(box_noise=0.0), prompt_type="box"),
        processing_class=processor,
        compute_metrics=build_compute_metrics(),
    )
    before = trainer.evaluate(metric_key_prefix="zero_shot")
    trainer.train()
    return trainer, before, processor, raw_retention, retention_set


@pytest.fixture(scope="module")
def runs(data, tmp_path_factory):
    """With and without a retention set. A DataLoader worker (each takes its seed from torch's generator when its
    loader starts) makes the training prompts depend on every random draw an evaluation could make."""
    return {
        retention: _trainer(data, tmp_path_factory.mktemp(f"run-{retention}"), retention, dataloader_num_workers=1)
        for retention in (True, False)
    }


@pytest.mark.slow  # two 2-step runs with a DataLoader worker, ~2 min on 2 shared cores
def test_retention_metrics_are_logged_beside_the_target_metrics(runs):
    trainer, before, *_ = runs[True]
    assert {"zero_shot_retention_iou", "zero_shot_retention_dice", "zero_shot_iou", "zero_shot_dice"} <= set(before)
    evaluations = [entry for entry in trainer.state.log_history if "eval_iou" in entry]
    assert [entry["step"] for entry in evaluations] == [1, 2]
    for entry in evaluations:  # one log entry per evaluation, both families in it
        assert {"eval_retention_iou", "eval_retention_dice", "eval_iou", "eval_dice"} <= set(entry)
        assert 0 < entry["eval_retention_runtime"] < entry["eval_runtime"]  # its cost, part of the evaluation's
    saved = json.loads(open(os.path.join(trainer.args.output_dir, "checkpoint-2", "trainer_state.json")).read())
    assert [e["eval_retention_iou"] for e in saved["log_history"] if "eval_retention_iou" in e] == [
        e["eval_retention_iou"] for e in evaluations
    ]
    # The target's metrics and loss parts are those of a run without a retention set.
    plain = [entry for entry in runs[False][0].state.log_history if "eval_iou" in entry]
    for with_retention, without in zip(evaluations, plain):
        for key in ("eval_iou", "eval_dice", "eval_loss", "eval_loss_seg", "eval_loss_r", "eval_loss_d"):
            assert with_retention[key] == pytest.approx(without[key], abs=1e-6), key
        assert not any("retention" in key for key in without)


@pytest.mark.slow  # two 2-step runs with a DataLoader worker, ~2 min on 2 shared cores
def test_retention_metrics_equal_the_evaluation_of_that_set(runs):
    trainer, before, processor, raw_retention, retention_set = runs[True]
    after = trainer.evaluate()
    as_target = trainer.evaluate(eval_dataset=retention_set, metric_key_prefix="check")
    # evaluate_segmentation: infosam_hf.evaluation's path (examples/evaluate_adapter.py's), at each image's own size
    scored = evaluate_segmentation(trainer.model.student, processor, raw_retention, batch_size=2, disable_tqdm=True)
    for name in ("iou", "dice"):
        assert after[f"eval_retention_{name}"] == pytest.approx(as_target[f"check_{name}"], abs=1e-6)
        assert after[f"eval_retention_{name}"] == pytest.approx(scored["metrics"]["adapter"][name], abs=1e-6)
        assert before[f"zero_shot_retention_{name}"] == pytest.approx(scored["metrics"]["zero_shot"][name], abs=1e-6)
    assert after["eval_retention_iou"] != pytest.approx(before["zero_shot_retention_iou"], abs=1e-6)  # it trained


@pytest.mark.slow  # two 2-step runs with a DataLoader worker, ~2 min on 2 shared cores
def test_retention_set_does_not_change_the_trained_adapter(runs):
    """Scoring the retention set draws no training randomness: the adapter is the same to the bit."""
    with_retention, without = (runs[r][0].model.student for r in (True, False))
    weights = {n: p for n, p in with_retention.named_parameters() if p.requires_grad}
    assert weights
    for name, param in without.named_parameters():
        if param.requires_grad:
            assert torch.equal(param, weights[name]), name


def test_bad_retention_path_fails_before_any_model_loads(tmp_path, monkeypatch):
    script = load_script(os.path.join(ROOT, "examples", "train.py"), "train_retention_script")

    def no_model(*args, **kwargs):
        raise AssertionError("a model loaded before the bad path was reported")

    monkeypatch.setattr(script, "load_model_and_processor", no_model)
    missing = str(tmp_path / "no-such-folder")
    with pytest.raises(FileNotFoundError, match="--retention_dataset .*not found"):
        script.main(["--retention_dataset", missing, "--output_dir", str(tmp_path / "run")])
    with pytest.raises(FileNotFoundError, match="--retention_dataset .*not found"):  # with a layout too
        script.main(["--retention_dataset", missing, "--retention_instance_format", "ids", "--output_dir",
                     str(tmp_path / "run")])
    evaluate = load_script(os.path.join(ROOT, "examples", "evaluate_adapter.py"), "evaluate_retention_script")
    monkeypatch.setattr(evaluate, "load_model_or_base", no_model)
    with pytest.raises(FileNotFoundError, match="--retention_dataset .*not found"):
        evaluate.main(["--retention_dataset", missing, "--retention_instance_format", "coco"])


@pytest.mark.slow
def test_train_script_reports_retention_and_puts_it_on_the_card(data, tmp_path, capsys):
    out = tmp_path / "run"
    summary = load_script(os.path.join(ROOT, "examples", "train.py"), "train_retention_script").main(
        ["--dataset_name", data["target"], "--retention_dataset", data["retention"], "--output_dir", str(out),
         "--max_steps", "2", "--per_device_train_batch_size", "4", "--disable_tqdm", "true", "--lora_r", "2",
         "--eval_overlays", "0", "--learning_rate", "1e-2"]
    )
    printed = capsys.readouterr().out
    line = (f"general (retention) IoU before {summary['zero_shot_retention_iou']:.4f} -> after "
            f"{summary['retention_iou']:.4f}")
    assert line.replace("general", os.path.basename(data["retention"])) in printed
    saved = json.loads((out / "iou_before_after.json").read_text())
    assert saved["retention_iou"] == summary["retention_iou"] and saved["zero_shot_retention_iou"] is not None

    card = ModelCard.load(out / "README.md")
    entries = card.data.to_dict()["model-index"][0]["results"]
    assert len(entries) == 2  # the target set, then the retention set
    target, retention = entries
    assert "retention" not in target["dataset"]["name"]
    assert not any("retention" in m["type"] for m in target["metrics"])
    assert retention["dataset"]["name"] == f"local data `{os.path.basename(data['retention'])}` (retention)"
    values = {m["type"]: m["value"] for m in retention["metrics"]}
    assert values["iou"] == pytest.approx(summary["retention_iou"])
    assert values["zero_shot_iou"] == pytest.approx(summary["zero_shot_retention_iou"])
    assert "model_preparation_time" not in values
    assert "Retention: the same metrics on local data" in card.text
    # examples/evaluate_adapter.py's retention table for the saved adapter: the run's numbers
    evaluated = load_script(os.path.join(ROOT, "examples", "evaluate_adapter.py"), "evaluate_retention_script").main(
        ["--adapter", str(out), "--dataset_name", data["target"], "--retention_dataset", data["retention"],
         "--disable_tqdm", "true", "--max_samples", "1"])
    for name in ("iou", "dice"):
        for prefix, row in (("zero_shot_", "zero_shot"), ("", "adapter")):
            assert summary[f"{prefix}retention_{name}"] == pytest.approx(
                evaluated["retention"]["metrics"][row][name], abs=1e-6)


def test_retention_pass_leaves_the_training_prompts_alone(data, tmp_path):
    """Without an evaluation collator the Trainer evaluates with the training one: the retention pass must not
    advance its prompt sampler (training's prompts would then depend on whether a retention set is scored)."""
    processor = SamProcessor.from_pretrained(BUILTIN_MODEL_PATH)
    _, target = _prepared(data["target"], processor)
    _, retention_set = _prepared(data["retention"], processor)
    states = []
    for retention in (retention_set, None):
        collator = SamSegmentationCollator(PromptSampler(seed=0, box_probability=0.5))
        trainer = InfoSAMTrainer(
            model=SamModel.from_pretrained(BUILTIN_MODEL_PATH),
            args=TrainingArguments(output_dir=str(tmp_path / "run"), per_device_eval_batch_size=3, report_to="none",
                                   disable_tqdm=True, use_cpu=True),
            peft_config=PeftArguments(lora_r=2), eval_dataset=target, retention_dataset=retention,
            data_collator=collator, processing_class=processor, compute_metrics=build_compute_metrics(),
        )
        metrics = trainer.evaluate()
        assert ("eval_retention_iou" in metrics) == (retention is not None)
        states.append((json.dumps(collator.prompt_sampler.state_dict(), default=str), metrics["eval_iou"]))
    assert states[0] == states[1]
