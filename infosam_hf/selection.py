"""Model selection on what a run gained and what it forgot (issue 30): `--best_model_metric`, `--max_retention_drop`.

A run with a retention set (`InfoSAMTrainer(retention_dataset=...)`) logs how well the adapter still segments what
the base already could; this module turns that into the choice of checkpoint and into a stop:

- `eval_retention_drop`: the zero-shot retention IoU minus the current one (positive = forgotten), added to every
  evaluation once the zero-shot value is known (`ModelSelection`).
- `MetricExpression`: `--best_model_metric "iou - 0.5*retention_drop"`, a small arithmetic expression over metric
  names, parsed with `ast` (names, numbers, + - * /, unary minus, parentheses) and nothing else: no `eval()`.
  Its value is logged as `eval_selection_score` and `metric_for_best_model` names it, so the stock Trainer's own
  `load_best_model_at_end`, `save_strategy="best"` and `greater_is_better` do the selecting.
- `RetentionDropCallback`: stops training, as `transformers.EarlyStoppingCallback` does, once the drop passes
  `--max_retention_drop`.

The zero-shot value is the `metric_key_prefix="zero_shot"` evaluation's when one ran before training (as
examples/train.py runs it), else the base's (the adapters disabled), measured once when `train()` starts.
"""

from __future__ import annotations

import ast
import math
import operator
from collections.abc import Mapping

from transformers.trainer_callback import TrainerCallback
from transformers.trainer_utils import EvalLoopOutput, IntervalStrategy
from transformers.utils import logging

logger = logging.get_logger(__name__)

RETENTION_DROP = "retention_drop"
SELECTION_SCORE = "selection_score"
ZERO_SHOT_PREFIX = "zero_shot"
# InfoSAMTrainingArguments' fields for model selection (next to config.RUN_LOCAL_FIELDS, the teacher's side).
SELECTION_FIELDS = ("best_model_metric", "max_retention_drop")
# Log keys that are not a measure of the model: the card leaves them out of its tables.
NOT_CARD_METRICS = (RETENTION_DROP, SELECTION_SCORE)

_BINARY = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv}
_UNARY = {ast.USub: operator.neg, ast.UAdd: operator.pos}
_SYMBOLS = {ast.Pow: "**", ast.Mod: "%", ast.FloorDiv: "//", ast.MatMult: "@", ast.BitAnd: "&", ast.BitOr: "|",
            ast.BitXor: "^", ast.LShift: "<<", ast.RShift: ">>", ast.Invert: "~", ast.Not: "not"}
_ALLOWED = ("evaluation metric names without the eval_ prefix (iou, dice, loss, retention_iou, retention_drop, ...), "
            'numbers, + - * /, unary minus and parentheses, e.g. "iou - 0.5*retention_drop"')


