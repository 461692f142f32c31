"""Tests for the blind spots an independent mutation audit found (issue 32), one section per class of bug.

Each test here fails on a planted bug of its class (benchmarks/mutation_check.py holds them) and is fast:
tiny models, tiny tensors, a forked two-process gloo group where a collective must run for real.
"""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from test_multi_object import _pair_outputs, instance_row  # tests/ is on sys.path (conftest.py)
from transformers import SamModel

from infosam_hf import (
    InfoSAMConfig,
    InfoSAMModel,
    InfoSAMTrainer,
    build_student,
    capture_sam_features,
)
from infosam_hf.data import PromptSampler, SamSegmentationCollator
from infosam_hf.losses import (
    dice_loss,
    segmentation_loss,
    sigmoid_focal_loss,
    structure_loss,
)
from infosam_hf.modeling import InfoSAMModelOutput
from infosam_hf.testing import tiny_sam_config, toy_batch

SIZE = 64  # the size of test_multi_object.instance_row's samples




# --------------------------------------------------------------------------- 1. a student that has moved


def moved_student_model(config: InfoSAMConfig | None = None, seed: int = 0, scale: float = 0.05):
    """(InfoSAMModel whose student has left the pre-trained weights, a frozen copy of those weights).

    A fresh student has LoRA B = 0 and a decoder copy equal to the base, so it computes exactly what the teacher
    does and any mix-up of teacher and student features goes unseen. Here LoRA B and the trained decoder copy are
    perturbed (seeded), so every student quantity differs from the teacher's.
    """
    config = config or InfoSAMConfig()
    torch.manual_seed(seed)
    base = SamModel(tiny_sam_config()).eval()
    pretrained = copy.deepcopy(base).requires_grad_(False)
    model = InfoSAMModel(build_student(base, config), config)
    generator = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for name, param in model.student.named_parameters():
            if "lora_B" in name or "modules_to_save" in name:
                param.add_(scale * torch.randn(param.shape, generator=generator))
    return model, pretrained


def _features(sam, batch, prompts):
    with torch.no_grad(), capture_sam_features(sam) as feats:
        sam(pixel_values=batch["pixel_values"], multimask_output=False, **prompts)
    return feats


def test_moved_student_one_prompt_relations_use_each_sides_own_features():
    model, pretrained = moved_student_model()
    batch = toy_batch(3)
    out = model(**batch)
    prompts = {"input_boxes": batch["input_boxes"]}
    teacher, student = _features(pretrained, batch, prompts), _features(model.student, batch, prompts)
    relation = model.relation_module
    with torch.no_grad():
        torch.testing.assert_close(out.relation_teacher, relation(teacher.image_feats, teacher.mask_token))
        torch.testing.assert_close(out.relation_student, relation(student.image_feats, student.mask_token))
    # the fixture is what makes the two checks above able to fail
    assert (teacher.image_feats - student.image_feats).abs().max() > 1e-3
    assert (teacher.mask_token - student.mask_token).abs().max() > 1e-3
    assert (out.relation_teacher - out.relation_student).abs().max() > 1e-4


def test_moved_student_several_prompts_relations_use_each_sides_own_features():
    model, pretrained = moved_student_model()
    batch = SamSegmentationCollator(PromptSampler(box_noise=0.0), "box", max_objects_per_image=3)(
        [instance_row(3, 0), instance_row(1, 1), instance_row(2, 2)]
    )
    out = model(**batch)
    valid = batch["prompt_mask"]
    prompts = {"input_boxes": batch["input_boxes"]}
    teacher, student = _features(pretrained, batch, prompts), _features(model.student, batch, prompts)
    relation = model.relation_module
    with torch.no_grad():
        expected_teacher = relation.forward_prompts(teacher.image_feats, teacher.prompt_mask_tokens)[valid]
        expected_student = relation.forward_prompts(student.image_feats, student.prompt_mask_tokens)[valid]
    torch.testing.assert_close(out.relation_teacher, expected_teacher)
    torch.testing.assert_close(out.relation_student, expected_student)
    torch.testing.assert_close(out.teacher_image_feats, teacher.image_feats)
    torch.testing.assert_close(out.teacher_mask_tokens, teacher.prompt_mask_tokens[valid].unsqueeze(1))
    assert (out.relation_teacher - out.relation_student).abs().max() > 1e-4


