"""The InfoSAM terms against hand-worked Gram matrices and an eigenvalue re-derivation."""

import math
import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from infosam_hf import InfoSAMConfig, InfoSAMLoss, RelationModule
from infosam_hf import losses as L
from infosam_hf.losses import (
    dice_loss,
    focal_dice_iou_loss,
    relation_compression_loss,
    relation_distillation_loss,
    renyi_entropy,
    segmentation_loss,
    sigmoid_focal_loss,
    structure_loss,
)


def unit_rows(*rows):
    t = torch.tensor(rows, dtype=torch.float64)
    return t / t.norm(dim=1, keepdim=True)


def eig_entropy(gram: np.ndarray) -> float:
    """Independent definition: Renyi-2 entropy of a trace-1 PSD matrix is -log2 sum(lambda_i^2)."""
    eig = np.linalg.eigvalsh(gram / np.trace(gram))
    return float(-np.log2(np.sum(eig**2)))


# ----------------------------------------------------------------------------- Renyi entropy
def test_entropy_2x2_hand_cases():
    # orthogonal rows: G/trG = I/2 -> ||.||_F^2 = 1/2 -> 1 bit
    assert renyi_entropy(torch.eye(2)).item() == pytest.approx(1.0)
    # identical rows: G/trG = all 0.5 -> ||.||_F^2 = 1 -> 0 bits
    assert renyi_entropy(torch.ones(2, 2)).item() == pytest.approx(0.0, abs=1e-7)
    # rows at cos = 0.5: ||.||_F^2 = (1 + c^2) / 2
    g = torch.tensor([[1.0, 0.5], [0.5, 1.0]])
    assert renyi_entropy(g).item() == pytest.approx(-math.log2(0.625), rel=1e-6)