class MetricExpression:
    """`iou - 0.5*retention_drop`: an arithmetic expression over evaluation metrics, checked when parsed.

    `names` are the metrics it reads (an `eval_` prefix is dropped, as `metric_for_best_model` allows it); anything
    but names, numbers, + - * /, unary +/- and parentheses is refused with a ValueError naming `flag`.
    """

    def __init__(self, text: str, flag: str = "--best_model_metric"):
        self.text, self.flag = text, flag
        try:
            tree = ast.parse(str(text).strip(), mode="eval")
        except SyntaxError as error:
            raise ValueError(f"{flag} {text!r} is not an arithmetic expression ({error.msg}); use {_ALLOWED}.") from None
        self._root = tree.body
        self.names: set[str] = set()
        self._check(self._root)

    def _refuse(self, what: str, hint: str = "") -> ValueError:
        return ValueError(f"{self.flag} {self.text!r}: {what} is not allowed{hint}; use {_ALLOWED}.")

    def _check(self, node: ast.AST) -> None:
        if isinstance(node, ast.BinOp):
            if type(node.op) not in _BINARY:
                symbol = _SYMBOLS.get(type(node.op), type(node.op).__name__)
                if isinstance(node.op, ast.MatMult):  # `iou@0.5` is a metric name, but no expression can hold it
                    raise self._refuse("the operator '@'", " (a metric named with '@', like iou@0.5, cannot appear "
                                       "in an expression: --metric_for_best_model iou@0.5 selects on it alone)")
                raise self._refuse(f"the operator {symbol!r}")
            self._check(node.left)
            self._check(node.right)
        elif isinstance(node, ast.UnaryOp):
            if type(node.op) not in _UNARY:
                raise self._refuse(f"the operator {_SYMBOLS.get(type(node.op), type(node.op).__name__)!r}")
            self._check(node.operand)
        elif isinstance(node, ast.Name):
            self.names.add(_metric_name(node.id))
        elif isinstance(node, ast.Constant) and type(node.value) in (int, float):
            pass
        else:
            raise self._refuse(f"{ast.unparse(node)!r} ({_describe(node)})")

    def check_names(self, known: set[str], where: str) -> None:
        """Refuse names the evaluations will not log (`known`: what they log, without the eval_ prefix)."""
        unknown = sorted(self.names - known)
        if unknown:
            raise ValueError(
                f"{self.flag} {self.text!r}: unknown metric {', '.join(repr(n) for n in unknown)}; {where} logs "
                f"{', '.join(sorted(known))}."
            )

    def value(self, metrics: Mapping[str, float], prefix: str = "eval") -> float:
        """The expression's value on the metrics of one evaluation (`<prefix>_<name>` keys)."""
        values = {}
        for name in self.names:
            key = f"{prefix}_{name}"
            if key not in metrics:
                available = sorted(k[len(prefix) + 1:] for k in metrics if k.startswith(f"{prefix}_"))
                raise KeyError(f"{self.flag} {self.text!r}: this evaluation has no metric {name!r} ({key}); it has "
                               f"{', '.join(available)}.")
            values[name] = float(metrics[key])
        try:
            return float(self._evaluate(self._root, values))
        except ZeroDivisionError:
            raise ValueError(f"{self.flag} {self.text!r} divides by zero on {values}.") from None

    def _evaluate(self, node: ast.AST, values: Mapping[str, float]) -> float:
        if isinstance(node, ast.BinOp):
            return _BINARY[type(node.op)](self._evaluate(node.left, values), self._evaluate(node.right, values))
        if isinstance(node, ast.UnaryOp):
            return _UNARY[type(node.op)](self._evaluate(node.operand, values))
        if isinstance(node, ast.Name):
            return values[_metric_name(node.id)]
        return node.value


def _metric_name(name: str) -> str:
    return name[len("eval_"):] if name.startswith("eval_") else name


def _describe(node: ast.AST) -> str:
    if isinstance(node, ast.Call):
        return "a function call"
    if isinstance(node, ast.Constant):
        return f"a {type(node.value).__name__}, not a number"
    if isinstance(node, (ast.Compare, ast.BoolOp)):
        return "a comparison or boolean operator"
    if isinstance(node, (ast.Attribute, ast.Subscript)):
        return "attribute or item access"
    return f"a {type(node).__name__} expression"


# ---------------------------------------------------------------------------------------------- the arguments
def apply_selection_arguments(args) -> None:
    """InfoSAMTrainingArguments' selection flags, checked and turned into the stock ones before
    `TrainingArguments.__post_init__` derives `greater_is_better` from `metric_for_best_model`."""
    drop = args.max_retention_drop
    if drop is not None and not (isinstance(drop, (int, float)) and math.isfinite(drop) and 0 <= drop < 1):
        raise ValueError(
            f"--max_retention_drop must be a retention-IoU margin in [0, 1) (e.g. 0.02: stop once the retention IoU "
            f"falls 0.02 below its zero-shot value), got {drop!r}."
        )
    if drop is not None and str(getattr(args.eval_strategy, "value", args.eval_strategy)) == IntervalStrategy.NO.value:
        raise ValueError(
            f"--max_retention_drop {drop} checks the retention set at each evaluation during training, but "
            "--eval_strategy is 'no': pass --eval_strategy steps --eval_steps N (or --eval_strategy epoch)."
        )
    chosen = args.metric_for_best_model
    if args.best_model_metric is not None:
        MetricExpression(args.best_model_metric)  # refused here, before anything loads
        if chosen is not None and _metric_name(chosen) != SELECTION_SCORE:
            raise ValueError(
                f"--best_model_metric {args.best_model_metric!r} and --metric_for_best_model {chosen} both choose "
                f"the metric that picks the best checkpoint; pass one of them (--best_model_metric sets "
                f"metric_for_best_model to {SELECTION_SCORE}, its logged value)."
            )
        args.metric_for_best_model = SELECTION_SCORE  # greater is better unless --greater_is_better false
    elif chosen is not None and _metric_name(chosen) == RETENTION_DROP and args.greater_is_better is None:
        args.greater_is_better = False  # a drop is better small, as a loss is (transformers guesses from "loss")


