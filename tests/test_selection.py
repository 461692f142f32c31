"""Model selection on gain and forgetting (issue 30): `--best_model_metric`, `eval_retention_drop`,
`--max_retention_drop`. Expressions and the stock best-checkpoint logic are checked on fed metrics; short runs of the
built-in SAM on a few synthetic images check the wiring (one through examples/train.py)."""

import json
import os
import re
from types import SimpleNamespace

import pytest
import torch
from helpers import load_example, make_model, write_target_and_retention
from peft import get_peft_model_state_dict
from safetensors.torch import load_file
from transformers import EvalPrediction, SamModel, SamProcessor, Trainer, TrainerState, TrainingArguments

from infosam_hf import InfoSAMTrainer, InfoSAMTrainingArguments, PeftArguments
from infosam_hf.builtin import BUILTIN_MODEL_PATH
from infosam_hf.data import (
    PromptSampler,
    SamSegmentationCollator,
    SamSegmentationPreprocessor,
    load_segmentation_dataset,
    prepare_dataset,
)
from infosam_hf.metrics import build_compute_metrics
from infosam_hf.modeling import ADAPTER_WEIGHTS_NAME
from infosam_hf.selection import MetricExpression, ModelSelection, RetentionDropCallback
from infosam_hf.testing import toy_segmentation_dataset

METRICS = {"eval_iou": 0.8, "eval_dice": 0.9, "eval_loss": 0.5, "eval_retention_drop": 0.1}


# ---------------------------------------------------------------------------------------------- the expression
@pytest.mark.parametrize(
    "text, value",
    [
        ("iou - 0.5*retention_drop", 0.8 - 0.05),
        ("eval_iou - 0.5 * eval_retention_drop", 0.8 - 0.05),  # the eval_ prefix is allowed, as metric_for_best_model
        ("-(iou + dice) / 2", -0.85),
        ("+iou - -loss", 1.3),
        ("2 * (iou - retention_drop) - 1", 0.4),
        ("iou", 0.8),
    ],
)
def test_expression_accepts_arithmetic_over_metric_names(text, value):
    assert MetricExpression(text).value(METRICS) == pytest.approx(value)


@pytest.mark.parametrize(
    "text, culprit",
    [
        ("iou ** 2", "the operator '\\*\\*'"),
        ("iou // 2", "the operator '//'"),
        ("iou % 2", "the operator '%'"),
        ("iou@0.5 - retention_drop", "the operator '@' .*iou@0.5 selects on it alone"),
        ("abs(iou)", "'abs\\(iou\\)' \\(a function call\\)"),
        ("__import__('os').system('true')", "a function call"),
        ("iou.real", "attribute or item access"),
        ("iou[0]", "attribute or item access"),
        ("iou > 0.5", "a comparison or boolean operator"),
        ("iou and dice", "a comparison or boolean operator"),
        ("not iou", "the operator 'not'"),
        ("True", "a bool, not a number"),
        ("'iou'", "a str, not a number"),
        ("lambda: iou", "a Lambda expression"),
        ("iou -", "is not an arithmetic expression"),
        ("", "is not an arithmetic expression"),
    ],
)
def test_expression_refuses_anything_else_naming_the_flag_and_what(text, culprit):
    with pytest.raises(ValueError) as error:
        MetricExpression(text)
    message = str(error.value)
    assert message.startswith(f"--best_model_metric {text!r}") and re.search(culprit, message), message
    assert "+ - * /" in message  # and what is allowed


def test_expression_names_a_metric_an_evaluation_lacks():
    with pytest.raises(KeyError, match="no metric 'retention_iou' .*it has dice, iou, loss, retention_drop"):
        MetricExpression("iou - retention_iou").value(METRICS)
    with pytest.raises(ValueError, match="divides by zero"):
        MetricExpression("iou / (dice - 0.9)").value(METRICS)


# ---------------------------------------------------------------------------------------------- the arguments
def _args(tmp_path, **kwargs):
    values = dict(output_dir=str(tmp_path / "run"), report_to="none", use_cpu=True)
    return InfoSAMTrainingArguments(**{**values, **kwargs})