def test_entropy_3x3_matches_eigenvalue_definition():
    x = torch.randn(3, 5, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    g = x @ x.T
    assert renyi_entropy(g).item() == pytest.approx(eig_entropy(g.numpy()), rel=1e-9)
    # uniform spectrum of 3 -> log2(3) bits (the maximum)
    assert renyi_entropy(torch.eye(3)).item() == pytest.approx(math.log2(3))


# ----------------------------------------------------------------------------- L_d
def test_distillation_hand_cases():
    orth = unit_rows([1, 0], [0, 1])
    same = unit_rows([1, 0], [1, 0])
    # teacher = student orthogonal: S(I)+S(I)-S(I) -> L_d = 1 - 1 - 1 = -1
    assert relation_distillation_loss(orth, orth).item() == pytest.approx(-1.0)
    # student collapsed: S(G_t o 1) - S(G_t) - S(1) = 1 - 1 - 0 = 0
    assert relation_distillation_loss(orth, same).item() == pytest.approx(0.0, abs=1e-7)
    # at cos 0.5 for both: 2x2 Hadamard has off-diagonal 0.25
    c = unit_rows([1, 0], [0.5, math.sqrt(3) / 2])
    s = -math.log2(0.625)
    s_h = -math.log2((1 + 0.25**2) / 2)
    assert relation_distillation_loss(c, c).item() == pytest.approx(s_h - 2 * s, rel=1e-6)


def test_distillation_matches_rederivation_3x3():
    gen = torch.Generator().manual_seed(3)
    r_t = torch.nn.functional.normalize(torch.randn(3, 7, generator=gen, dtype=torch.float64), dim=1)
    r_s = torch.nn.functional.normalize(torch.randn(3, 7, generator=gen, dtype=torch.float64), dim=1)
    gt, gs = (r_t @ r_t.T).numpy(), (r_s @ r_s.T).numpy()
    expected = eig_entropy(gt * gs) - eig_entropy(gt) - eig_entropy(gs)  # -I(t; s)
    assert relation_distillation_loss(r_t, r_s).item() == pytest.approx(expected, rel=1e-5)
    # mutual information is non-negative: maximal agreement is rewarded
    assert relation_distillation_loss(r_t, r_s).item() <= 1e-6


# ----------------------------------------------------------------------------- L_r
def test_compression_hand_cases():
    r = unit_rows([1, 0], [0.5, math.sqrt(3) / 2]).float()
    zi_orth = torch.tensor([[[1.0, 0.0]], [[0.0, 1.0]]])  # (B, HW=1, C=2): orthogonal images
    zm_same = torch.tensor([[[1.0, 1.0]], [[1.0, 1.0]]])
    # G_i = I makes the Hadamard product I: L_r = S(G_f) - 1
    expected = -math.log2(0.625) - 1.0
    assert relation_compression_loss(zi_orth, zm_same, r).item() == pytest.approx(expected, rel=1e-5)
    # identical images and tokens: the product is G_f itself -> L_r = 0
    zi_same = torch.tensor([[[1.0, 2.0]], [[1.0, 2.0]]])
    assert relation_compression_loss(zi_same, zm_same, r).item() == pytest.approx(0.0, abs=1e-6)


def test_compression_matches_rederivation_3x3():
    gen = torch.Generator().manual_seed(4)
    zi = torch.randn(3, 4, 6, generator=gen, dtype=torch.float64)
    zm = torch.randn(3, 1, 6, generator=gen, dtype=torch.float64)
    r = torch.nn.functional.normalize(torch.randn(3, 4, generator=gen, dtype=torch.float64), dim=1)
    zi_n = zi.reshape(3, -1) / zi.reshape(3, -1).norm(dim=1, keepdim=True)
    zm_n = zm.reshape(3, -1) / zm.reshape(3, -1).norm(dim=1, keepdim=True)
    gi, gm, gf = (zi_n @ zi_n.T).numpy(), (zm_n @ zm_n.T).numpy(), (r @ r.T).numpy()
    expected = eig_entropy(gf) - eig_entropy(gi * gm * gf)
    assert relation_compression_loss(zi, zm, r).item() == pytest.approx(expected, rel=1e-5)


def test_single_image_is_zero_and_warns_once(monkeypatch):
    monkeypatch.setattr(L, "_warned_single_image", False)
    r = torch.nn.functional.normalize(torch.randn(1, 8), dim=1)
    with pytest.warns(UserWarning, match="B >= 2|at least 2"):
        assert relation_distillation_loss(r, r).item() == 0.0
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a second warning would raise
        assert relation_compression_loss(torch.randn(1, 8, 4), torch.randn(1, 1, 4), r).item() == 0.0


def test_bf16_inputs_under_autocast_are_computed_in_float32():
    # The reference is float32 arithmetic on the very bf16 values given, so the two agree to float32
    # rounding; arithmetic in bf16 (3 significant digits) misses by orders of magnitude more.
    gen = torch.Generator().manual_seed(5)
    zi, zm = torch.randn(4, 16, 8, generator=gen).bfloat16(), torch.randn(4, 1, 8, generator=gen).bfloat16()
    r_t = torch.nn.functional.normalize(torch.randn(4, 16, generator=gen), dim=1).bfloat16()
    r_s = torch.nn.functional.normalize(torch.randn(4, 16, generator=gen), dim=1).bfloat16()
    ref = relation_compression_loss(zi.float(), zm.float(), r_t.float()), relation_distillation_loss(r_t.float(), r_s.float())
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = relation_compression_loss(zi, zm, r_t), relation_distillation_loss(r_t, r_s)
    for a, b in zip(ref, got):
        assert b.dtype == torch.float32 and torch.isfinite(b)
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-6)


def test_shape_errors_name_the_shapes():
    with pytest.raises(ValueError, match=r"\(B, HW\)"):
        relation_distillation_loss(torch.randn(2, 4), torch.randn(2, 5))
    with pytest.raises(ValueError, match="Batch sizes differ"):
        relation_compression_loss(torch.randn(2, 4, 3), torch.randn(3, 1, 3), torch.randn(2, 4))
    with pytest.raises(ValueError, match="image_feats"):
        relation_compression_loss(torch.randn(2, 4), torch.randn(2, 1, 3), torch.randn(2, 4))
    with pytest.raises(ValueError, match="differ in shape"):
        structure_loss(torch.randn(2, 1, 8, 8), torch.ones(2, 1, 16, 16))


