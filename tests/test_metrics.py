"""Tests of infosam_hf.metrics: hand-worked values, published properties, an independent
per-image port of the published definitions, the Trainer wiring and the evaluate module."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy import ndimage

from infosam_hf.metrics import (
    REFERENCE_THRESHOLDS,
    SegmentationMetrics,
    binary_iou_dice,
    build_compute_metrics,
    e_measure,
    e_measure_curve,
    postprocess_logits,
    s_measure,
    threshold_averaged_iou_dice,
    weighted_f_measure,
)

EPS = np.spacing(1)
REPO = Path(__file__).resolve().parents[1]


# ----------------------------------------------------------------------------------------
# an independent, loop-based, per-image port of the published definitions (PySODMetrics /
# the InfoSAM reference util/metrics.py), used as the oracle for the vectorised code
# ----------------------------------------------------------------------------------------


def _oracle_ssim(p, g):
    # Exact arithmetic for constant parts (np.ptp == 0): the definition branches on
    # alpha == 0 and beta == 0, which rounding in the mean would otherwise decide.
    n = p.size
    x, y = p.mean(), g.mean()
    p_const, g_const = np.ptp(p) == 0, np.ptp(g) == 0
    sx = 0.0 if p_const else ((p - x) ** 2).sum() / (n - 1)
    sy = 0.0 if g_const else ((g - y) ** 2).sum() / (n - 1)
    sxy = 0.0 if (p_const or g_const) else ((p - x) * (g - y)).sum() / (n - 1)
    a = 4 * x * y * sxy
    b = (x**2 + y**2) * (sx + sy)
    if a != 0:
        return a / (b + EPS)
    return 1.0 if b == 0 else 0.0


def oracle_s(p, g, alpha=0.5):
    g = g.astype(bool)
    u = g.mean()
    if u == 0:
        return 1 - p.mean()
    if u == 1:
        return p.mean()

    def s_obj(v):
        return 2 * v.mean() / (v.mean() ** 2 + 1 + v.std(ddof=1) + EPS)

    obj = u * s_obj(p[g]) + (1 - u) * s_obj(1 - p[~g])
    h, w = g.shape
    cy, cx = np.argwhere(g).mean(axis=0).round()
    x, y = int(cx) + 1, int(cy) + 1
    parts = [(slice(0, y), slice(0, x)), (slice(0, y), slice(x, w)), (slice(y, h), slice(0, x)), (slice(y, h), slice(x, w))]
    w1, w2, w3 = x * y / (h * w), y * (w - x) / (h * w), (h - y) * x / (h * w)
    weights = [w1, w2, w3, 1 - w1 - w2 - w3]
    reg = sum(wt * _oracle_ssim(p[r, c], g[r, c].astype(float)) for wt, (r, c) in zip(weights, parts))
    return max(0.0, alpha * obj + (1 - alpha) * reg)


def _oracle_em_binary(binary, g):
    n = g.size
    if g.sum() == 0:
        enhanced = np.ones_like(g, float) * (~binary)
    elif g.all():
        enhanced = np.ones_like(g, float) * binary
    else:
        fm = binary.astype(float) - binary.mean()
        gm = g.astype(float) - g.mean()
        align = 2 * fm * gm / (fm**2 + gm**2 + EPS)
        enhanced = (align + 1) ** 2 / 4
    return enhanced.sum() / (n - 1 + EPS)


def oracle_e_curve(p, g):
    q = (p * 255).astype(np.uint8)
    g = g.astype(bool)
    return np.array([_oracle_em_binary(q >= t, g) for t in range(255, -1, -1)])


def oracle_e_adaptive(p, g):
    return _oracle_em_binary(p >= min(2 * p.mean(), 1), g.astype(bool))


def oracle_wf(p, g, beta2=1.0):
    g = g.astype(bool)
    if not g.any():
        return 0.0
    dst, idx = ndimage.distance_transform_edt(g == 0, return_indices=True)
    e = np.abs(p - g)
    et = e.copy()
    et[~g] = et[idx[0][~g], idx[1][~g]]
    r = np.arange(-3, 4)
    k = np.exp(-(r[:, None] ** 2 + r[None, :] ** 2) / 50.0)
    k /= k.sum()
    ea = ndimage.convolve(et, k, mode="constant", cval=0)
    mn = np.where(g & (ea < e), ea, e)
    bw = np.where(~g, 2 - np.exp(np.log(0.5) / 5 * dst), 1.0)
    ew = mn * bw
    tp = g.sum() - ew[g].sum()
    fp = ew[~g].sum()
    rec = 1 - ew[g].mean()
    prec = tp / (tp + fp + EPS)
    return (1 + beta2) * rec * prec / (rec + beta2 * prec + EPS)


def blob_batch(rng, batch=3, h=24, w=20):
    """Random probability maps and blob-shaped ground truths (non-degenerate for S-measure)."""
    yy, xx = np.mgrid[:h, :w]
    gts, probs = [], []
    for _ in range(batch):
        cy, cx = rng.uniform(6, h - 6), rng.uniform(6, w - 6)
        ry, rx = rng.uniform(3, 6), rng.uniform(3, 6)
        g = ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1
        noise = rng.normal(0, 1.2, size=(h, w))
        probs.append(1 / (1 + np.exp(-(3.0 * (g * 2 - 1) + noise))))
        gts.append(g)
    return np.stack(probs), np.stack(gts)


# ----------------------------------------------------------------------------------------
# IoU / Dice
# ----------------------------------------------------------------------------------------

# 4x4 example: gt = top two rows (8 pixels).
GT44 = np.zeros((4, 4), dtype=np.uint8)
GT44[:2] = 1
LOGITS44 = np.array(
    [[1.0, 1.0, 0.8, 0.8], [0.6, 0.6, 0.4, 0.2], [0.2, -1, -1, -1], [-1, -1, -1, -1]], dtype=np.float32
)
# Pixels above each threshold (0.1, 0.3, 0.5, 0.7, 0.9): 9, 7, 6, 4, 2; all of the
# top rows' pixels come first, so intersection = min(count, 8), union = max(count, 8).
IOU44 = [8 / 9, 7 / 8, 6 / 8, 4 / 8, 2 / 8]
DICE44 = [16 / 17, 14 / 15, 12 / 14, 8 / 12, 4 / 10]


def test_threshold_averaged_iou_dice_hand_worked_on_logits():
    out = threshold_averaged_iou_dice(LOGITS44, GT44)
    np.testing.assert_allclose(out["iou_per_threshold"][0], IOU44, rtol=1e-12)
    np.testing.assert_allclose(out["dice_per_threshold"][0], DICE44, rtol=1e-12)
    assert out["mean_iou"] == pytest.approx(np.mean(IOU44), rel=1e-12)
    assert out["mean_dice"] == pytest.approx(np.mean(DICE44), rel=1e-12)
    assert out["iou"].shape == (1,) and out["thresholds"] == REFERENCE_THRESHOLDS


def test_threshold_on_probabilities_thresholds_the_sigmoid():
    # Same layout in probability space: 1.0->0.95, 0.8, 0.6, 0.4, 0.2, -1->0.05.
    prob = np.where(LOGITS44 == 1.0, 0.95, np.where(LOGITS44 == -1, 0.05, LOGITS44)).astype(np.float64)
    logits = np.log(prob / (1 - prob))
    out = threshold_averaged_iou_dice(logits, GT44, threshold_on="probabilities")
    np.testing.assert_allclose(out["iou_per_threshold"][0], IOU44, rtol=1e-12)
    np.testing.assert_allclose(out["dice_per_threshold"][0], DICE44, rtol=1e-12)
    # Thresholding the same logits directly (the reference's way) gives other counts:
    # logits > 0.1 keeps only sigmoid > 0.525, i.e. the 0.95/0.8/0.6 pixels (6 of them).
    on_logits = threshold_averaged_iou_dice(logits, GT44)
    assert on_logits["iou_per_threshold"][0, 0] == pytest.approx(6 / 8)
    with pytest.raises(ValueError, match="threshold_on"):
        threshold_averaged_iou_dice(logits, GT44, threshold_on="sigmoid")


def test_binary_iou_dice_hand_worked():
    out = binary_iou_dice(LOGITS44, GT44)  # logits > 0: the 8 top pixels and one 0.2
    assert out["iou"][0] == pytest.approx(8 / 9)
    assert out["dice"][0] == pytest.approx(16 / 17)


def test_thresholds_are_strict_like_the_reference():
    # The reference binarises with `pred > th`: a logit equal to a threshold is background.
    gt = np.array([[1, 1], [0, 0]])
    logits = np.array([[0.5, 2.0], [0.0, -1.0]], dtype=np.float32)
    out = threshold_averaged_iou_dice(logits, gt, thresholds=(0.5,))
    assert out["iou"][0] == pytest.approx(1 / 2)
    tie_at_zero = binary_iou_dice(np.array([[0.0, 2.0], [0.0, -1.0]]), gt)
    assert tie_at_zero["iou"][0] == pytest.approx(1 / 2)


def test_empty_ground_truth_iou_dice_convention():
    empty = np.zeros((2, 5, 5))
    logits = np.full((2, 5, 5), -3.0)
    logits[1, 0, 0] = 3.0  # image 1 predicts one false-positive pixel
    for fn in (binary_iou_dice, threshold_averaged_iou_dice):
        out = fn(logits, empty)
        np.testing.assert_array_equal(out["iou"], [1.0, 0.0])
        np.testing.assert_array_equal(out["dice"], [1.0, 0.0])


def test_batch_matches_per_image_and_accepts_torch_and_channel_dims():
    rng = np.random.default_rng(0)
    logits = rng.normal(0, 1, size=(3, 1, 9, 7)).astype(np.float32)
    gt = rng.random((3, 1, 9, 7)) > 0.6
    batch = threshold_averaged_iou_dice(torch.from_numpy(logits), torch.from_numpy(gt))
    for i in range(3):
        one = threshold_averaged_iou_dice(logits[i, 0], gt[i, 0])
        assert batch["iou"][i] == pytest.approx(one["mean_iou"])
        assert batch["dice"][i] == pytest.approx(one["mean_dice"])
        assert binary_iou_dice(logits, gt)["iou"][i] == pytest.approx(binary_iou_dice(logits[i], gt[i])["mean_iou"])
    assert batch["mean_iou"] == pytest.approx(batch["iou"].mean())
    # SamModel's 5-D pred_masks with one prompt and one mask are accepted as well.
    five = threshold_averaged_iou_dice(logits[:, :, None], gt)
    np.testing.assert_allclose(five["iou"], batch["iou"])


def test_perfect_and_inverted_iou_dice():
    gt = np.zeros((16, 16), bool)
    gt[4:12, 3:9] = True
    perfect = np.where(gt, 4.0, -4.0)
    for fn in (binary_iou_dice, threshold_averaged_iou_dice):
        assert fn(perfect, gt)["mean_iou"] == 1.0 and fn(perfect, gt)["mean_dice"] == 1.0
        assert fn(-perfect, gt)["mean_iou"] == 0.0 and fn(-perfect, gt)["mean_dice"] == 0.0


# ----------------------------------------------------------------------------------------
# errors
# ----------------------------------------------------------------------------------------


def test_shape_mismatch_is_a_clear_error():
    with pytest.raises(ValueError) as err:
        threshold_averaged_iou_dice(np.zeros((2, 1, 8, 8)), np.zeros((2, 1, 6, 8)))
    msg = str(err.value)
    assert "(2, 8, 8)" in msg and "(2, 6, 8)" in msg and "original_size" in msg
    with pytest.raises(ValueError, match="original_size"):
        SegmentationMetrics().update(np.zeros((1, 1, 8, 8)), np.zeros((1, 1, 6, 8)))
    with pytest.raises(ValueError, match="highest iou_scores"):
        binary_iou_dice(np.zeros((2, 3, 8, 8)), np.zeros((2, 3, 8, 8)))
    with pytest.raises(ValueError, match="sigmoid"):
        s_measure(np.full((4, 4), 3.0), np.ones((4, 4)))
    with pytest.raises(ValueError, match="before any update"):
        SegmentationMetrics().compute()


# ----------------------------------------------------------------------------------------
# S-measure, E-measure, weighted F
# ----------------------------------------------------------------------------------------


def test_structure_measures_match_per_image_port_of_published_code():
    rng = np.random.default_rng(1)
    prob, gt = blob_batch(rng)
    s = s_measure(prob, gt)
    e = e_measure(prob, gt)
    ea = e_measure(prob, gt, mode="adaptive")
    wf = weighted_f_measure(prob, gt)
    wf03 = weighted_f_measure(prob, gt, beta2=0.3)
    curve = e_measure_curve(prob, gt)
    assert s.shape == e.shape == wf.shape == (3,) and curve.shape == (3, 256)
    for i in range(3):
        assert s[i] == pytest.approx(oracle_s(prob[i], gt[i]), abs=1e-10)
        np.testing.assert_allclose(curve[i], oracle_e_curve(prob[i], gt[i]), atol=1e-12)
        assert e[i] == pytest.approx(oracle_e_curve(prob[i], gt[i]).mean(), abs=1e-12)
        assert ea[i] == pytest.approx(oracle_e_adaptive(prob[i], gt[i]), abs=1e-12)
        assert wf[i] == pytest.approx(oracle_wf(prob[i], gt[i]), abs=1e-10)
        assert wf03[i] == pytest.approx(oracle_wf(prob[i], gt[i], beta2=0.3), abs=1e-10)
        # one image alone gives the same as inside the batch, as a float
        assert s_measure(prob[i], gt[i]) == pytest.approx(s[i], abs=1e-12)
        assert isinstance(weighted_f_measure(prob[i], gt[i]), float)
    # sanity of the scores themselves: a decent noisy prediction sits between 0.5 and 1
    assert np.all((s > 0.5) & (s < 1)) and np.all((e > 0.5) & (e < 1)) and np.all((wf > 0.3) & (wf < 1))


def test_normalize_rescales_like_pysodmetrics():
    rng = np.random.default_rng(2)
    prob, gt = blob_batch(rng, batch=2)
    raw = prob * 0.5 + 0.2  # a map in [0.2, 0.7]
    lo = raw.min(axis=(1, 2), keepdims=True)
    hi = raw.max(axis=(1, 2), keepdims=True)
    rescaled = (raw - lo) / (hi - lo)
    for fn in (s_measure, e_measure, weighted_f_measure):
        np.testing.assert_allclose(fn(raw, gt, normalize=True), fn(rescaled, gt), atol=1e-12)
        assert not np.allclose(fn(raw, gt), fn(rescaled, gt))
    with pytest.raises(ValueError):
        s_measure(raw * 10, gt)  # out of [0, 1] without normalize
    assert np.isfinite(s_measure(raw * 10, gt, normalize=True)).all()


def test_perfect_prediction():
    gt = np.zeros((64, 64))
    gt[20:41, 12:50] = 1
    n = gt.size
    assert s_measure(gt, gt) == pytest.approx(1.0, abs=1e-12)
    assert weighted_f_measure(gt, gt) == pytest.approx(1.0, abs=1e-12)
    # The standard mean E-measure of a perfect map is not exactly 1 (see the module docs):
    # 255 thresholds score N/(N-1), threshold 0 marks everything foreground and scores 1/4.
    assert e_measure(gt, gt) == pytest.approx((255 + 0.25) / 256 * n / (n - 1), rel=1e-12)
    assert e_measure(gt, gt) > 0.997
    assert e_measure(gt, gt, mode="adaptive") == pytest.approx(n / (n - 1), rel=1e-12)


def test_inverted_prediction_scores_near_zero():
    gt = np.zeros((64, 64))
    gt[20:41, 12:50] = 1
    inv = 1 - gt
    n = gt.size
    assert s_measure(inv, gt) == 0.0
    assert e_measure(inv, gt) == pytest.approx(0.25 / 256 * n / (n - 1), rel=1e-12)  # only threshold 0 scores
    assert weighted_f_measure(inv, gt) < 1e-6


def test_s_measure_hand_worked():
    # gt: top row; pred: [[1, .5], [0, 0]]. Object: fg values (1, .5): mean .75, std(ddof=1)
    # sqrt(.125) -> 1.5 / (1.5625 + sqrt(.125)); bg values of 1 - pred = (1, 1) -> 1.
    # Region: centroid column 0.5 rounds half-to-even to 0, so each quadrant is one pixel,
    # constant, and scores 1. S = .5 * (.5 * s_fg + .5) + .5.
    gt = np.array([[1, 1], [0, 0]])
    pred = np.array([[1.0, 0.5], [0.0, 0.0]])
    s_fg = 1.5 / (0.75**2 + 1 + math.sqrt(0.125) + EPS)
    assert s_measure(pred, gt) == pytest.approx(0.5 * (0.5 * s_fg + 0.5) + 0.5, abs=1e-12)


def test_s_measure_constant_background_quadrant_scores_one():
    # Diagonal object in 8x8: centroid (3.5, 3.5) rounds to 4, so the top-right and bottom-left
    # quadrants hold only background. There the prediction is the constant 0.1: alpha = 0
    # (y = 0) and beta = 0 (constant), so each of those quadrants scores exactly 1 even though
    # 0.1 is not exactly representable and a naive mean leaves a ~1e-34 variance.
    gt = np.eye(8)
    pred = np.where(gt > 0, 0.9, 0.1)
    x = y = 5
    weights = [x * y / 64, y * (8 - x) / 64, (8 - y) * x / 64]
    weights.append(1 - sum(weights))
    lt = _oracle_ssim(pred[:y, :x], gt[:y, :x])
    rb = _oracle_ssim(pred[y:, x:], gt[y:, x:])
    region = weights[0] * lt + weights[1] * 1.0 + weights[2] * 1.0 + weights[3] * rb
    s_fg = 2 * 0.9 / (0.81 + 1 + 0 + EPS)
    s_bg = 2 * 0.9 / (0.81 + 1 + 0 + EPS)
    expected = 0.5 * (gt.mean() * s_fg + (1 - gt.mean()) * s_bg) + 0.5 * region
    assert s_measure(pred, gt) == pytest.approx(expected, abs=1e-12)
    assert s_measure(pred, gt) == pytest.approx(oracle_s(pred, gt), abs=1e-12)


def test_e_measure_hand_worked():
    # 2x2, gt = one pixel, pred = gt: thresholds 255..1 give a perfect alignment (sum 4 over
    # N - 1 = 3); threshold 0 predicts all four pixels foreground: each scores 1/4 -> 1/3.
    gt = np.array([[1, 0], [0, 0]])
    assert e_measure(gt.astype(float), gt) == pytest.approx((255 * 4 / 3 + 1 / 3) / 256, rel=1e-12)


def test_weighted_f_hand_worked():
    # 3x3 image, one foreground pixel in the centre, prediction all ones: every error sits on
    # the background, weighted 2 - 0.5**(d/5) with d = 1 (4 pixels) and sqrt(2) (4 pixels).
    gt = np.zeros((3, 3))
    gt[1, 1] = 1
    fp = 4 * (2 - 0.5 ** (1 / 5)) + 4 * (2 - 0.5 ** (math.sqrt(2) / 5))
    precision = 1 / (1 + fp + EPS)
    assert weighted_f_measure(np.ones((3, 3)), gt) == pytest.approx(2 * precision / (1 + precision + EPS), rel=1e-12)
    # All-zero prediction with the object 3 pixels from the border: recall 0 -> 0.
    gt9 = np.zeros((9, 9))
    gt9[3:6, 3:6] = 1
    assert weighted_f_measure(np.zeros((9, 9)), gt9) < 1e-9


def test_structure_measures_on_empty_and_full_ground_truth():
    rng = np.random.default_rng(3)
    pred = rng.random((2, 8, 8))
    empty, full = np.zeros((8, 8)), np.ones((8, 8))
    assert s_measure(pred[0], empty) == pytest.approx(1 - pred[0].mean())
    assert s_measure(pred[0], full) == pytest.approx(pred[0].mean())
    assert weighted_f_measure(pred[0], empty) == 0.0
    assert weighted_f_measure(np.zeros((8, 8)), empty) == 0.0  # documented: even when also empty
    # E-measure of an empty gt: share of predicted background (threshold-wise), / (N - 1).
    binary = (pred[1] > 0.5).astype(float)
    assert e_measure(binary, empty, mode="adaptive") == pytest.approx(
        oracle_e_adaptive(binary, empty), abs=1e-12
    )
    np.testing.assert_allclose(e_measure_curve(pred, np.zeros((2, 8, 8)))[0], oracle_e_curve(pred[0], empty), atol=1e-12)
    np.testing.assert_allclose(e_measure_curve(pred, np.ones((2, 8, 8)))[1], oracle_e_curve(pred[1], full), atol=1e-12)


# ----------------------------------------------------------------------------------------
# original size: crop + resize
# ----------------------------------------------------------------------------------------


def test_postprocess_logits_matches_sam_processor():
    from transformers.models.sam.image_processing_pil_sam import SamImageProcessorPil

    rng = np.random.default_rng(4)
    low_res = rng.normal(size=(2, 1, 16, 16)).astype(np.float32)
    original, reshaped = (30, 50), (38, 64)  # 64-px longest edge: 30 * 1.28 = 38.4 -> 38
    proc = SamImageProcessorPil(pad_size={"height": 64, "width": 64})
    expected = proc.post_process_masks([torch.from_numpy(low_res)], [original], [reshaped], binarize=False)[0]
    ours = postprocess_logits(low_res, original, reshaped, pad_size=64)
    np.testing.assert_allclose(ours, expected[:, 0].numpy(), atol=1e-6)
    # reshaped_input_size defaults to SAM's longest-edge rule
    np.testing.assert_allclose(postprocess_logits(low_res, original, pad_size=proc.pad_size), ours, atol=0)


def test_update_crops_padding_and_resizes_to_original_size():
    # Padded-square logits: +8 inside the valid region (top-left 24 x 40 of 40 x 40), -8 in
    # the padding. The object covers the whole original image, so only a correct crop scores 1.
    square = np.full((1, 1, 40, 40), -8.0, dtype=np.float32)
    square[..., :24, :40] = 8.0
    gt = np.ones((1, 30, 50))
    m = SegmentationMetrics(structure_measures=True)
    m.update(square, gt, original_size=(30, 50))  # 40 * 30/50 = 24
    out = m.compute()
    assert out["iou"] == 1.0 and out["dice"] == 1.0 and out["iou@0.5"] == 1.0
    naive = torch.nn.functional.interpolate(torch.from_numpy(square), (30, 50), mode="bilinear")
    assert binary_iou_dice(naive, gt)["mean_iou"] < 0.7  # what skipping the crop would give
    # explicit reshaped_input_size + per-image sizes (list of gts of different shapes)
    sq2 = np.concatenate([square, np.full((1, 1, 40, 40), 8.0, np.float32)])
    m2 = SegmentationMetrics()
    m2.update(sq2, [gt[0], np.ones((20, 20))], original_size=[(30, 50), (20, 20)],
              reshaped_input_size=torch.tensor([[24, 40], [40, 40]]))
    np.testing.assert_array_equal(m2.per_image()["iou"], [1.0, 1.0])
    with pytest.raises(ValueError, match=r"\(1, 30, 50\)"):
        SegmentationMetrics().update(square, np.ones((1, 31, 50)), original_size=(30, 50))


# ----------------------------------------------------------------------------------------
# accumulator and Trainer wiring
# ----------------------------------------------------------------------------------------


def _eval_batches(rng, n_batches=3, batch=2, size=12):
    out = []
    for _ in range(n_batches):
        gt = np.zeros((batch, 1, size, size), np.float32)
        gt[:, :, 3:9, 2:8] = 1
        logits = (gt * 6 - 3 + rng.normal(0, 2.5, size=gt.shape)).astype(np.float32)
        out.append((logits, gt))
    return out


def test_accumulator_equals_one_shot_and_function_values():
    rng = np.random.default_rng(5)
    batches = _eval_batches(rng)
    m = SegmentationMetrics(structure_measures=True)
    for lg, gt in batches:
        m.update(lg, gt)
    all_lg = np.concatenate([b[0] for b in batches])
    all_gt = np.concatenate([b[1] for b in batches])
    res = m.compute()
    assert set(res) == {"iou", "dice", "iou@0.5", "dice@0.5", "s_measure", "e_measure", "weighted_f"}
    prob = 1 / (1 + np.exp(-all_lg.astype(np.float64)))
    assert res["iou"] == pytest.approx(threshold_averaged_iou_dice(all_lg, all_gt)["mean_iou"])
    assert res["dice@0.5"] == pytest.approx(binary_iou_dice(all_lg, all_gt)["mean_dice"])
    assert res["s_measure"] == pytest.approx(s_measure(prob, all_gt).mean())
    assert res["e_measure"] == pytest.approx(e_measure(prob, all_gt).mean())
    assert res["weighted_f"] == pytest.approx(weighted_f_measure(prob, all_gt).mean())
    assert m.num_images == 6 and all(isinstance(v, float) for v in res.values())


def test_reference_protocol_reproduces_reference_choices():
    rng = np.random.default_rng(6)
    (lg, gt), = _eval_batches(rng, n_batches=1, batch=2)
    m = SegmentationMetrics.reference_protocol(structure_measures=True)
    m.update(lg, gt)
    res = m.compute()
    clipped = np.clip(lg[:, 0].astype(np.float64), 0, 1)  # reference: np.clip(logits, 0, 1)
    g = gt[:, 0]
    assert res["s_measure"] == pytest.approx(np.mean([oracle_s(clipped[i], g[i]) for i in range(2)]), abs=1e-10)
    assert res["e_measure"] == pytest.approx(np.mean([oracle_e_adaptive(clipped[i], g[i]) for i in range(2)]), abs=1e-12)
    assert res["weighted_f"] == pytest.approx(np.mean([oracle_wf(clipped[i], g[i], 0.3) for i in range(2)]), abs=1e-10)
    # reference IoU: logits compared with each threshold, smoothed ratio, averaged
    ref_iou = np.mean([
        np.mean([((lg[:, 0] > t) & (g > t)).sum((1, 2))[i] / ((lg[:, 0] > t) | (g > t)).sum((1, 2))[i]
                 for t in REFERENCE_THRESHOLDS]) for i in range(2)
    ])
    assert res["iou"] == pytest.approx(ref_iou, rel=1e-6)


def test_compute_metrics_one_shot_and_batch_eval_accumulation():
    import inspect

    from transformers import EvalPrediction

    rng = np.random.default_rng(7)
    batches = _eval_batches(rng)
    all_lg = np.concatenate([b[0] for b in batches])
    all_gt = np.concatenate([b[1] for b in batches])
    fn = build_compute_metrics(structure_measures=True)
    assert "compute_result" in inspect.signature(fn).parameters  # Trainer checks this
    one_shot = fn(EvalPrediction(predictions=(all_lg, np.zeros((6, 1))), label_ids=all_gt))
    expected = SegmentationMetrics(structure_measures=True)
    expected.update(all_lg, all_gt)
    assert one_shot == pytest.approx(expected.compute())
    outs = [
        fn(EvalPrediction(predictions=torch.from_numpy(lg), label_ids=torch.from_numpy(gt)),
           compute_result=(i == len(batches) - 1))
        for i, (lg, gt) in enumerate(batches)
    ]
    assert outs[0] == {} and outs[1] == {}
    assert outs[-1] == pytest.approx(one_shot)
    # the next evaluation starts from scratch: one batch alone gives that batch's metrics
    lg, gt = batches[1]
    alone = fn(EvalPrediction(predictions=lg, label_ids=gt), compute_result=True)
    assert alone == pytest.approx(fn(EvalPrediction(predictions=lg, label_ids=gt)))
    assert alone != pytest.approx(one_shot)
    # low-resolution logits against full-size labels
    with pytest.raises(ValueError, match="resize"):
        fn(EvalPrediction(predictions=all_lg[..., ::2, ::2], label_ids=all_gt))
    up = build_compute_metrics(resize_logits_to_labels=True)
    res = up(EvalPrediction(predictions=all_lg[..., ::2, ::2], label_ids=all_gt))
    assert set(res) == {"iou", "dice", "iou@0.5", "dice@0.5"}


class _ToySegmenter(torch.nn.Module):
    """Stands in for a SAM model: mask logits from the input, a loss, nothing else."""

    def __init__(self):
        super().__init__()
        self.scale = torch.nn.Parameter(torch.ones(()))

    def forward(self, pixel_values, gt_masks=None):
        logits = pixel_values[:, :1] * self.scale
        loss = torch.nn.functional.binary_cross_entropy_with_logits(logits, gt_masks)
        return {"loss": loss, "pred_masks": logits}


class _ToyData(torch.utils.data.Dataset):
    def __init__(self, logits, gt):
        self.logits, self.gt = logits, gt

    def __len__(self):
        return len(self.gt)

    def __getitem__(self, i):
        return {"pixel_values": torch.from_numpy(self.logits[i]), "gt_masks": torch.from_numpy(self.gt[i])}


@pytest.mark.parametrize("batch_eval_metrics", [False, True])
def test_trainer_evaluates_with_compute_metrics_during_training(tmp_path, batch_eval_metrics):
    from transformers import Trainer, TrainingArguments

    rng = np.random.default_rng(8)
    gt = np.zeros((5, 1, 12, 12), np.float32)  # 5 images, batches of 2: uneven last batch
    gt[:, :, 2:9, 3:10] = 1
    logits = (gt * 4 - 2 + rng.normal(0, 2.0, size=gt.shape)).astype(np.float32)
    args = TrainingArguments(
        output_dir=str(tmp_path), per_device_train_batch_size=2, per_device_eval_batch_size=2,
        max_steps=2, eval_strategy="steps", eval_steps=1, learning_rate=0.0, label_names=["gt_masks"],
        report_to=[], use_cpu=True, save_strategy="no", batch_eval_metrics=batch_eval_metrics,
        dataloader_num_workers=0, remove_unused_columns=False, disable_tqdm=True,
    )
    trainer = Trainer(model=_ToySegmenter(), args=args, train_dataset=_ToyData(logits, gt),
                      eval_dataset=_ToyData(logits, gt), compute_metrics=build_compute_metrics(structure_measures=True))
    trainer.train()
    evals = [log for log in trainer.state.log_history if "eval_iou" in log]
    assert len(evals) == 2  # evaluated at each of the 2 steps (eval_strategy="steps")
    expected = SegmentationMetrics(structure_measures=True)
    expected.update(logits, gt)  # lr = 0: the model's logits are the inputs
    for key, value in expected.compute().items():
        assert evals[-1][f"eval_{key}"] == pytest.approx(value, rel=1e-6)


# ----------------------------------------------------------------------------------------
# evaluate module
# ----------------------------------------------------------------------------------------

_EVALUATE_SCRIPT = r"""
import json, sys
import numpy as np
import evaluate
from infosam_hf.evaluate_metric import SAM_SEGMENTATION_METRIC
from infosam_hf.metrics import SegmentationMetrics