# ---------------------------------------------------------------------------------------------- the trainer's side
class ModelSelection:
    """What an `InfoSAMTrainer` adds to its evaluations: `eval_retention_drop` and `eval_selection_score`.

    `reference` is the zero-shot retention IoU: taken from a `zero_shot` evaluation before training, else measured
    once (`before_training`, the adapters disabled) when a stop margin or the expression needs it.
    """

    def __init__(self, expression: MetricExpression | None = None, max_drop: float | None = None):
        self.expression, self.max_drop = expression, max_drop
        self.reference: float | None = None

    @classmethod
    def for_trainer(cls, trainer, loss_names=("loss",)) -> ModelSelection:
        """The trainer's selection flags checked against what its evaluations will log (errors at start-up), with a
        `RetentionDropCallback` added for `max_retention_drop`."""
        args = trainer.args
        text, max_drop = getattr(args, "best_model_metric", None), getattr(args, "max_retention_drop", None)
        selection = cls(MetricExpression(text) if text is not None else None, max_drop)
        retention = bool(trainer.retention_sets()) and not isinstance(trainer.eval_dataset, dict)
        if max_drop is not None:
            if not retention:
                raise ValueError(
                    f"--max_retention_drop {max_drop} needs a retention set scored beside one eval_dataset: pass "
                    "InfoSAMTrainer(retention_dataset=...) (examples/train.py: the built-in 'general' domain by "
                    "default, or --retention_dataset <folder or Hub id>, not 'none')."
                )
            if trainer.compute_metrics is None:
                raise ValueError(f"--max_retention_drop {max_drop} compares retention IoUs: pass compute_metrics="
                                 "infosam_hf.metrics.build_compute_metrics() to the trainer.")
            trainer.add_callback(RetentionDropCallback(max_drop))
        if selection.expression is not None:
            if isinstance(trainer.eval_dataset, dict):
                raise ValueError(f"--best_model_metric {text!r} scores one eval_dataset, not a dict of them; name one "
                                 "set's metric with --metric_for_best_model (e.g. <name>_iou).")
            known = _logged_names(trainer.compute_metrics, loss_names, retention)
            if known is not None:
                where = "an evaluation" + ("" if retention else " (no retention_dataset: no retention_* metrics)")
                selection.expression.check_names(known, where)
        return selection

    def needs_reference(self, trainer) -> bool:
        stops = any(isinstance(cb, RetentionDropCallback) for cb in trainer.callback_handler.callbacks)
        scores = self.expression is not None and RETENTION_DROP in self.expression.names
        chosen = _metric_name(trainer.args.metric_for_best_model or "") == RETENTION_DROP
        return (stops or scores or chosen) and bool(trainer.retention_sets())

    def before_training(self, trainer) -> None:
        """Measure the zero-shot retention IoU (the base: the adapters disabled) when a flag needs it and no
        `zero_shot` evaluation gave it. The trainer's retention pass leaves every random state as it found it."""
        if self.reference is None and self.needs_reference(trainer):
            model = trainer.accelerator.unwrap_model(trainer.model, keep_torch_compile=False)
            trainer._retention_prefix = f"{ZERO_SHOT_PREFIX}_retention"
            try:
                with model.student.disable_adapter():
                    empty = EvalLoopOutput(predictions=None, label_ids=None, metrics={}, num_samples=0)
                    metrics = trainer._evaluate_retention(empty).metrics
            finally:
                trainer._retention_prefix = None
            self.reference = float(metrics[f"{ZERO_SHOT_PREFIX}_retention_iou"])
            logger.info(f"Zero-shot retention IoU (the base, adapters disabled): {self.reference:.4f}.")
        if self.max_drop is not None and self.reference is not None and trainer.is_world_process_zero():
            logger.info(f"--max_retention_drop {self.max_drop:g}: training stops once the retention IoU falls below "
                        f"{self.reference - self.max_drop:.4f} (zero-shot {self.reference:.4f}).")

    def add_metrics(self, logs: dict, global_step: int) -> None:
        """Called with every log entry before it is logged: a zero-shot evaluation's retention IoU is kept; an
        evaluation of the trainer's own set gains `eval_retention_drop` and `eval_selection_score` (the same dict
        is what `evaluate()` returns and what the Trainer's best-checkpoint logic reads)."""
        zero_shot = logs.get(f"{ZERO_SHOT_PREFIX}_retention_iou")
        if zero_shot is not None and self.reference is None and global_step == 0:
            self.reference = float(zero_shot)
        if "eval_runtime" not in logs:
            return  # not an evaluation of the trainer's own eval_dataset
        if self.reference is not None and "eval_retention_iou" in logs:
            logs[f"eval_{RETENTION_DROP}"] = self.reference - float(logs["eval_retention_iou"])
        if self.expression is not None:
            if RETENTION_DROP in self.expression.names and f"eval_{RETENTION_DROP}" not in logs:
                return  # outside training before the zero-shot value is known: logged from the first one with it
            logs[f"eval_{SELECTION_SCORE}"] = self.expression.value(logs)