# --------------------------------------------------------------------------- 2. segmentation losses by value


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


# --------------------------------------------------------------------------- 3. the cross-rank gather, two ranks


def _rank_outputs(rank: int):
    """test_multi_object's two ranks of pairs, other draws, relations as leaves with gradients."""
    return _pair_outputs(rank, seed=10, relations_require_grad=True)


def _two_rank_worker(rank: int, init_file: str, queue) -> None:
    import torch.distributed as dist

    from infosam_hf import trainer as trainer_module

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    try:
        out, gt = _rank_outputs(rank)
        index = trainer_module._gather_image_index(out.image_index, out.teacher_image_feats.shape[0])
        parts = InfoSAMTrainer.compute_infosam_loss(out, gt, InfoSAMConfig(), gather=True)
        (parts["loss_r"] + parts["loss_d"]).backward()
        # plain lists: a tensor sent through the queue lives in this process's shared memory, gone once it exits
        queue.put((rank, index.tolist(), out.relation_teacher.grad.tolist(), out.relation_student.grad.tolist()))
    except Exception as err:  # reported at once: the other rank may be left waiting in a collective
        queue.put((rank, f"{type(err).__name__}: {err}", None, None))
    finally:
        dist.destroy_process_group()


def test_two_ranks_get_the_gradient_of_their_own_slice_and_shifted_image_indices(tmp_path):
    """Each rank's relations get exactly its slice of the global loss's gradient (times the world size, which
    DDP's mean over ranks divides out), and rank 1's pair -> image indices follow rank 0's images.

    With one process rank 0 is the only slice and the offset is 0: both are trivially right there.
    """
    import torch.multiprocessing as mp

    context = mp.get_context("fork")  # seconds: no re-import of the package in the children
    queue = context.Queue()
    processes = [context.Process(target=_two_rank_worker, args=(rank, str(tmp_path / "init"), queue))
                 for rank in (0, 1)]
    for process in processes:
        process.start()
    results = {}
    try:
        for _ in processes:
            rank, index, grad_teacher, grad_student = queue.get(timeout=60)
            assert grad_teacher is not None, f"rank {rank} failed: {index}"
            results[rank] = (index, torch.tensor(grad_teacher), torch.tensor(grad_student))
    finally:
        for process in processes:
            process.join(timeout=10)
            if process.is_alive():
                process.kill()
    (a, _), (b, _) = _rank_outputs(0), _rank_outputs(1)
    expected_index = torch.cat([a.image_index, b.image_index + a.teacher_image_feats.shape[0]])
    relation_teacher = torch.cat([a.relation_teacher, b.relation_teacher]).detach().requires_grad_(True)
    relation_student = torch.cat([a.relation_student, b.relation_student]).detach().requires_grad_(True)
    from infosam_hf.losses import InfoSAMLoss

    single = InfoSAMLoss(InfoSAMConfig()).from_relations(
        torch.cat([a.teacher_image_feats, b.teacher_image_feats]),
        torch.cat([a.teacher_mask_tokens, b.teacher_mask_tokens]),
        relation_teacher, relation_student, image_index=expected_index,
    )
    (single.loss_r + single.loss_d).backward()
    split = a.relation_student.shape[0]
    for rank, rows in ((0, slice(0, split)), (1, slice(split, None))):
        index, grad_teacher, grad_student = results[rank]
        assert index == expected_index.tolist()
        torch.testing.assert_close(grad_teacher, 2 * relation_teacher.grad[rows], rtol=1e-4, atol=1e-6)
        torch.testing.assert_close(grad_student, 2 * relation_student.grad[rows], rtol=1e-4, atol=1e-6)
    assert relation_student.grad[:split].abs().max() > 1e-4 and relation_student.grad[split:].abs().max() > 1e-4


# --------------------------------------------------------------------------- 4. multimask: the best mask is trained


