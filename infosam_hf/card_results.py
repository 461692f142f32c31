"""The figures an adapter's model card publishes, read back from its Hub metadata (`model-index`).

`model_card` writes one `model-index` entry per data set: the target set and, when the run scored one, the retention
set (`"<name> (retention)"`), each with the adapter's `<metric>` beside the zero-shot base's `zero_shot_<metric>`
where the run measured the base (examples/train.py does, before training). Whoever shows an adapter
(examples/demo.py) shows what it was measured to do there and what fine-tuning cost on what the base already
segmented, from the same card the Hub renders, instead of figures of its own. A folder without a card, or a card
without `model-index`, has no figures: an empty list, never an error.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field

logger = logging.getLogger(__name__)

__all__ = ["CardResults", "read_card_results"]

# The names `model_card` writes the metadata with, defined here (the light module) and imported there, so that the
# writer and this reader cannot drift apart.
ZERO_SHOT_PREFIX = "zero_shot_"  # the zero-shot base's value of a metric: `zero_shot_iou` beside `iou`
RETENTION_SUFFIX = " (retention)"  # the retention set's entry: "<set name> (retention)"


@dataclass
class CardResults:
    """One data set of a card: `rows` are (metric, adapter's value, zero-shot base's value), None where absent."""

    dataset: str
    retention: bool
    dataset_args: str | None = None
    rows: list[tuple[str, float | None, float | None]] = field(default_factory=list)


def read_card_results(folder_or_card: str | os.PathLike) -> list[CardResults]:
    """The `model-index` of `<folder>/README.md` (or of the card file given), one `CardResults` per data set, in the
    card's order; [] when there is no card, no `model-index`, or metadata that does not parse (logged)."""
    from huggingface_hub import ModelCard

    path = os.fspath(folder_or_card)
    path = os.path.join(path, "README.md") if os.path.isdir(path) else path
    if not os.path.isfile(path):
        return []
    try:
        results = ModelCard.load(path).data.eval_results or []
    except Exception as err:  # a hand-edited card the Hub would not parse either: shown without figures
        logger.warning(f"{path}: its metadata does not parse ({err}); no figures from the card.")
        return []
    sets: dict[tuple[str | None, str | None], CardResults] = {}
    values: dict[tuple[str | None, str | None], dict[str, list]] = {}
    for result in results:
        key = (result.dataset_type, result.dataset_name)
        if key not in sets:
            name = result.dataset_name or result.dataset_type or "evaluation set"
            retention = name.endswith(RETENTION_SUFFIX)
            sets[key] = CardResults(name[: -len(RETENTION_SUFFIX)] if retention else name, retention,
                                    result.dataset_args if isinstance(result.dataset_args, str) else None)
            values[key] = {}
        try:
            value = float(result.metric_value)
        except (TypeError, ValueError):
            continue  # a hand-edited value that is no number: left out, the rest shown
        metric = result.metric_type
        zero_shot = metric.startswith(ZERO_SHOT_PREFIX)
        metric = metric[len(ZERO_SHOT_PREFIX):] if zero_shot else metric
        pair = values[key].setdefault(metric, [None, None])
        pair[1 if zero_shot else 0] = value
    for key, card_results in sets.items():
        card_results.rows = [(metric, adapter, base) for metric, (adapter, base) in values[key].items()]
    return list(sets.values())