# ----------------------------------------------------------------------------- relation module + InfoSAMLoss
def test_relation_module_formula_and_names():
    torch.manual_seed(0)
    module = RelationModule(8)
    assert {n.split(".")[0] for n, _ in module.named_parameters()} == {
        "query_proj",
        "key_proj",
        "layer_norm_feat",
        "layer_norm_mask",
    }
    feats, tok = torch.randn(2, 5, 8), torch.randn(2, 1, 8)
    out = module(feats, tok)
    f, t = module.layer_norm_feat(feats), module.layer_norm_mask(tok)
    score = torch.einsum("bqc,bkc->bqk", module.query_proj(t), module.key_proj(f)) / math.sqrt(8) + t @ f.transpose(1, 2)
    assert out.shape == (2, 5)
    torch.testing.assert_close(out, torch.nn.functional.normalize(score.reshape(2, -1), dim=1))
    torch.testing.assert_close(out.norm(dim=1), torch.ones(2))
    with pytest.raises(ValueError, match=r"\(B, HW, 8\)"):
        module(torch.randn(2, 8, 5, 5), tok)


def test_infosam_loss_gradients_reach_relation_from_both_terms_and_student_only_from_ld():
    torch.manual_seed(0)
    module = RelationModule(8)
    t_feats, t_tok = torch.randn(3, 6, 8), torch.randn(3, 1, 8)
    s_feats, s_tok = torch.randn(3, 6, 8, requires_grad=True), torch.randn(3, 1, 8, requires_grad=True)

    def grads(config):
        module.zero_grad()
        s_feats.grad = None
        out = InfoSAMLoss(config)(t_feats, t_tok, s_feats, s_tok, module)
        out.loss.backward()
        rel = sum(p.grad.abs().sum().item() for p in module.parameters() if p.grad is not None)
        return rel, (s_feats.grad.abs().sum().item() if s_feats.grad is not None else 0.0), out

    rel_r, student_r, out_r = grads(InfoSAMConfig(lambda_1=1.0, lambda_2=0.0))
    rel_d, student_d, out_d = grads(InfoSAMConfig(lambda_1=0.0, lambda_2=1.0))
    assert rel_r > 0 and rel_d > 0
    assert student_r == 0.0 and student_d > 0
    assert out_r.loss_d.item() == 0.0 and out_d.loss_r.item() == 0.0
    full = InfoSAMLoss(InfoSAMConfig())(t_feats, t_tok, s_feats, s_tok, module)
    torch.testing.assert_close(full.loss, 1.0 * full.loss_r + 0.5 * full.loss_d)


# ----------------------------------------------------------------------------- segmentation losses
def test_structure_loss_reference_vs_weighted_bce():
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 1, 40, 40, generator=gen)
    target = torch.zeros(2, 1, 40, 40)
    target[:, :, 10:30, 5:25] = 1
    plain = structure_loss(logits, target)
    weighted = structure_loss(logits, target, weighted_bce=True)
    bce = torch.nn.functional.binary_cross_entropy_with_logits(logits, target)
    weight = 1 + 5 * torch.abs(torch.nn.functional.avg_pool2d(target, 31, 1, 15) - target)
    prob = torch.sigmoid(logits)
    inter, union = (prob * target * weight).sum((2, 3)), ((prob + target) * weight).sum((2, 3))
    wiou = (1 - (inter + 1) / (union - inter + 1)).mean()
    torch.testing.assert_close(plain, bce + wiou)
    assert not torch.isclose(plain, weighted)
    perfect = structure_loss(torch.where(target > 0, 20.0, -20.0), target)
    assert perfect.item() < 0.01


def test_focal_dice_iou_loss_prefers_the_right_mask():
    target = torch.zeros(2, 1, 16, 16)
    target[:, :, 4:12, 4:12] = 1
    good = torch.where(target > 0, 8.0, -8.0)
    bad = -good
    iou = torch.ones(2, 1)
    assert focal_dice_iou_loss(good, target, iou) < 0.05 < focal_dice_iou_loss(bad, target, iou)
    # the IoU head is trained towards the actual IoU (1 for the good mask)
    assert focal_dice_iou_loss(good, target, torch.zeros(2, 1)) > focal_dice_iou_loss(good, target, iou)