def test_best_model_metric_becomes_metric_for_best_model_with_the_stock_semantics(tmp_path):
    args = _args(tmp_path, best_model_metric="iou - 0.5*retention_drop")
    assert (args.metric_for_best_model, args.greater_is_better) == ("selection_score", True)
    lower = _args(tmp_path, best_model_metric="loss + retention_drop", greater_is_better=False)
    assert (lower.metric_for_best_model, lower.greater_is_better) == ("selection_score", False)
    again = InfoSAMTrainingArguments(**{**args.to_dict(), "output_dir": args.output_dir})  # training_args.json
    assert again.metric_for_best_model == "selection_score"
    # a drop is better small: not transformers' default guess for a name without "loss"
    assert _args(tmp_path, metric_for_best_model="retention_drop").greater_is_better is False
    assert _args(tmp_path, metric_for_best_model="retention_iou").greater_is_better is True


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(best_model_metric="iou", metric_for_best_model="dice"),
         "--best_model_metric 'iou' and --metric_for_best_model dice both choose"),
        (dict(best_model_metric="iou ^ 2"), "--best_model_metric 'iou \\^ 2': the operator '\\^'"),
        (dict(max_retention_drop=0.02), "--eval_strategy is 'no': pass --eval_strategy steps --eval_steps N"),
        (dict(max_retention_drop=-0.1, eval_strategy="steps", eval_steps=1), "must be a retention-IoU margin"),
        (dict(max_retention_drop=float("nan"), eval_strategy="steps", eval_steps=1), "must be a retention-IoU margin"),
    ],
)
def test_selection_flags_are_refused_when_the_arguments_are_built(tmp_path, kwargs, message):
    with pytest.raises(ValueError, match=message):
        _args(tmp_path, **kwargs)


def _trainer(tmp_path, retention=True, compute_metrics=True, **kwargs):
    """An InfoSAMTrainer on the tiny random SAM and toy data: what it refuses at start-up."""
    args = _args(tmp_path, eval_strategy="steps", eval_steps=1, per_device_train_batch_size=2, **kwargs)
    return InfoSAMTrainer(
        model=make_model(), args=args, train_dataset=toy_segmentation_dataset(4), eval_dataset=toy_segmentation_dataset(2),
        retention_dataset=toy_segmentation_dataset(2, seed=1) if retention else None,
        data_collator=SamSegmentationCollator(PromptSampler(seed=0)),
        compute_metrics=build_compute_metrics() if compute_metrics else None,
    )


def test_start_up_refuses_names_the_evaluations_will_not_log(tmp_path):
    with pytest.raises(ValueError, match="unknown metric 'retention_dorp'; an evaluation logs dice, dice@0.5, iou, "
                                         "iou@0.5, loss, loss_d, loss_r, loss_seg, retention_dice"):
        _trainer(tmp_path, best_model_metric="iou - 0.5*retention_dorp")
    with pytest.raises(ValueError, match="unknown metric 'retention_drop'; an evaluation \\(no retention_dataset"):
        _trainer(tmp_path, retention=False, best_model_metric="iou - 0.5*retention_drop")
    with pytest.raises(ValueError, match="unknown metric 'iou'"):
        _trainer(tmp_path, compute_metrics=False, best_model_metric="iou")
    trainer = _trainer(tmp_path, best_model_metric="iou - 0.5*retention_drop + 0*(dice + loss_r + retention_loss)")
    assert trainer.args.metric_for_best_model == "selection_score"


@pytest.mark.parametrize("structure_measures", [False, True])
def test_the_names_checked_at_start_up_are_those_compute_metrics_returns(structure_measures):
    compute_metrics = build_compute_metrics(structure_measures=structure_measures)
    generator = torch.Generator().manual_seed(0)
    logits, masks = torch.randn(3, 1, 16, 16, generator=generator), torch.rand(3, 1, 16, 16, generator=generator) > 0.5
    returned = compute_metrics(EvalPrediction(predictions=logits.numpy(), label_ids=masks.float().numpy()))
    assert compute_metrics.metric_names() == set(returned)
    assert ("s_measure" in returned) == structure_measures