rng = np.random.default_rng(9)
preds = [rng.normal(size=(10, 8)).astype(np.float32), rng.normal(size=(6, 9)).astype(np.float32),
         rng.normal(size=(6, 9)).astype(np.float32)]
refs = [(rng.random((10, 8)) > 0.5).astype(np.uint8), np.zeros((6, 9), np.uint8), (rng.random((6, 9)) > 0.3).astype(np.uint8)]
metric = evaluate.load(SAM_SEGMENTATION_METRIC, keep_in_memory=True)
metric.add_batch(predictions=preds[:2], references=refs[:2])
metric.add(prediction=preds[2], reference=refs[2])
got = metric.compute(structure_measures=True)
direct = SegmentationMetrics(structure_measures=True)
for p, r in zip(preds, refs):
    direct.update(p, r)
json.dump({"metric": got, "direct": direct.compute(), "name": metric.name}, sys.stdout)
"""


def test_evaluate_module_loads_offline_and_matches(tmp_path):
    env = dict(os.environ)
    env.update(
        HF_HUB_OFFLINE="1", HF_EVALUATE_OFFLINE="1", HF_DATASETS_OFFLINE="1",
        HF_HOME=str(tmp_path / "hf"), HF_MODULES_CACHE=str(tmp_path / "modules"),
        PYTHONPATH=os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")]),
    )
    proc = subprocess.run([sys.executable, "-c", _EVALUATE_SCRIPT], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["name"] == "sam_segmentation"
    assert set(out["metric"]) == {"iou", "dice", "iou@0.5", "dice@0.5", "s_measure", "e_measure", "weighted_f"}
    for key, value in out["direct"].items():
        assert out["metric"][key] == pytest.approx(value, rel=1e-6)


def test_objects_packed_per_image_survive_padding_gathering_and_trimming():
    """Several objects per image travel as one row per image (what DDP gathering and end trimming count)."""
    from infosam_hf.packing import PACKED_PAD_VALUE, pack_maps_per_image, unpack_maps

    rng = np.random.default_rng(0)
    maps = [rng.standard_normal(shape).astype(np.float32) for shape in [(3, 5), (4, 2), (2, 2), (6, 1)]]
    packed = pack_maps_per_image(maps, counts=[2, 0, 1, 1])
    assert packed.shape[0] == 4  # one row per image, the image without objects included
    wider = torch.cat([packed, torch.full((4, 7), PACKED_PAD_VALUE)], dim=1)  # pad_across_processes(dim=1)
    for got, expected in zip(unpack_maps(wider), maps, strict=True):
        np.testing.assert_array_equal(got, expected)
    kept = unpack_maps(wider[:3])  # gather_for_metrics trims whole rows: the last image's object goes with it
    assert len(kept) == 3 and kept[-1].shape == (2, 2)
    with pytest.raises(ValueError, match="4 maps for 3 objects"):
        pack_maps_per_image(maps, counts=[2, 1])