# ----------------------------------------------------------------------- segmentation losses by value (issue 32 audit)
def test_dice_hand_values_and_the_empty_prediction_on_an_empty_target_is_zero():
    # prob 0.5 everywhere on a 2x2 target with one pixel: inter 0.5, sums 2 and 1 -> 1 - (1 + 1) / (3 + 1)
    target = torch.tensor([[[[1.0, 0.0], [0.0, 0.0]]]])
    assert dice_loss(torch.zeros(1, 1, 2, 2), target).item() == pytest.approx(0.5, abs=1e-7)
    # an empty prediction of an empty target is right: loss 0 (the smoothing makes 0/0 = 1), not NaN and not 1
    empty = dice_loss(torch.full((1, 1, 2, 2), -50.0), torch.zeros(1, 1, 2, 2))
    assert empty.item() == pytest.approx(0.0, abs=1e-6)
    # smooth=2: 1 - (2 * 0.5 + 2) / (3 + 2)
    assert dice_loss(torch.zeros(1, 1, 2, 2), target, smooth=2.0).item() == pytest.approx(0.4, abs=1e-7)


def test_focal_loss_weighs_foreground_by_alpha_and_background_by_one_minus_alpha():
    # logit 0: p = 0.5, CE = ln 2, (1 - p_t)^2 = 0.25 for either class
    ln2 = math.log(2.0)
    fg = sigmoid_focal_loss(torch.zeros(1, 1, 1, 1), torch.ones(1, 1, 1, 1))
    bg = sigmoid_focal_loss(torch.zeros(1, 1, 1, 1), torch.zeros(1, 1, 1, 1))
    assert fg.item() == pytest.approx(0.25 * 0.25 * ln2, rel=1e-6)
    assert bg.item() == pytest.approx(0.75 * 0.25 * ln2, rel=1e-6)
    # logit 2 on foreground: p = sigmoid(2), CE = -log p, weight (1 - p)^2 * alpha
    p = torch.sigmoid(torch.tensor(2.0)).item()
    value = sigmoid_focal_loss(torch.full((1, 1, 1, 1), 2.0), torch.ones(1, 1, 1, 1), alpha=0.4, gamma=3.0)
    assert value.item() == pytest.approx(0.4 * (1 - p) ** 3 * -math.log(p), rel=1e-5)


def _reference_structure_loss(logits, target, weighted_bce):
    """PraNet's structure loss written out from its definition (avg_pool2d with kernel 31, one pass)."""
    weight = 1 + 5 * torch.abs(F.avg_pool2d(target, kernel_size=31, stride=1, padding=15) - target)
    bce_map = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
    if weighted_bce:
        bce = (weight * bce_map).sum(dim=(2, 3)) / weight.sum(dim=(2, 3))
    else:
        bce = bce_map.mean()
    prob = torch.sigmoid(logits)
    inter = (prob * target * weight).sum(dim=(2, 3))
    union = ((prob + target) * weight).sum(dim=(2, 3))
    return (bce + 1 - (inter + 1) / (union - inter + 1)).mean()


@pytest.mark.parametrize("weighted_bce", [True, False])
def test_structure_loss_equals_its_definition(weighted_bce):
    generator = torch.Generator().manual_seed(0)
    logits = 3 * torch.randn(2, 1, 40, 40, generator=generator)
    target = torch.zeros(2, 1, 40, 40)
    target[0, :, 5:20, 8:30] = 1
    target[1, :, 25:38, 2:12] = 1
    expected = _reference_structure_loss(logits, target, weighted_bce)
    torch.testing.assert_close(structure_loss(logits, target, weighted_bce), expected, rtol=1e-5, atol=1e-6)


def test_sam_recipe_equals_twenty_focal_plus_dice_plus_iou_mse():
    logits = torch.tensor([[[[2.0, -1.0], [0.5, -3.0]]]])
    target = torch.tensor([[[[1.0, 0.0], [0.0, 0.0]]]])
    iou_pred = torch.tensor([[0.3]])
    # thresholded prediction {0, 2} vs target {0}: IoU 1/2
    expected = 20 * sigmoid_focal_loss(logits, target) + dice_loss(logits, target) + (0.3 - 0.5) ** 2
    actual = segmentation_loss(InfoSAMConfig(seg_loss="focal_dice_iou"), logits, target, iou_pred)
    torch.testing.assert_close(actual, expected)