def test_start_up_refuses_a_stop_margin_without_a_retention_set(tmp_path):
    with pytest.raises(ValueError, match="--max_retention_drop 0.02 needs a retention set .*--retention_dataset"):
        _trainer(tmp_path, retention=False, max_retention_drop=0.02)
    with pytest.raises(ValueError, match="compute_metrics=infosam_hf.metrics.build_compute_metrics"):
        _trainer(tmp_path, compute_metrics=False, max_retention_drop=0.02)
    trainer = _trainer(tmp_path, max_retention_drop=0.02)
    stops = [cb for cb in trainer.callback_handler.callbacks if isinstance(cb, RetentionDropCallback)]
    assert [cb.max_drop for cb in stops] == [0.02]
    assert not any(isinstance(cb, RetentionDropCallback) for cb in _trainer(tmp_path).callback_handler.callbacks)


def test_the_zero_shot_value_is_measured_only_where_something_reads_it(tmp_path):
    def needs(**kwargs):
        trainer = _trainer(tmp_path, **kwargs)
        return trainer.model_selection.needs_reference(trainer)

    assert needs(max_retention_drop=0.5)
    assert needs(best_model_metric="iou - retention_drop")
    assert needs(metric_for_best_model="eval_retention_drop")
    assert not needs(best_model_metric="iou + retention_iou")
    assert not needs(metric_for_best_model="retention_iou")
    assert not needs()


# ---------------------------------------------------------------------------------------------- picking a checkpoint
# Three evaluations: the target's IoU is best at step 2, where the retention set fell most.
FED = [{"eval_iou": 0.80, "eval_retention_iou": 0.90}, {"eval_iou": 0.85, "eval_retention_iou": 0.70},
       {"eval_iou": 0.83, "eval_retention_iou": 0.86}]


def _best_step(args, reference=0.90):
    """Feed FED through the trainer's selection metrics and the stock Trainer's best-checkpoint rule."""
    expression = MetricExpression(args.best_model_metric) if getattr(args, "best_model_metric", None) else None
    selection = ModelSelection(expression)
    selection.reference = reference
    stub = SimpleNamespace(args=args, state=TrainerState())
    for step, fed in enumerate(FED, start=1):
        metrics = {**fed, "eval_runtime": 1.0}
        selection.add_metrics(metrics, global_step=step)
        stub.state.global_step = step
        Trainer._determine_best_metric(stub, metrics, trial=None)
    return stub.state.best_global_step, stub.state.best_metric


def test_the_score_picks_another_checkpoint_than_the_iou(tmp_path):
    common = dict(eval_strategy="steps", save_strategy="steps", load_best_model_at_end=True)
    score = _args(tmp_path, best_model_metric="iou - 0.5*retention_drop", **common)
    assert _best_step(score) == (3, pytest.approx(0.83 - 0.5 * 0.04))  # 0.80, 0.75, 0.81
    assert _best_step(_args(tmp_path, metric_for_best_model="iou", **common)) == (2, 0.85)
    assert _best_step(_args(tmp_path, metric_for_best_model="retention_drop", **common)) == (1, 0.0)
    stock = TrainingArguments(output_dir=str(tmp_path / "run"), metric_for_best_model="retention_iou", **common)
    assert _best_step(stock) == (1, 0.90)  # a plain --metric_for_best_model retention_iou, stock TrainingArguments


def test_the_drop_and_score_are_added_to_evaluations_of_the_trainers_own_set_only():
    selection = ModelSelection(MetricExpression("iou - retention_drop"))
    selection.add_metrics({"zero_shot_retention_iou": 0.9, "zero_shot_runtime": 1.0}, global_step=0)
    assert selection.reference == 0.9
    selection.add_metrics({"zero_shot_retention_iou": 0.1}, global_step=5)  # after training started: not zero-shot
    assert selection.reference == 0.9
    logs = {"eval_iou": 0.7, "eval_retention_iou": 0.8, "eval_runtime": 1.0}
    selection.add_metrics(logs, global_step=1)
    assert logs["eval_retention_drop"] == pytest.approx(0.1) and logs["eval_selection_score"] == pytest.approx(0.6)
    other = {"eval_target_iou": 0.7, "eval_target_runtime": 1.0, "loss": 0.3}
    selection.add_metrics(other, global_step=1)
    assert set(other) == {"eval_target_iou", "eval_target_runtime", "loss"}
    unknown = ModelSelection(MetricExpression("iou - retention_drop"))  # no zero-shot value yet: no score yet
    logs = {"eval_iou": 0.7, "eval_retention_iou": 0.8, "eval_runtime": 1.0}
    unknown.add_metrics(logs, global_step=0)
    assert "eval_selection_score" not in logs and "eval_retention_drop" not in logs