def _multimask_outputs():
    """Two images, three masks each: image 0's best mask is its third, image 1's its second."""
    gt = torch.zeros(2, 1, 8, 8)
    gt[0, 0, 0:4, 0:4] = 1
    gt[1, 0, 4:8, 2:8] = 1
    logits = torch.full((2, 3, 8, 8), -4.0)
    logits[0, 0, 0:8, 0:8] = 4.0  # IoU 16/64
    logits[0, 1, 6:8, 6:8] = 4.0  # IoU 0
    logits[0, 2, 0:4, 0:3] = 4.0  # IoU 12/16: best
    logits[1, 0, 0:2, 0:2] = 4.0  # IoU 0
    logits[1, 1, 4:8, 3:8] = 4.0  # IoU 20/24: best
    logits[1, 2, 2:8, 0:8] = 4.0  # IoU 24/48
    iou_scores = torch.tensor([[0.1, 0.2, 0.3], [0.4, 0.5, 0.6]])
    return InfoSAMModelOutput(pred_masks=logits, iou_scores=iou_scores), gt


def test_multimask_output_trains_the_mask_closest_to_the_ground_truth_with_its_own_iou_score():
    from infosam_hf.trainer import select_best_mask

    outputs, gt = _multimask_outputs()
    logits, iou = select_best_mask(outputs, gt)
    torch.testing.assert_close(logits, torch.stack([outputs.pred_masks[0, 2], outputs.pred_masks[1, 1]])[:, None])
    torch.testing.assert_close(iou, torch.tensor([[0.3], [0.5]]))
    # the loss the Trainer trains is the segmentation loss of exactly those masks (SAM's recipe reads the IoU head)
    config = InfoSAMConfig(seg_loss="focal_dice_iou", lambda_1=0.0, lambda_2=0.0)
    parts = InfoSAMTrainer.compute_infosam_loss(outputs, gt, config)
    torch.testing.assert_close(parts["loss_seg"], segmentation_loss(config, logits, gt, iou))


def test_with_multimask_output_only_the_best_masks_hypernetwork_is_trained():
    """Mask k of SAM's three comes from hypernetwork k + 1 alone: the gradient shows which masks were trained."""
    config = InfoSAMConfig(multimask_output=True, lambda_1=0.0, lambda_2=0.0)
    model, _ = moved_student_model(config, seed=1)
    batch = toy_batch(2)
    out = model(**batch)
    assert out.pred_masks.shape[1] == 3
    logits = F.interpolate(out.pred_masks.detach(), size=batch["gt_masks"].shape[-2:], mode="bilinear")
    pred, gt = (logits > 0).float(), batch["gt_masks"]
    inter = (pred * gt).sum(dim=(2, 3))
    iou = inter / (pred.sum(dim=(2, 3)) + gt.sum(dim=(2, 3)) - inter).clamp_min(1)
    best = set(iou.argmax(dim=1).tolist())
    assert best == {1}  # seed 1: the second mask for both images, neither the first nor every one
    InfoSAMTrainer.compute_infosam_loss(out, gt, config)["loss"].backward()
    trained = set()
    for k in range(3):
        grads = [p.grad for n, p in model.student.named_parameters()
                 if f"modules_to_save.default.output_hypernetworks_mlps.{k + 1}." in n]
        assert grads
        if any(g is not None and g.abs().max() > 0 for g in grads):
            trained.add(k)
    assert trained == best


# --------------------------------------------------------------------------- 5. prompts over epochs and workers


def test_every_epoch_and_every_worker_draws_new_prompts():
    rows = [instance_row(1, 0) for _ in range(8)]  # identical samples: any difference comes from the generators
    for row in rows:
        row["gt_masks"] = row["gt_masks"][0]

    torch.manual_seed(0)
    loader = torch.utils.data.DataLoader(
        rows, batch_size=2, num_workers=2, collate_fn=SamSegmentationCollator(PromptSampler(box_probability=0.0))
    )
    epochs = [[b["input_points"] for b in loader] for _ in range(2)]
    first, second = epochs
    assert not all(torch.equal(x, y) for x, y in zip(first, second))  # epoch 2 draws new prompts
    assert not torch.equal(first[0], first[1])  # batch 0 and 1 come from workers 0 and 1
    # in the main process too: the next epoch continues the generator
    main = torch.utils.data.DataLoader(
        rows, batch_size=2, collate_fn=SamSegmentationCollator(PromptSampler(box_probability=0.0))
    )
    assert not all(torch.equal(x["input_points"], y["input_points"]) for x, y in zip(main, main))


