"""SAM segmentation metrics (InfoSAM protocol) as an ``evaluate`` module.

A thin wrapper over :class:`infosam_hf.metrics.SegmentationMetrics`, for code that expects
the ``evaluate`` interface (``add_batch`` / ``compute``, distributed gathering). Each example
is one 2-D map of mask logits at the label's size and its 2-D ground-truth mask. For large
evaluations prefer ``SegmentationMetrics`` itself: ``evaluate`` stores every mask in Arrow
before computing, the accumulator only keeps per-image scores.
"""

import datasets
import evaluate
import numpy as np

from infosam_hf.metrics import REFERENCE_THRESHOLDS, SegmentationMetrics

_DESCRIPTION = """\
Binary segmentation metrics for Segment Anything fine-tuning as evaluated in InfoSAM
(ICML 2025): IoU and Dice averaged over the thresholds (0.1, 0.3, 0.5, 0.7, 0.9) on the mask
logits, IoU/Dice of the mask logits > 0, and optionally S-measure, mean E-measure and weighted
F-measure (PySODMetrics definitions). Scores are computed per image, then averaged.
"""

_KWARGS_DESCRIPTION = """\
Args:
    predictions: list of 2-D mask logits (H, W), one per image.
    references: list of 2-D ground-truth masks (H, W), binarised as mask > 0.5.
    thresholds: thresholds of the averaged IoU/Dice, default (0.1, 0.3, 0.5, 0.7, 0.9).
    threshold_on: "logits" (default, as the InfoSAM reference) or "probabilities".
    structure_measures: also return s_measure, e_measure and weighted_f (default False).
    structure_input: "sigmoid" (default) or "clip" (the reference's clip(logits, 0, 1)).
    e_measure_mode: "mean" (default) or "adaptive".
    wf_beta2: beta^2 of the weighted F-measure (default 1.0).
    normalize: min-max rescale each map before the structure measures (default False).
Returns:
    dict with iou, dice, iou@0.5, dice@0.5 [, s_measure, e_measure, weighted_f].
Examples:
    >>> import evaluate, numpy as np
    >>> from infosam_hf.evaluate_metric import SAM_SEGMENTATION_METRIC
    >>> metric = evaluate.load(SAM_SEGMENTATION_METRIC)
    >>> gt = np.zeros((4, 4)); gt[:2] = 1
    >>> metric.compute(predictions=[np.where(gt > 0, 5.0, -5.0)], references=[gt])["iou"]
    1.0
"""

_CITATION = """\
@inproceedings{zhang2025infosam,
  title={InfoSAM: Fine-Tuning the Segment Anything Model from An Information-Theoretic Perspective},
  author={Zhang, Yuan and others},
  booktitle={ICML},
  year={2025}
}
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class SamSegmentation(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features(
                {
                    "predictions": datasets.Sequence(datasets.Sequence(datasets.Value("float32"))),
                    "references": datasets.Sequence(datasets.Sequence(datasets.Value("float32"))),
                }
            ),
            reference_urls=["https://arxiv.org/abs/2505.21920", "https://github.com/lartpang/PySODMetrics"],
        )

    def _compute(
        self,
        predictions,
        references,
        thresholds=REFERENCE_THRESHOLDS,
        threshold_on="logits",
        structure_measures=False,
        structure_input="sigmoid",
        e_measure_mode="mean",
        wf_beta2=1.0,
        normalize=False,
    ):
        metrics = SegmentationMetrics(
            thresholds=thresholds,
            threshold_on=threshold_on,
            structure_measures=structure_measures,
            structure_input=structure_input,
            e_measure_mode=e_measure_mode,
            wf_beta2=wf_beta2,
            normalize=normalize,
        )
        for prediction, reference in zip(predictions, references):
            metrics.update(np.asarray(prediction, dtype=np.float32), np.asarray(reference, dtype=np.float32))
        return metrics.compute()