def test_the_stop_callback_stops_only_during_training_past_the_margin():
    callback = RetentionDropCallback(0.02)
    args = SimpleNamespace(eval_strategy="steps", load_best_model_at_end=False)
    state = SimpleNamespace(global_step=3, max_steps=10, is_world_process_zero=True)
    control = SimpleNamespace(should_training_stop=False)
    callback.on_evaluate(args, state, control, metrics={"eval_retention_drop": 0.5, "eval_retention_iou": 0.4})
    assert not control.should_training_stop  # an evaluation before training
    callback.on_train_begin(args, state, control)
    callback.on_evaluate(args, state, control, metrics={"eval_retention_drop": 0.02, "eval_retention_iou": 0.88})
    assert not control.should_training_stop  # at the margin: still allowed
    callback.on_evaluate(args, state, control, metrics={"eval_retention_drop": 0.03, "eval_retention_iou": 0.87})
    assert control.should_training_stop
    assert callback.stop_reason.startswith("Stopped training at step 3 of 10: the retention IoU fell from 0.9000 "
                                           "(zero-shot) to 0.8700, a drop of 0.0300 > --max_retention_drop 0.02")
    with pytest.raises(KeyError, match="no eval_retention_drop .*InfoSAMTrainer with a retention_dataset"):
        callback.on_evaluate(args, state, control, metrics={"eval_iou": 0.5})


# ---------------------------------------------------------------------------------------------- short real runs
@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return write_target_and_retention(tmp_path_factory.mktemp("selection-data"))


def _prepared(folder, split, processor, **kwargs):
    raw = load_segmentation_dataset(folder, split=split, streaming=False)
    return prepare_dataset(raw, SamSegmentationPreprocessor.from_processor(processor), **kwargs)


def _run_trainer(data, folder, model=None, **kwargs):
    """The built-in SAM on 8 target images, evaluated (4 target + 4 retention images) after every step; every
    `_evaluate_retention` call counted in `trainer.retention_passes`."""
    processor = SamProcessor.from_pretrained(BUILTIN_MODEL_PATH)
    args = dict(output_dir=str(folder), max_steps=6, eval_strategy="steps", eval_steps=1, save_strategy="steps",
                save_steps=1, per_device_train_batch_size=4, per_device_eval_batch_size=4, learning_rate=5e-4,
                report_to="none", disable_tqdm=True, use_cpu=True, seed=0, save_only_model=True)
    trainer = InfoSAMTrainer(
        model=model or SamModel.from_pretrained(BUILTIN_MODEL_PATH),
        args=InfoSAMTrainingArguments(**{**args, **kwargs}),
        # LoRA dropout draws from torch's generator at every training step: training sees any draw an evaluation makes
        peft_config=None if model is not None else PeftArguments(lora_r=2, lora_dropout=0.1),
        train_dataset=_prepared(data["target"], "train", processor),
        eval_dataset=_prepared(data["target"], "test", processor, keep_original_mask=True),
        retention_dataset=_prepared(data["retention"], "test", processor, keep_original_mask=True),
        data_collator=SamSegmentationCollator(PromptSampler(seed=0)),
        eval_data_collator=SamSegmentationCollator(PromptSampler(box_noise=0.0), prompt_type="box"),
        processing_class=processor, compute_metrics=build_compute_metrics(),
    )
    passes, retention_pass = [], trainer._evaluate_retention
    trainer._evaluate_retention = lambda *a, **k: passes.append(trainer._retention_prefix) or retention_pass(*a, **k)
    trainer.retention_passes = passes
    return trainer


def _evaluations(trainer):
    return [entry for entry in trainer.state.log_history if "eval_iou" in entry]