# --------------------------------------------------------------------------- 6. the object subset per image


def test_the_object_subset_is_in_annotation_order_reproducible_and_varies_with_the_draws():
    row = instance_row(6, 3)
    masks = [m.tobytes() for m in row["gt_masks"]]

    def subsets(seed, draws=12):
        collator = SamSegmentationCollator(PromptSampler(box_noise=0.0, seed=seed), "box", max_objects_per_image=3)
        picked = []
        for _ in range(draws):
            batch = collator([row])
            picked.append(tuple(masks.index(m.numpy().astype(np.uint8).tobytes()) for m in batch["gt_masks"][0]))
        return picked

    first, again, other = subsets(0), subsets(0), subsets(1)
    assert first == again  # content and order for a seed
    assert first != other
    assert all(list(s) == sorted(s) and len(set(s)) == 3 for s in first)  # distinct objects, annotation order
    assert len(set(first)) > 3  # the subset changes from batch to batch
    # independent of numpy's global generator (a worker's or the user's)
    np.random.seed(123)
    assert subsets(0) == first


# --------------------------------------------------------------------------- 7. model card figures


def test_card_total_batch_size_counts_devices_and_accumulation_and_reports_the_last_evaluation():
    from types import SimpleNamespace

    from infosam_hf.model_card import eval_metrics_from_log_history, hyperparameters_of

    args = SimpleNamespace(per_device_train_batch_size=3, gradient_accumulation_steps=4, world_size=2,
                           learning_rate=1e-4, num_train_epochs=1, seed=0)
    rows = dict(hyperparameters_of(args))
    assert rows["total_train_batch_size"] == "24" and rows["devices"] == "2"
    assert rows["gradient_accumulation_steps"] == "4"
    history = [
        {"loss": 0.9, "step": 5},
        {"eval_iou": 0.41, "eval_dice": 0.5, "eval_runtime": 3.0, "step": 5},
        {"loss": 0.7, "step": 10},
        {"eval_iou": 0.62, "eval_dice": 0.7, "eval_runtime": 2.0, "step": 10},
        {"train_runtime": 30.0, "step": 10},
    ]
    latest, evaluations = eval_metrics_from_log_history(history)
    assert latest == {"iou": 0.62, "dice": 0.7}  # the last evaluation, its speed figures left out
    assert [e["step"] for e in evaluations] == [5, 10]


def test_card_epochs_of_a_stream_count_every_device_and_accumulated_batch():
    from types import SimpleNamespace

    from infosam_hf.model_card import epochs_trained

    class Stream:  # no len(): the size comes from the split's metadata
        split = "train"
        info = SimpleNamespace(splits={"train": SimpleNamespace(num_examples=96)})

    args = SimpleNamespace(per_device_train_batch_size=2, gradient_accumulation_steps=3, world_size=4)
    trainer = SimpleNamespace(train_dataset=Stream(), state=SimpleNamespace(global_step=8, epoch=None), args=args)
    assert epochs_trained(trainer) == pytest.approx(8 * 2 * 3 * 4 / 96)


# --------------------------------------------------------------------------- 8. family geometry between valid sizes


def test_every_sam2_size_the_check_accepts_runs_and_every_size_it_refuses_fails():
    """Sizes that are multiples of 16 but not of 32 (the tiny SAM 2's coarsest stride is 16, with one more pooling
    stage above it) pass a too-loose check and then fail inside the model: the check must be the model's truth."""
    from infosam_hf.models import family_of
    from infosam_hf.resolution import check_image_size
    from infosam_hf.testing import tiny_family_model

    model = tiny_family_model("Sam2Model")
    family = family_of(model)
    verdicts = {}
    for size in (16, 32, 48, 80, 96):
        try:
            check_image_size(model, size, allow_upscaling=True)
            accepted = True
        except ValueError:
            accepted = False
        config = copy.deepcopy(model.config)
        family.set_image_size(config, size)
        torch.manual_seed(0)
        sized = type(model)(config).eval()
        try:
            with torch.no_grad():
                sized(pixel_values=torch.randn(1, 3, size, size),
                      input_boxes=torch.tensor([[[1.0, 1.0, size - 2.0, size - 2.0]]]), multimask_output=False)
            runs = True
        except (RuntimeError, ValueError):
            runs = False
        verdicts[size] = (accepted, runs)
    assert verdicts == {16: (False, False), 32: (True, True), 48: (False, False), 80: (False, False),
                        96: (True, True)}


