"""infosam_hf.card_results: the figures of a card our own model_card.py writes, read back from its `model-index`
(what examples/demo.py shows beside its masks), and whatever a folder has when its card lacks them."""

import logging

import pytest
from helpers import make_model

from infosam_hf.card_results import read_card_results
from infosam_hf.model_card import write_model_card

TARGET = "local data `polyps`"
RETENTION = "the built-in synthetic 'general' domain"


def _card(folder, retention=True):
    folder.mkdir(exist_ok=True)
    metrics = {"eval_iou": 0.8123, "eval_dice": 0.8654, "eval_loss": 0.3, "eval_runtime": 2.0}
    baseline = {"zero_shot_iou": 0.7011, "zero_shot_dice": 0.7712}
    if retention:
        metrics |= {"eval_retention_iou": 0.9412, "eval_retention_dice": 0.9671, "eval_retention_runtime": 1.0}
        baseline |= {"zero_shot_retention_iou": 0.9688, "zero_shot_retention_dice": 0.9841}
    write_model_card(None, output_dir=folder, model=make_model(), overwrite=True, metrics=metrics,
                     baseline_metrics=baseline, dataset=TARGET, dataset_args="split test",
                     **({"retention_dataset": RETENTION, "retention_dataset_args": "split test, at most 64 images"}
                        if retention else {}))
    return folder


def test_the_target_and_retention_entries_with_the_zero_shot_base_beside_the_adapter(tmp_path):
    target, retention = read_card_results(_card(tmp_path))
    assert (target.dataset, target.retention, target.dataset_args) == (TARGET, False, "split test")
    rows = {metric: (adapter, base) for metric, adapter, base in target.rows}
    # the card's model-index holds the adapter's target metrics beside the base's (loss and speed stay out)
    assert rows == {"iou": (0.8123, 0.7011), "dice": (0.8654, 0.7712)}
    assert (retention.dataset, retention.retention) == (RETENTION, True)
    assert retention.dataset_args == "split test, at most 64 images"
    assert retention.rows == [("iou", 0.9412, 0.9688), ("dice", 0.9671, 0.9841)]


def test_a_value_edited_on_the_card_is_what_is_read(tmp_path):
    card = _card(tmp_path) / "README.md"
    text = card.read_text()
    assert text.count("value: 0.9412") == 1
    card.write_text(text.replace("value: 0.9412", "value: 0.5011"))
    retention = read_card_results(tmp_path)[1]
    assert retention.rows[0] == ("iou", 0.5011, 0.9688)
    assert read_card_results(card)[1].rows == retention.rows  # the card file itself, or its folder


def test_what_a_folder_has_without_figures(tmp_path, caplog):
    assert read_card_results(tmp_path) == []  # no card
    (target,) = read_card_results(_card(tmp_path / "no-retention", retention=False))
    assert not target.retention and target.rows[0] == ("iou", 0.8123, 0.7011)
    (tmp_path / "README.md").write_text("# My adapter\n\nNo metadata at all.\n")
    assert read_card_results(tmp_path) == []
    (tmp_path / "README.md").write_text("---\nmodel-index: [unclosed\n---\n# Broken\n")
    with caplog.at_level(logging.WARNING, logger="infosam_hf.card_results"):
        assert read_card_results(tmp_path) == []
    assert "README.md: its metadata does not parse" in caplog.text
    card = _card(tmp_path / "odd-value") / "README.md"
    card.write_text(card.read_text().replace("value: 0.9412", "value: n/a"))
    rows = {metric: (adapter, base) for metric, adapter, base in read_card_results(card)[1].rows}
    assert rows == {"iou": (None, 0.9688), "dice": (0.9671, 0.9841)}  # the rest of the card still shown


@pytest.mark.parametrize("retention", [True, False])
def test_the_rows_follow_the_card_model_card_writes(tmp_path, retention):
    """Every model-index result is read back once: none lost, none invented."""
    from huggingface_hub import ModelCard

    folder = _card(tmp_path, retention=retention)
    written = ModelCard.load(folder / "README.md").data.eval_results
    read = read_card_results(folder)
    values = sorted(v for entry in read for _, adapter, base in entry.rows for v in (adapter, base) if v is not None)
    assert values == sorted(r.metric_value for r in written)


def test_a_run_that_never_measured_the_base_publishes_no_zero_shot_values(tmp_path):
    from huggingface_hub import ModelCard

    # the base measured on one metric only, and on one the adapter does not report: only the shared one is published
    write_model_card(None, output_dir=tmp_path, model=make_model(), overwrite=True,
                     metrics={"eval_iou": 0.8123, "eval_dice": 0.8654},
                     baseline_metrics={"zero_shot_iou": 0.7011, "zero_shot_boundary_f1": 0.5}, dataset=TARGET)
    (target,) = read_card_results(tmp_path)
    assert target.rows == [("iou", 0.8123, 0.7011), ("dice", 0.8654, None)]
    write_model_card(None, output_dir=tmp_path, model=make_model(), overwrite=True, metrics={"eval_iou": 0.8123},
                     dataset=TARGET)
    types = [r.metric_type for r in ModelCard.load(tmp_path / "README.md").data.eval_results]
    assert types == ["iou"]