@pytest.fixture(scope="module")
def runs(data, tmp_path_factory):
    """The same 6-step run picking its best checkpoint by `iou - 3*retention_drop` (and measuring the zero-shot
    retention itself for a stop margin it never reaches), and by the stock `--metric_for_best_model retention_iou`."""
    result = {}
    for name, kwargs in {
        "score": dict(best_model_metric="iou - 3*retention_drop", max_retention_drop=0.99,
                      load_best_model_at_end=True),
        "stock": dict(metric_for_best_model="retention_iou", load_best_model_at_end=True),
    }.items():
        trainer = _run_trainer(data, tmp_path_factory.mktemp(name) / "run", **kwargs)
        trainer.train()
        result[name] = trainer
    return result


def _saved_adapter(folder):
    return load_file(os.path.join(folder, ADAPTER_WEIGHTS_NAME))


def _same_adapter(trainer, folder) -> bool:
    """The trainer's adapter now is the one saved in `folder`, to the bit."""
    saved, live = _saved_adapter(folder), get_peft_model_state_dict(trainer.model.student)
    assert saved.keys() == live.keys()
    return all(torch.equal(saved[k], live[k].cpu()) for k in saved)


@pytest.mark.slow  # the module's two 6-step runs, evaluated and saved at every step: ~35 s on one shared core
def test_a_run_logs_the_drop_and_score_and_keeps_the_checkpoint_with_the_best_score(runs):
    trainer = runs["score"]
    reference = trainer.model_selection.reference
    evaluations = _evaluations(trainer)
    assert [e["step"] for e in evaluations] == [1, 2, 3, 4, 5, 6]
    for entry in evaluations:
        assert entry["eval_retention_drop"] == pytest.approx(reference - entry["eval_retention_iou"])
        assert entry["eval_selection_score"] == pytest.approx(entry["eval_iou"] - 3 * entry["eval_retention_drop"])
    by_score = max(evaluations, key=lambda e: e["eval_selection_score"])
    by_iou = max(evaluations, key=lambda e: e["eval_iou"])
    # the planted run forgets early: the target's IoU recovers later, the retention set does not
    assert by_score["step"] != by_iou["step"]
    best = os.path.join(trainer.args.output_dir, f"checkpoint-{by_score['step']}")
    assert trainer.state.best_model_checkpoint == best
    assert trainer.state.best_metric == pytest.approx(by_score["eval_selection_score"])
    assert _same_adapter(trainer, best)  # load_best_model_at_end loaded it
    assert not _same_adapter(trainer, os.path.join(trainer.args.output_dir, "checkpoint-6"))
    saved = json.loads(open(os.path.join(best, "trainer_state.json")).read())
    assert any("eval_selection_score" in e for e in saved["log_history"])


@pytest.mark.slow  # the module's two 6-step runs, evaluated and saved at every step: ~35 s on one shared core
def test_the_zero_shot_retention_is_the_bases_measured_once_without_changing_training(runs):
    score, stock = runs["score"], runs["stock"]
    # one retention pass per evaluation, plus one for the zero-shot value (adapters disabled) when training began
    assert score.retention_passes == ["zero_shot_retention"] + ["eval_retention"] * 6
    assert stock.retention_passes == ["eval_retention"] * 6  # nothing needed it: not measured
    assert not any("eval_retention_drop" in e for e in _evaluations(stock))
    for step in (3, 6):  # the extra pass drew no randomness: the same adapters, to the bit
        a, b = (_saved_adapter(os.path.join(t.args.output_dir, f"checkpoint-{step}")) for t in (score, stock))
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.slow  # the module's two 6-step runs, evaluated and saved at every step: ~35 s on one shared core
def test_metric_for_best_model_retention_iou_works_with_the_stock_trainer_logic(runs):
    trainer = runs["stock"]
    evaluations = _evaluations(trainer)
    best = max(evaluations, key=lambda e: e["eval_retention_iou"])
    assert trainer.state.best_metric == best["eval_retention_iou"]
    assert trainer.state.best_model_checkpoint.endswith(f"checkpoint-{best['step']}")
    assert _same_adapter(trainer, trainer.state.best_model_checkpoint)