# --------------------------------------------------------------------------- 9. the Adapter's dropout path


def test_adapter_dropout_acts_on_the_adapter_input_in_training_only_and_trains():
    from infosam_hf.tuners import BottleneckAdapterConfig
    from infosam_hf.tuners.bottleneck_adapter import BottleneckAdapterMLP

    torch.manual_seed(0)
    config = BottleneckAdapterConfig(adapter_dropout=0.5, scaling=0.7)
    student = build_student(SamModel(tiny_sam_config()), InfoSAMConfig(), config)
    layer = next(m for m in student.modules() if isinstance(m, BottleneckAdapterMLP))
    with torch.no_grad():
        layer.bottleneck_up["default"].weight.normal_(0, 0.1)  # a trained adapter: its output is not zero
    down, up, act = layer.bottleneck_down["default"], layer.bottleneck_up["default"], layer.bottleneck_act["default"]
    x = torch.randn(2, 5, layer.in_features)

    def reference(training):
        mlp = layer.base_layer(x)
        return mlp + 0.7 * up(act(down(F.dropout(mlp, 0.5, training=training))))

    layer.train()
    torch.manual_seed(3)
    out = layer(x)
    torch.manual_seed(3)
    expected = reference(True)
    torch.testing.assert_close(out, expected)
    assert not torch.allclose(out, reference(False))  # the dropout did drop something
    # the gradient through the dropped input reaches the adapter, as the reference's does
    (grad,) = torch.autograd.grad(out.square().sum(), down.weight)
    (expected_grad,) = torch.autograd.grad(expected.square().sum(), down.weight)
    torch.testing.assert_close(grad, expected_grad)
    assert grad.abs().max() > 0
    layer.eval()
    torch.testing.assert_close(layer(x), reference(False), rtol=0, atol=0)


# --------------------------------------------------------------------------- 10. teacher cache and store keys


def test_cache_keys_tell_apart_the_same_bytes_under_another_dtype_or_shape():
    from infosam_hf.teacher_cache import content_key

    values = torch.arange(12, dtype=torch.float32)
    assert content_key(values.reshape(3, 4)) != content_key(values.reshape(4, 3))
    assert content_key(values) != content_key(values.view(torch.int32))
    half = torch.randn(6).half()
    assert content_key(half) != content_key(half.view(torch.bfloat16))


def test_a_cache_hit_makes_its_entry_the_most_recent_and_each_image_gets_its_own_entry():
    from infosam_hf.teacher_cache import TeacherEmbeddingCache, content_key

    pixels = torch.randn(3, 3, 4, 4)
    embeddings = torch.randn(3, 2, 5)
    cache = TeacherEmbeddingCache(max_items=2)
    cache.store([content_key(p) for p in pixels[:2]], embeddings[:2])
    found, _ = cache.lookup(pixels[[1, 0]])  # another order than stored: each image its own entry
    torch.testing.assert_close(found, embeddings[[1, 0]])
    found, _ = cache.lookup(pixels[:1])  # a hit on image 0: now the most recent
    torch.testing.assert_close(found, embeddings[:1])
    cache.store([content_key(pixels[2])], embeddings[2:])  # evicts the least recent: image 1
    assert cache.lookup(pixels[1:2])[0] is None
    torch.testing.assert_close(cache.lookup(pixels[:1])[0], embeddings[:1])
    torch.testing.assert_close(cache.lookup(pixels[2:])[0], embeddings[2:])


def test_a_store_entry_is_never_served_under_another_key(tmp_path, caplog):
    import logging

    from infosam_hf.teacher_cache import content_key
    from infosam_hf.teacher_store import TeacherEmbeddingStore

    store = TeacherEmbeddingStore(tmp_path, "f" * 32)
    first, second = content_key(torch.zeros(3, 4, 4)), content_key(torch.ones(3, 4, 4))
    assert store.put(first, {"image_embeddings": torch.arange(6.0).reshape(2, 3)})
    path = store.path_of(second)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(store.path_of(first).read_bytes())  # an intact entry filed under another image's key
    with caplog.at_level(logging.WARNING):
        assert store.get(second) is None
    assert store.get(first) is not None


