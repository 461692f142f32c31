"""A local ``evaluate`` metric, so that ``evaluate.load`` works offline.

``evaluate.load("mean_iou")`` and friends fetch their script from the Hub; this one ships
with the package::

    import evaluate
    from infosam_hf.evaluate_metric import SAM_SEGMENTATION_METRIC

    metric = evaluate.load(SAM_SEGMENTATION_METRIC)
    metric.add_batch(predictions=[logits_hw, ...], references=[mask_hw, ...])
    metric.compute(structure_measures=True)
"""

from pathlib import Path

SAM_SEGMENTATION_METRIC: str = str(Path(__file__).resolve().with_name("sam_segmentation.py"))

__all__ = ["SAM_SEGMENTATION_METRIC"]