@pytest.mark.slow  # the module's two 6-step runs, evaluated and saved at every step: ~35 s on one shared core
def test_a_zero_shot_evaluation_is_reused_and_a_moved_adapter_measures_the_base(data, runs, tmp_path):
    trainer = _run_trainer(data, tmp_path / "run", max_steps=2, save_strategy="no", max_retention_drop=0.99)
    before = trainer.evaluate(metric_key_prefix="zero_shot")  # as examples/train.py does
    trainer.train()
    assert trainer.retention_passes == ["zero_shot_retention"] + ["eval_retention"] * 2  # never measured twice
    assert trainer.model_selection.reference == before["zero_shot_retention_iou"]
    assert trainer.model_selection.reference == pytest.approx(runs["score"].model_selection.reference, abs=1e-6)
    # an adapter that already moved (this one, trained): the value measured with the adapters disabled is the base's
    moved = _run_trainer(data, tmp_path / "moved", model=trainer.model, max_retention_drop=0.99)
    own = moved.evaluate()["eval_retention_iou"]
    moved.model_selection.before_training(moved)
    assert moved.model_selection.reference == pytest.approx(before["zero_shot_retention_iou"], abs=1e-6)
    assert own != pytest.approx(moved.model_selection.reference, abs=1e-4)


# ---------------------------------------------------------------------------------------------- examples/train.py
def _train_script(data, out, *flags):
    return load_example("train").main(
        ["--dataset_name", data["target"], "--retention_dataset", data["retention"], "--output_dir", str(out),
         "--max_steps", "6", "--per_device_train_batch_size", "4", "--disable_tqdm", "true", "--lora_r", "2",
         "--eval_overlays", "0", "--learning_rate", "1e-2", "--eval_strategy", "steps", "--eval_steps", "1",
         "--save_strategy", "steps", "--save_steps", "1", "--save_only_model", "true", *flags]
    )


def _last_checkpoint_state(out):
    steps = sorted(int(name.split("-")[1]) for name in os.listdir(out) if name.startswith("checkpoint-"))
    return json.loads((out / f"checkpoint-{steps[-1]}" / "trainer_state.json").read_text())


@pytest.mark.slow  # two 6-step runs of examples/train.py with an evaluation per step, ~40 s on one shared core
def test_train_script_stops_a_run_that_forgets_and_not_the_same_run_without_the_flag(data, tmp_path, caplog):
    """The planted run: learning rate 1e-2 wrecks what the built-in base could segment within a step."""
    stopped = _train_script(data, tmp_path / "stopped", "--max_retention_drop", "0.02")
    state = _last_checkpoint_state(tmp_path / "stopped")
    assert state["global_step"] < state["max_steps"] == 6
    reason = next(r.getMessage() for r in caplog.records if r.getMessage().startswith("Stopped training"))
    assert reason.startswith(f"Stopped training at step {state['global_step']} of 6: the retention IoU fell from "
                             f"{stopped['zero_shot_retention_iou']:.4f} (zero-shot) to ")
    assert "> --max_retention_drop 0.02" in reason
    assert stopped["stopped_early"] == reason  # the run's summary (iou_before_after.json) says why it ended early
    written = json.loads((tmp_path / "stopped" / "iou_before_after.json").read_text())
    assert written["stopped_early"] == reason
    drops = [e["eval_retention_drop"] for e in state["log_history"] if "eval_retention_drop" in e]
    assert drops[-1] > 0.02 and all(d <= 0.02 for d in drops[:-1])
    caplog.clear()
    _train_script(data, tmp_path / "full")
    state = _last_checkpoint_state(tmp_path / "full")
    assert state["global_step"] == 6
    assert json.loads((tmp_path / "full" / "iou_before_after.json").read_text())["stopped_early"] is None
    assert not any(r.getMessage().startswith("Stopped training") for r in caplog.records)
    assert any(e.get("eval_retention_drop", 0) > 0.02 for e in state["log_history"])  # it forgot as much: no stop
    card = (tmp_path / "full" / "README.md").read_text()
    assert "retention_drop" not in card and "selection_score" not in card  # selection aids, not measures