# --------------------------------------------------------------------------- 11. the position-embedding resize


def _cubic_weights(size_in: int, size_out: int) -> np.ndarray:
    """(out, in) matrix of PyTorch's bicubic upsampling: Keys' kernel (a = -0.75), half-pixel centres, edge clamp."""
    a = -0.75

    def kernel(d):
        d = abs(d)
        if d <= 1:
            return (a + 2) * d**3 - (a + 3) * d**2 + 1
        if d < 2:
            return a * d**3 - 5 * a * d**2 + 8 * a * d - 4 * a
        return 0.0

    weights = np.zeros((size_out, size_in))
    for i in range(size_out):
        x = (i + 0.5) * size_in / size_out - 0.5
        x0 = math.floor(x)
        for j in range(x0 - 1, x0 + 3):
            weights[i, min(max(j, 0), size_in - 1)] += kernel(x - j)
    return weights


def test_position_embedding_resize_matches_a_bicubic_oracle_on_a_non_symmetric_grid():
    from infosam_hf.resolution import resize_abs_pos_embed

    generator = torch.Generator().manual_seed(0)
    pos = torch.randn(1, 3, 4, 5, generator=generator, dtype=torch.float64)  # rows != columns, random content
    rows, cols = _cubic_weights(3, 5), _cubic_weights(4, 7)
    expected = np.einsum("hi,wj,ijc->hwc", rows, cols, pos[0].numpy())[None]
    actual = resize_abs_pos_embed(pos, (5, 7))
    assert actual.shape == (1, 5, 7, 5)
    np.testing.assert_allclose(actual.double().numpy(), expected, rtol=1e-5, atol=1e-6)
    # shrinking is antialiased (timm's resample_abs_pos_embed): white noise loses most of its variance
    noise = torch.randn(1, 16, 16, 8, generator=generator)
    assert resize_abs_pos_embed(noise, (8, 8)).std() < 0.6 * noise.std()


def test_an_adapted_model_carries_the_resized_position_embedding():
    from infosam_hf.resolution import adapt_model

    torch.manual_seed(0)
    base = SamModel(tiny_sam_config())
    with torch.no_grad():  # a pre-trained embedding's content (SAM initialises it to zeros): not symmetric
        base.vision_encoder.pos_embed.normal_()
    old = base.vision_encoder.pos_embed.detach().clone()
    assert not torch.allclose(old, old.transpose(1, 2))
    grid = old.shape[1]
    adapted = adapt_model(base, 64 * 3 // 2, allow_upscaling=True)  # upscaled by 1.5: the oracle's case
    new = adapted.vision_encoder.pos_embed.detach()
    weights = _cubic_weights(grid, new.shape[1])
    expected = np.einsum("hi,wj,ijc->hwc", weights, weights, old[0].double().numpy())[None]
    np.testing.assert_allclose(new.double().numpy(), expected, rtol=1e-4, atol=1e-5)


# --------------------------------------------------------------------------- 12. export with another processor


def test_export_saves_the_processor_it_is_given_not_the_adapters(tmp_path):
    from transformers import SamProcessor

    from infosam_hf.builtin import BUILTIN_MODEL_PATH
    from infosam_hf.export import export
    from infosam_hf.resolution import adapt_processor, processor_image_size

    saved = SamProcessor.from_pretrained(BUILTIN_MODEL_PATH)
    torch.manual_seed(0)
    model = InfoSAMModel(build_student(SamModel(tiny_sam_config()), InfoSAMConfig()), InfoSAMConfig())
    model.save_pretrained(tmp_path / "adapter", processor=saved)
    other = adapt_processor(saved, 96)
    assert processor_image_size(saved) != 96
    export(str(tmp_path / "adapter"), tmp_path / "out", base_model=SamModel(tiny_sam_config()), processor=other)
    assert processor_image_size(SamProcessor.from_pretrained(tmp_path / "out")) == 96
    # without one, the adapter's own
    export(str(tmp_path / "adapter"), tmp_path / "own", base_model=SamModel(tiny_sam_config()))
    assert processor_image_size(SamProcessor.from_pretrained(tmp_path / "own")) == processor_image_size(saved)