def _logged_names(compute_metrics, loss_names, retention: bool) -> set[str] | None:
    """What an InfoSAMTrainer evaluation logs (without eval_), or None when compute_metrics cannot say what it
    returns (a custom one: its names are then checked at the first evaluation)."""
    if compute_metrics is None:
        metrics = set()
    elif callable(getattr(compute_metrics, "metric_names", None)):  # infosam_hf.metrics.SamComputeMetrics
        metrics = set(compute_metrics.metric_names())
    else:
        return None
    names = set(loss_names) | metrics
    if retention:
        names |= {f"retention_{n}" for n in ("loss", *metrics)} | {RETENTION_DROP}
    return names


class RetentionDropCallback(TrainerCallback):
    """Stops training (`control.should_training_stop`, as `EarlyStoppingCallback`) once `eval_retention_drop`, the
    zero-shot retention IoU minus the current one, exceeds `max_drop`; the reason is logged and kept in
    `stop_reason`. `InfoSAMTrainingArguments(max_retention_drop=...)` adds it to an InfoSAMTrainer."""

    def __init__(self, max_drop: float):
        self.max_drop = max_drop
        self.stop_reason: str | None = None
        self._training = False

    def on_train_begin(self, args, state, control, **kwargs):
        if args.eval_strategy == IntervalStrategy.NO:
            raise ValueError(f"RetentionDropCallback(max_drop={self.max_drop}) needs evaluations during training: "
                             "set --eval_strategy steps --eval_steps N (or epoch).")
        self._training, self.stop_reason = True, None

    def on_train_end(self, args, state, control, **kwargs):
        self._training = False

    def on_evaluate(self, args, state, control, metrics=None, **kwargs):
        if not self._training:
            return  # an evaluation before or after training stops nothing
        metrics = metrics or {}
        drop = metrics.get(f"eval_{RETENTION_DROP}")
        if drop is None:
            raise KeyError(
                f"RetentionDropCallback found no eval_{RETENTION_DROP} in the evaluation's metrics: it needs an "
                "InfoSAMTrainer with a retention_dataset (its max_retention_drop argument adds this callback)."
            )
        if drop > self.max_drop:
            now = float(metrics["eval_retention_iou"])
            keep = ("load_best_model_at_end loads the best checkpoint" if args.load_best_model_at_end else
                    "the model of this step is what training leaves; --load_best_model_at_end keeps the best "
                    "checkpoint instead")
            self.stop_reason = (
                f"Stopped training at step {state.global_step} of {state.max_steps}: the retention IoU fell from "
                f"{now + drop:.4f} (zero-shot) to {now:.4f}, a drop of {drop:.4f} > --max_retention_drop "
                f"{self.max_drop:g} ({keep})."
            )
            if state.is_world_process_zero:
                logger.warning(self.stop_reason)
            control.should_training_stop = True
