"""Evaluation metrics for binary segmentation with SAM: IoU/Dice, S-measure, E-measure, weighted F.

(~690 lines: metrics only: the published definitions with their degenerate-input conventions, one input
handling, the accumulator and its Trainer adapter. Post-processing lives in `infosam_hf.inference`, the
ragged rows of the Trainer's gather in `infosam_hf.packing`.)

Two families, because the InfoSAM paper reports two families:

* IoU and Dice "as the reference evaluation computes them" (``val.py`` / ``util/metrics.py``
  of the InfoSAM code): mask logits at the original image size, binarised at each
  threshold in ``(0.1, 0.3, 0.5, 0.7, 0.9)``, IoU/Dice per image, averaged over the
  thresholds, then over images. The reference compares the *raw logits* with those
  thresholds (``pred > th`` on the decoder output, no sigmoid), so that is the default
  here (``threshold_on="logits"``); ``threshold_on="probabilities"`` thresholds
  ``sigmoid(logits)`` instead. The plain IoU/Dice at probability 0.5 (logit 0) that most
  users expect is reported beside it (``iou@0.5`` / ``dice@0.5``).
* S-measure (Fan et al., ICCV 2017), E-measure (Fan et al., IJCAI 2018) and weighted
  F-measure (Margolin et al., CVPR 2014), used for the polyp and camouflage sets. They
  follow the definitions of PySODMetrics (MIT), which port the authors' MATLAB code;
  they are vectorised over the batch and the pixels (the only per-image loop is
  SciPy's Euclidean distance transform). Defaults are the standard ones: mean
  E-measure over 256 thresholds, beta^2 = 1, probabilities from ``sigmoid(logits)``.
  The reference code differs (adaptive E-measure, beta^2 = 0.3, ``clip(logits, 0, 1)``
  as the "probability"); :meth:`SegmentationMetrics.reference_protocol` reproduces it.

Conventions for degenerate inputs (tested in ``tests/test_metrics.py``):

* Empty ground truth: IoU = Dice = 1 when the prediction is empty too, else 0 (the
  reference's smoothed ratios tend to the same values). S-measure = 1 - mean(pred),
  E-measure = share of predicted background (both from the original definitions);
  weighted F = 0, as in PySODMetrics and the reference, whatever the prediction.
* Ground truth covering the whole image: S-measure = mean(pred); E-measure = share of
  predicted foreground.
* A standard deviation over a single pixel is 0 (MATLAB's ``std``), where a literal
  NumPy port returns NaN; an empty S-measure quadrant has weight 0 and contributes 0.
* The standard mean E-measure of a perfect prediction is not exactly 1: the threshold
  0 of its 256 thresholds marks every pixel as foreground (E = 1/4 there), and the
  definition divides by ``N - 1``. For an image of N pixels it is
  ``(255 + 1/4) / 256 * N / (N - 1)`` (0.9973 for 64 x 64).

Inputs may be NumPy arrays or torch tensors (any device), shaped ``(H, W)``,
``(B, H, W)``, ``(B, 1, H, W)`` or ``(B, 1, 1, H, W)`` (``SamModel``'s ``pred_masks`` with
one prompt and one mask per image). Ground truth is binarised as ``gt > 0.5`` (so 0/1,
bool and 0/255 masks all work).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F

# Post-processing moved to infosam_hf.inference and the Trainer's ragged rows to infosam_hf.packing: the old
# names (original_size_predictions, postprocess_logits, PACKED_PAD_VALUE, is_packed, pack_maps*, unpack_maps)
# stay importable from here for one release.
from .inference import original_size_predictions, postprocess_logits, sizes_per_image  # noqa: F401
from .packing import PACKED_PAD_VALUE, is_packed, pack_maps, pack_maps_per_image, unpack_maps  # noqa: F401
from .packing import as_batch as _as_batch
from .packing import binarize as _binarize
from .packing import to_numpy as _to_numpy

__all__ = [
    "REFERENCE_THRESHOLDS",
    "threshold_averaged_iou_dice",
    "binary_iou_dice",
    "s_measure",
    "e_measure",
    "e_measure_curve",
    "weighted_f_measure",
    "SegmentationMetrics",
    "SamComputeMetrics",
    "build_compute_metrics",
]

REFERENCE_THRESHOLDS: tuple[float, ...] = (0.1, 0.3, 0.5, 0.7, 0.9)

# MATLAB's eps, which the published S/E/wF code adds to its denominators; keeping the same
# constant keeps the numbers comparable with published tables.
_EPS = float(np.spacing(1))

ThresholdOn = Literal["logits", "probabilities"]
StructureInput = Literal["sigmoid", "clip"]
EMeasureMode = Literal["mean", "adaptive"]

_SHAPE_HELP = (
    "resize the predictions to the label size (e.g. SamProcessor.post_process_masks or "
    "infosam_hf.inference.postprocess_logits), or pass original_size= (and reshaped_input_size=) "
    "to SegmentationMetrics.update so that the logits are cropped and resized for you"
)


# --------------------------------------------------------------------------------------
# input handling
# --------------------------------------------------------------------------------------


def _check_same_shape(pred: np.ndarray, gt: np.ndarray, pred_name: str = "prediction") -> None:
    if pred.shape != gt.shape:
        raise ValueError(
            f"{pred_name} shape {tuple(pred.shape)} does not match ground-truth shape {tuple(gt.shape)} "
            f"(both as (batch, height, width)): {_SHAPE_HELP}."
        )
    if pred.shape[1] == 0 or pred.shape[2] == 0:
        raise ValueError(f"empty masks of shape {tuple(pred.shape)} cannot be measured")


def _pair(pred: Any, gt: Any, pred_name: str) -> tuple[np.ndarray, np.ndarray, bool]:
    single = _to_numpy(pred).ndim == 2
    p = _as_batch(pred, pred_name)
    g = _binarize(_as_batch(gt, "gt"))
    _check_same_shape(p, g, pred_name)
    return p, g, single


def _prepare_probabilities(prob: Any, gt: Any, normalize: bool) -> tuple[np.ndarray, np.ndarray, bool]:
    p, g, single = _pair(prob, gt, "prob")
    p = p.astype(np.float64)
    if not np.isfinite(p).all():
        raise ValueError("prob contains NaN or infinite values")
    if normalize:
        # PySODMetrics rescales each map to [0, 1]; saliency maps come in arbitrary ranges.
        lo = p.min(axis=(1, 2), keepdims=True)
        hi = p.max(axis=(1, 2), keepdims=True)
        span = hi - lo
        p = np.where(span > 0, (p - lo) / np.where(span > 0, span, 1.0), p)
    else:
        lo, hi = float(p.min()), float(p.max())
        if lo < -1e-6 or hi > 1 + 1e-6:
            raise ValueError(
                f"prob must hold probabilities in [0, 1], got values in [{lo:.4g}, {hi:.4g}]. "
                "Pass torch.sigmoid(logits) rather than the logits, or normalize=True to rescale "
                "each map to [0, 1] as PySODMetrics does for saliency maps."
            )
        p = np.clip(p, 0.0, 1.0)
    return p, g, single


def _per_image(values: np.ndarray, single: bool) -> np.ndarray | float:
    return float(values[0]) if single else values


def _check_thresholds(thresholds: Sequence[float]) -> np.ndarray:
    t = np.asarray(tuple(thresholds), dtype=np.float64).reshape(-1)
    if t.size == 0:
        raise ValueError("thresholds must not be empty")
    return t


# --------------------------------------------------------------------------------------
# IoU / Dice
# --------------------------------------------------------------------------------------


def _iou_dice_from_counts(inter: np.ndarray, pred_sum: np.ndarray, gt_sum: np.ndarray):
    inter = inter.astype(np.float64)
    total = (pred_sum + gt_sum).astype(np.float64)
    union = total - inter
    with np.errstate(divide="ignore", invalid="ignore"):
        iou = np.where(union > 0, inter / union, 1.0)
        dice = np.where(total > 0, 2.0 * inter / total, 1.0)
    return iou, dice


def threshold_averaged_iou_dice(
    logits: Any,
    gt: Any,
    thresholds: Sequence[float] = REFERENCE_THRESHOLDS,
    *,
    threshold_on: ThresholdOn = "logits",
) -> dict[str, Any]:
    """IoU and Dice of each image averaged over binarisation thresholds (InfoSAM's protocol).

    Averaging over several thresholds rewards a confident, well-separated mask instead of
    the luck of one cut-off. The reference compares the raw logits with the thresholds
    (``threshold_on="logits"``); ``"probabilities"`` compares ``sigmoid(logits)``, done in
    logit space (``logits > log(t / (1 - t))``) so saturated sigmoids cannot flip a pixel.

    Returns per-image arrays ``iou``/``dice`` of shape (B,), ``iou_per_threshold`` /
    ``dice_per_threshold`` of shape (B, T), and their image means ``mean_iou``/``mean_dice``.
    A single (H, W) image counts as a batch of one.
    """
    p, g, _ = _pair(logits, gt, "logits")
    t = _check_thresholds(thresholds)
    if threshold_on == "probabilities":
        if ((t <= 0) | (t >= 1)).any():
            raise ValueError(f"probability thresholds must lie in (0, 1), got {tuple(t)}")
        cuts = np.log(t) - np.log1p(-t)
    elif threshold_on == "logits":
        cuts = t
    else:
        raise ValueError(f"threshold_on must be 'logits' or 'probabilities', got {threshold_on!r}")

    gt_sum = g.sum(axis=(1, 2))
    inter = np.empty((p.shape[0], t.size), dtype=np.int64)
    pred_sum = np.empty_like(inter)
    for k, cut in enumerate(cuts):  # T is tiny; each step is vectorised over batch and pixels
        binary = p > cut
        inter[:, k] = (binary & g).sum(axis=(1, 2))
        pred_sum[:, k] = binary.sum(axis=(1, 2))
    iou_t, dice_t = _iou_dice_from_counts(inter, pred_sum, gt_sum[:, None])
    iou, dice = iou_t.mean(axis=1), dice_t.mean(axis=1)
    return {
        "iou": iou,
        "dice": dice,
        "iou_per_threshold": iou_t,
        "dice_per_threshold": dice_t,
        "mean_iou": float(iou.mean()),
        "mean_dice": float(dice.mean()),
        "thresholds": tuple(float(x) for x in t),
    }


def binary_iou_dice(logits: Any, gt: Any) -> dict[str, Any]:
    """IoU and Dice of the mask ``logits > 0`` (probability > 0.5), the value most users expect.

    Returns per-image arrays ``iou``/``dice`` of shape (B,) and ``mean_iou``/``mean_dice``.
    """
    p, g, _ = _pair(logits, gt, "logits")
    binary = p > 0
    iou, dice = _iou_dice_from_counts(
        (binary & g).sum(axis=(1, 2)), binary.sum(axis=(1, 2)), g.sum(axis=(1, 2))
    )
    return {"iou": iou, "dice": dice, "mean_iou": float(iou.mean()), "mean_dice": float(dice.mean())}


# --------------------------------------------------------------------------------------
# S-measure
# --------------------------------------------------------------------------------------


def _s_object(values: np.ndarray, mask: np.ndarray) -> np.ndarray:
    n = mask.sum(axis=(1, 2)).astype(np.float64)
    safe_n = np.maximum(n, 1.0)
    mean = (values * mask).sum(axis=(1, 2)) / safe_n
    centred = (values - mean[:, None, None]) * mask
    var = (centred**2).sum(axis=(1, 2)) / np.maximum(n - 1.0, 1.0)  # n == 1 -> 0, like MATLAB's std
    return 2.0 * mean / (mean**2 + 1.0 + np.sqrt(var) + _EPS)


def _s_region(p: np.ndarray, g: np.ndarray) -> np.ndarray:
    batch, h, w = p.shape
    gf = g.astype(np.float64)
    n_fg = gf.sum(axis=(1, 2))
    safe_fg = np.maximum(n_fg, 1.0)
    # Centroid of the object, rounded half-to-even and shifted by one as in PySODMetrics,
    # which keeps MATLAB's 1-based split: rows [0, y) and columns [0, x) form the top-left part.
    row_mean = (gf.sum(axis=2) * np.arange(h)).sum(axis=1) / safe_fg
    col_mean = (gf.sum(axis=1) * np.arange(w)).sum(axis=1) / safe_fg
    y = np.where(n_fg > 0, np.round(row_mean), np.round(h / 2)).astype(np.int64) + 1
    x = np.where(n_fg > 0, np.round(col_mean), np.round(w / 2)).astype(np.int64) + 1

    area = h * w
    w1 = x * y / area
    w2 = y * (w - x) / area
    w3 = (h - y) * x / area
    weights = np.stack([w1, w2, w3, 1.0 - w1 - w2 - w3], axis=1)

    # One label per (image, quadrant) so that every per-quadrant sum is a single bincount.
    quadrant = (np.arange(h)[None, :, None] >= y[:, None, None]).astype(np.int64) * 2 + (
        np.arange(w)[None, None, :] >= x[:, None, None]
    )
    labels = (np.arange(batch)[:, None, None] * 4 + quadrant).ravel()
    size = batch * 4

    def qsum(v: np.ndarray) -> np.ndarray:
        return np.bincount(labels, weights=v.ravel(), minlength=size)

    n = np.bincount(labels, minlength=size).astype(np.float64)
    safe_n = np.maximum(n, 1.0)
    mx = qsum(p) / safe_n
    my = qsum(gf) / safe_n
    dp = p.ravel() - mx[labels]  # two passes: centred sums stay exact enough for tiny variances
    dg = gf.ravel() - my[labels]
    denom = np.maximum(n - 1.0, 1.0)
    sxx = np.bincount(labels, weights=dp * dp, minlength=size) / denom
    syy = np.bincount(labels, weights=dg * dg, minlength=size) / denom
    sxy = np.bincount(labels, weights=dp * dg, minlength=size) / denom

    # The definition branches on alpha == 0 and beta == 0 exactly. Summation rounding leaves
    # ~1e-33 variances on constant parts, so detect constancy exactly (difference from the
    # part's first pixel) and zero those moments.
    first_r = np.stack([np.zeros_like(y), np.zeros_like(y), y, y], axis=1).clip(max=h - 1)
    first_c = np.stack([np.zeros_like(x), x, np.zeros_like(x), x], axis=1).clip(max=w - 1)
    bidx = np.arange(batch)[:, None]
    p_ref = p[bidx, first_r, first_c].ravel()
    g_ref = gf[bidx, first_r, first_c].ravel()
    p_const = np.bincount(labels, weights=np.abs(p.ravel() - p_ref[labels]), minlength=size) == 0
    g_const = np.bincount(labels, weights=np.abs(gf.ravel() - g_ref[labels]), minlength=size) == 0
    sxx = np.where(p_const, 0.0, sxx)
    syy = np.where(g_const, 0.0, syy)
    sxy = np.where(p_const | g_const, 0.0, sxy)

    alpha = 4.0 * mx * my * sxy
    beta = (mx**2 + my**2) * (sxx + syy)
    with np.errstate(divide="ignore", invalid="ignore"):
        score = np.where(alpha != 0, alpha / (beta + _EPS), np.where(beta == 0, 1.0, 0.0))
    score = np.where(n > 0, score, 0.0).reshape(batch, 4)
    return (weights * score).sum(axis=1)


def s_measure(prob: Any, gt: Any, *, alpha: float = 0.5, normalize: bool = False) -> np.ndarray | float:
    """Structure measure: object-aware plus region-aware structural similarity (Fan et al. 2017).

    Pixel-wise scores ignore the shape of the object; S-measure credits predictions whose
    structure (object uniformity, quadrant-wise SSIM around the object's centroid) matches.
    ``prob`` holds probabilities in [0, 1]; ``normalize=True`` first min-max rescales each map
    (PySODMetrics' treatment of saliency maps). Returns a float for one (H, W) image, else an
    array of shape (B,).
    """
    p, g, single = _prepare_probabilities(prob, gt, normalize)
    gf = g.astype(np.float64)
    u = gf.mean(axis=(1, 2))
    mean_pred = p.mean(axis=(1, 2))
    with np.errstate(divide="ignore", invalid="ignore"):
        obj = u * _s_object(p, g) + (1.0 - u) * _s_object(1.0 - p, ~g)
        reg = _s_region(p, g)
    sm = np.maximum(alpha * obj + (1.0 - alpha) * reg, 0.0)
    sm = np.where(u == 0, 1.0 - mean_pred, np.where(u == 1, mean_pred, sm))
    return _per_image(sm, single)


# --------------------------------------------------------------------------------------
# E-measure
# --------------------------------------------------------------------------------------


def _enhanced_alignment(fg_fg, fg_bg, gt_fg, size: int) -> np.ndarray:
    """E-measure from the four pixel counts: a binary prediction only takes two values, so the
    enhanced-alignment matrix takes four, and the score is a weighted sum of them."""
    fg_fg = np.asarray(fg_fg, dtype=np.float64)
    fg_bg = np.asarray(fg_bg, dtype=np.float64)
    gt_fg = np.asarray(gt_fg, dtype=np.float64)
    pred_fg = fg_fg + fg_bg
    pred_bg = size - pred_fg
    bg_fg = gt_fg - fg_fg
    bg_bg = pred_bg - bg_fg
    mean_pred = pred_fg / size
    mean_gt = gt_fg / size

    def enhanced(a, b):
        align = 2.0 * a * b / (a * a + b * b + _EPS)
        return (align + 1.0) ** 2 / 4.0

    total = (
        fg_fg * enhanced(1.0 - mean_pred, 1.0 - mean_gt)
        + fg_bg * enhanced(1.0 - mean_pred, -mean_gt)
        + bg_fg * enhanced(-mean_pred, 1.0 - mean_gt)
        + bg_bg * enhanced(-mean_pred, -mean_gt)
    )
    total = np.where(gt_fg == 0, pred_bg, np.where(gt_fg == size, pred_fg, total))
    return total / (size - 1 + _EPS)


def e_measure_curve(prob: Any, gt: Any, *, normalize: bool = False) -> np.ndarray:
    """E-measure at the 256 thresholds of PySODMetrics, shape (B, 256).

    Column k binarises ``uint8(prob * 255) >= 255 - k``. Averaging the curves over a data set
    and taking the maximum gives the "max E-measure" of the literature, which a per-image
    score cannot.
    """
    p, g, _ = _prepare_probabilities(prob, gt, normalize)
    return _e_curve(p, g)


def _e_curve(p: np.ndarray, g: np.ndarray) -> np.ndarray:
    batch, h, w = p.shape
    q = (p * 255).astype(np.uint8).astype(np.int64)  # truncation, as PySODMetrics does
    bins = (np.arange(batch)[:, None, None] * 256 + q).ravel()
    gflat = g.ravel()
    fg_hist = np.bincount(bins[gflat], minlength=batch * 256).reshape(batch, 256)
    bg_hist = np.bincount(bins[~gflat], minlength=batch * 256).reshape(batch, 256)
    fg_fg = np.cumsum(fg_hist[:, ::-1], axis=1)
    fg_bg = np.cumsum(bg_hist[:, ::-1], axis=1)
    gt_fg = g.sum(axis=(1, 2))[:, None]
    return _enhanced_alignment(fg_fg, fg_bg, gt_fg, h * w)


def e_measure(
    prob: Any, gt: Any, *, mode: EMeasureMode = "mean", normalize: bool = False
) -> np.ndarray | float:
    """Enhanced-alignment measure (Fan et al. 2018): local pixel agreement and global image
    statistics in one score.

    ``mode="mean"`` (default, the "mean E-measure" of polyp/camouflage tables) averages the
    E-measure over the 256 thresholds of :func:`e_measure_curve`; ``mode="adaptive"`` binarises
    at ``min(2 * mean(prob), 1)``, which is what the InfoSAM reference code reports. Returns a
    float for one (H, W) image, else an array of shape (B,).
    """
    p, g, single = _prepare_probabilities(prob, gt, normalize)
    if mode == "mean":
        em = _e_curve(p, g).mean(axis=1)
    elif mode == "adaptive":
        threshold = np.minimum(2.0 * p.mean(axis=(1, 2)), 1.0)[:, None, None]
        binary = p >= threshold
        em = _enhanced_alignment(
            (binary & g).sum(axis=(1, 2)),
            (binary & ~g).sum(axis=(1, 2)),
            g.sum(axis=(1, 2)),
            p.shape[1] * p.shape[2],
        )
    else:
        raise ValueError(f"mode must be 'mean' or 'adaptive', got {mode!r}")
    return _per_image(em, single)


# --------------------------------------------------------------------------------------
# weighted F-measure
# --------------------------------------------------------------------------------------


def _matlab_gaussian(size: int = 7, sigma: float = 5.0) -> np.ndarray:
    """``fspecial('gaussian', size, sigma)``, the kernel of the published MATLAB code."""
    r = (size - 1) / 2
    yy, xx = np.ogrid[-r : r + 1, -r : r + 1]
    k = np.exp(-(xx * xx + yy * yy) / (2.0 * sigma * sigma))
    k[k < np.finfo(k.dtype).eps * k.max()] = 0
    return k / k.sum()


def weighted_f_measure(
    prob: Any, gt: Any, *, beta2: float = 1.0, normalize: bool = False
) -> np.ndarray | float:
    """Weighted F-measure (Margolin et al. 2014) with ``beta2`` = beta^2.

    Plain F-measure treats every wrong pixel alike; this one spreads the error of
    foreground pixels by a Gaussian (so near-misses cost less) and charges background
    errors more the farther they are from the object. ``beta2=1`` is the standard;
    the InfoSAM reference uses 0.3. Empty ground truth scores 0 (PySODMetrics' and the
    reference's convention). Needs SciPy (distance transform and convolution).
    """
    from scipy import ndimage

    p, g, single = _prepare_probabilities(prob, gt, normalize)
    out = np.zeros(p.shape[0], dtype=np.float64)
    keep = g.any(axis=(1, 2))
    if keep.any():
        p, g = p[keep], g[keep]
        batch = p.shape[0]
        dist = np.empty(p.shape, dtype=np.float64)
        nearest = np.empty((batch, 2) + p.shape[1:], dtype=np.intp)
        for k in range(batch):  # SciPy's EDT has no batch axis; each call is a C loop
            dist[k], nearest[k] = ndimage.distance_transform_edt(~g[k], return_indices=True)
        err = np.abs(p - g)
        # Background pixels take the error of their nearest foreground pixel (edge handling).
        err_t = err[np.arange(batch)[:, None, None], nearest[:, 0], nearest[:, 1]]
        err_a = ndimage.convolve(err_t, _matlab_gaussian()[None], mode="constant", cval=0.0)
        min_err = np.where(g & (err_a < err), err_a, err)
        importance = np.where(g, 1.0, 2.0 - np.exp(np.log(0.5) / 5.0 * dist))
        err_w = min_err * importance
        n_fg = g.sum(axis=(1, 2)).astype(np.float64)
        err_fg = (err_w * g).sum(axis=(1, 2))
        tp = n_fg - err_fg
        fp = (err_w * ~g).sum(axis=(1, 2))
        recall = 1.0 - err_fg / n_fg
        precision = tp / (tp + fp + _EPS)
        out[keep] = (1.0 + beta2) * recall * precision / (recall + beta2 * precision + _EPS)
    return _per_image(out, single)


# --------------------------------------------------------------------------------------
# accumulator
# --------------------------------------------------------------------------------------


class SegmentationMetrics:
    """Accumulates per-image scores over an evaluation and averages them at the end.

    Only per-image floats are kept, never masks, so evaluating a large set costs no memory.
    ``compute()`` returns ``iou``/``dice`` (threshold-averaged, see
    :func:`threshold_averaged_iou_dice`), ``iou@0.5``/``dice@0.5`` (logit 0), and with
    ``structure_measures=True`` also ``s_measure``, ``e_measure`` and ``weighted_f``.

    Args:
        thresholds: binarisation thresholds of the averaged IoU/Dice.
        threshold_on: ``"logits"`` (the reference's behaviour) or ``"probabilities"``.
        structure_measures: also compute S-measure, E-measure and weighted F (slower:
            a distance transform per image).
        structure_input: how logits become the [0, 1] map of the structure measures:
            ``"sigmoid"`` (standard) or ``"clip"`` (``clip(logits, 0, 1)``, the reference's).
        e_measure_mode: ``"mean"`` (standard) or ``"adaptive"`` (the reference's).
        wf_beta2: beta^2 of the weighted F-measure (1 standard, 0.3 in the reference).
        normalize: min-max rescale each map before the structure measures (PySODMetrics).
    """

    def __init__(
        self,
        thresholds: Sequence[float] = REFERENCE_THRESHOLDS,
        threshold_on: ThresholdOn = "logits",
        structure_measures: bool = False,
        structure_input: StructureInput = "sigmoid",
        e_measure_mode: EMeasureMode = "mean",
        wf_beta2: float = 1.0,
        normalize: bool = False,
    ) -> None:
        if threshold_on not in ("logits", "probabilities"):
            raise ValueError(f"threshold_on must be 'logits' or 'probabilities', got {threshold_on!r}")
        if structure_input not in ("sigmoid", "clip"):
            raise ValueError(f"structure_input must be 'sigmoid' or 'clip', got {structure_input!r}")
        if e_measure_mode not in ("mean", "adaptive"):
            raise ValueError(f"e_measure_mode must be 'mean' or 'adaptive', got {e_measure_mode!r}")
        self.thresholds = tuple(float(t) for t in _check_thresholds(thresholds))
        self.threshold_on = threshold_on
        self.structure_measures = structure_measures
        self.structure_input = structure_input
        self.e_measure_mode = e_measure_mode
        self.wf_beta2 = float(wf_beta2)
        self.normalize = normalize
        self.reset()

    @classmethod
    def reference_protocol(cls, structure_measures: bool = False) -> SegmentationMetrics:
        """The InfoSAM reference code's evaluation, to compare with the paper's tables: logits
        thresholded directly; structure measures on ``clip(logits, 0, 1)`` with the adaptive
        E-measure and beta^2 = 0.3."""
        return cls(
            threshold_on="logits",
            structure_measures=structure_measures,
            structure_input="clip",
            e_measure_mode="adaptive",
            wf_beta2=0.3,
        )

    def reset(self) -> None:
        self._scores: dict[str, list[np.ndarray]] = {k: [] for k in self._keys()}

    def _keys(self) -> tuple[str, ...]:
        keys = ("iou", "dice", "iou@0.5", "dice@0.5")
        if self.structure_measures:
            keys += ("s_measure", "e_measure", "weighted_f")
        return keys

    @property
    def num_images(self) -> int:
        return int(sum(len(v) for v in self._scores["iou"]))

    def update(
        self,
        logits: Any,
        gt: Any,
        original_size: Any | None = None,
        reshaped_input_size: Any | None = None,
        pad_size: Any | None = None,
    ) -> None:
        """Score a batch of mask logits against ground-truth masks.

        Without ``original_size`` the logits must already have the labels' shape. With it,
        the logits are taken to be at the padded square model input (or at a lower
        resolution when ``pad_size`` says so) and are cropped to ``reshaped_input_size`` and
        resized to ``original_size`` first, as SAM's post-processing does; both may be one
        (h, w) for the batch or one per image (a list, or a (B, 2) tensor as the processor
        returns). Per-image sizes need ``gt`` as a list of (h, w) masks.
        """
        if original_size is None:
            if reshaped_input_size is not None or pad_size is not None:
                raise ValueError("reshaped_input_size / pad_size need original_size as well")
            self._measure(_as_batch(logits, "logits"), gt)
            return
        lg = _as_batch(logits, "logits")
        batch = lg.shape[0]
        originals = sizes_per_image(original_size, batch, "original_size")
        reshaped = sizes_per_image(reshaped_input_size, batch, "reshaped_input_size") or [None] * batch
        gts = list(gt) if isinstance(gt, (list, tuple)) else None
        if gts is not None and len(gts) != batch:
            raise ValueError(f"got {len(gts)} ground-truth masks for {batch} predictions")
        if gts is None and len(set(originals)) == 1 and len(set(reshaped)) == 1:
            self._measure(postprocess_logits(lg, originals[0], reshaped[0], pad_size), gt)
            return
        gt_batch = None if gts is not None else _as_batch(gt, "gt")
        for i in range(batch):
            one = postprocess_logits(lg[i : i + 1], originals[i], reshaped[i], pad_size)
            self._measure(one, gts[i] if gts is not None else gt_batch[i : i + 1])

    def _measure(self, logits: np.ndarray, gt: Any) -> None:
        g = _binarize(_as_batch(gt, "gt"))
        _check_same_shape(logits, g, "logits")
        averaged = threshold_averaged_iou_dice(logits, g, self.thresholds, threshold_on=self.threshold_on)
        plain = binary_iou_dice(logits, g)
        self._scores["iou"].append(averaged["iou"])
        self._scores["dice"].append(averaged["dice"])
        self._scores["iou@0.5"].append(plain["iou"])
        self._scores["dice@0.5"].append(plain["dice"])
        if self.structure_measures:
            x = logits.astype(np.float64)
            if self.structure_input == "sigmoid":
                prob = 0.5 * (1.0 + np.tanh(0.5 * x))  # overflow-free sigmoid
            else:
                prob = np.clip(x, 0.0, 1.0)
            kw = {"normalize": self.normalize}
            self._scores["s_measure"].append(np.atleast_1d(s_measure(prob, g, **kw)))
            self._scores["e_measure"].append(np.atleast_1d(e_measure(prob, g, mode=self.e_measure_mode, **kw)))
            self._scores["weighted_f"].append(
                np.atleast_1d(weighted_f_measure(prob, g, beta2=self.wf_beta2, **kw))
            )

    def per_image(self) -> dict[str, np.ndarray]:
        """Every image's scores in update order, for per-image tables or significance tests."""
        return {k: (np.concatenate(v) if v else np.zeros(0)) for k, v in self._scores.items()}

    def compute(self) -> dict[str, float]:
        """Mean over all images seen since the last reset (per image, then averaged)."""
        if self.num_images == 0:
            raise ValueError("SegmentationMetrics.compute() called before any update()")
        return {k: float(v.mean()) for k, v in self.per_image().items()}


# --------------------------------------------------------------------------------------
# transformers.Trainer
# --------------------------------------------------------------------------------------


class SamComputeMetrics:
    """``compute_metrics`` for ``transformers.Trainer``; build it with :func:`build_compute_metrics`.

    Called as ``fn(eval_pred)`` it scores the whole evaluation at once. Called as
    ``fn(eval_pred, compute_result=...)`` (``TrainingArguments(batch_eval_metrics=True)``)
    it accumulates per-image scores batch by batch, so that no (N, 1, S, S) array of logits
    is ever gathered, and returns the averages (and resets) when ``compute_result`` is True.
    """

    def __init__(self, resize_logits_to_labels: bool = False, **metric_kwargs: Any) -> None:
        self.resize_logits_to_labels = resize_logits_to_labels
        self.metric_kwargs = metric_kwargs
        self.metrics = SegmentationMetrics(**metric_kwargs)

    def _update(self, accumulator: SegmentationMetrics, eval_pred: Any) -> None:
        predictions = eval_pred.predictions
        if isinstance(predictions, (tuple, list)):
            predictions = predictions[0]
        labels = eval_pred.label_ids
        if isinstance(labels, (tuple, list)):
            labels = labels[0]
        if predictions is None or labels is None:
            raise ValueError(
                "compute_metrics needs mask logits as predictions and masks as label_ids; set "
                "TrainingArguments(label_names=[...]) to the ground-truth mask column"
            )
        if is_packed(predictions) and is_packed(labels):  # InfoSAMTrainer: each image at its own size
            for logit_map, mask in zip(unpack_maps(predictions), unpack_maps(labels)):
                accumulator._measure(logit_map[None], mask[None])
            return
        if self.resize_logits_to_labels:
            pred = _as_batch(predictions, "predictions")
            lab = _as_batch(labels, "label_ids")
            if pred.shape[1:] != lab.shape[1:]:
                t = torch.from_numpy(np.ascontiguousarray(pred, dtype=np.float32))[:, None]
                predictions = F.interpolate(t, lab.shape[1:], mode="bilinear", align_corners=False)[:, 0]
        accumulator.update(predictions, labels)

    def metric_names(self) -> set[str]:
        """The keys a call returns (`iou`, `dice`, ...), read from one scored 8x8 probe: what
        `--best_model_metric` may name (infosam_hf.selection checks it at start-up)."""
        logits = np.full((1, 8, 8), -5.0, dtype=np.float32)
        masks = np.zeros((1, 8, 8), dtype=np.float32)
        logits[:, 2:6, 2:6], masks[:, 2:6, 2:6] = 5.0, 1.0
        probe = SegmentationMetrics(**self.metric_kwargs)
        probe._measure(logits, masks)
        return set(probe.compute())

    def __call__(self, eval_pred: Any, compute_result: bool | None = None) -> dict[str, float]:
        if compute_result is None:
            one_shot = SegmentationMetrics(**self.metric_kwargs)
            self._update(one_shot, eval_pred)
            return one_shot.compute()
        self._update(self.metrics, eval_pred)
        if not compute_result:
            return {}
        try:
            return self.metrics.compute()
        finally:
            self.metrics.reset()


def build_compute_metrics(
    structure_measures: bool = False,
    *,
    thresholds: Sequence[float] = REFERENCE_THRESHOLDS,
    threshold_on: ThresholdOn = "logits",
    resize_logits_to_labels: bool = False,
    **metric_kwargs: Any,
) -> SamComputeMetrics:
    """A ``compute_metrics`` callable for ``Trainer`` (with or without ``batch_eval_metrics``).

    ``EvalPrediction.predictions`` must be mask logits (N, 1, S, S) (or a tuple whose first
    element is), ``label_ids`` the masks (N, 1, S, S). Labels at a different resolution
    raise unless ``resize_logits_to_labels=True`` (bilinear, as SAM upsamples). Further
    keyword arguments go to :class:`SegmentationMetrics`. Keys of the result: ``iou``,
    ``dice``, ``iou@0.5``, ``dice@0.5`` [, ``s_measure``, ``e_measure``, ``weighted_f``];
    the Trainer logs them as ``eval_iou`` etc. (``metric_for_best_model="iou"`` works).
    """
    return SamComputeMetrics(
        resize_logits_to_labels=resize_logits_to_labels,
        thresholds=thresholds,
        threshold_on=threshold_on,
        structure_measures=structure_measures,
        **metric_kwargs,
    )
