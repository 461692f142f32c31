"""Several objects per image: collator padding, one encoder pass per image, pair-wise InfoSAM terms."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers import instance_row, make_model, pair_outputs
from transformers import TrainingArguments

from infosam_hf import InfoSAMConfig, InfoSAMTrainer
from infosam_hf.data import PromptSampler, SamSegmentationCollator
from infosam_hf.losses import (
    relation_compression_loss,
)

SIZE = 64


def collate(rows, n, kind="box", seed=0):
    sampler = PromptSampler(box_noise=0.0, seed=seed)
    return SamSegmentationCollator(sampler, prompt_type=kind, max_objects_per_image=n)(rows)


# --------------------------------------------------------------------------- collator


@pytest.mark.parametrize("kind", ["box", "points"])
def test_collator_gives_n_prompts_per_image_with_a_validity_mask(kind):
    rows = [instance_row(1, 0), instance_row(2, 1), instance_row(5, 2)]
    batch = collate(rows, 3, kind)
    assert batch["gt_masks"].shape == (3, 3, SIZE, SIZE)
    assert batch["prompt_mask"].tolist() == [[True, False, False], [True, True, False], [True, True, True]]
    if kind == "box":
        assert batch["input_boxes"].shape == (3, 3, 4)
        box = batch["input_boxes"][1, 1]  # the second object's tight box (no jitter)
        ys, xs = np.nonzero(rows[1]["gt_masks"][1])
        assert box.tolist() == [xs.min(), ys.min(), xs.max(), ys.max()]
    else:
        assert batch["input_points"].shape == (3, 3, 1, 2) and batch["input_labels"].shape == (3, 3, 1)
    # the 5-object image got 3 distinct objects of its own
    picked = batch["gt_masks"][2].numpy().astype(np.uint8)
    own = [m for m in rows[2]["gt_masks"]]
    assert all(any(np.array_equal(p, o) for o in own) for p in picked)
    assert len({p.tobytes() for p in picked}) == 3


def test_collator_without_max_objects_refuses_instance_samples():
    with pytest.raises(ValueError, match="max_objects_per_image"):
        SamSegmentationCollator()([instance_row(2, 0)])


def test_collator_with_one_object_per_image_matches_the_one_prompt_collator():
    rows = [instance_row(1, s) for s in range(3)]
    legacy = SamSegmentationCollator(PromptSampler(seed=4), "box")(rows)
    multi = SamSegmentationCollator(PromptSampler(seed=4), "box", max_objects_per_image=4)(rows)
    for key in legacy:
        assert torch.equal(legacy[key], multi[key]), key
    assert multi["prompt_mask"].all()


# --------------------------------------------------------------------------- model and loss


def _loss(model, batch):
    model.zero_grad()
    outputs = model(**batch)
    parts = InfoSAMTrainer.compute_infosam_loss(outputs, batch["gt_masks"], model.infosam_config)
    parts["loss"].backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    return parts, grads


def test_padded_prompts_change_no_gradient():
    model = make_model()
    rows = [instance_row(3, 0), instance_row(1, 1), instance_row(2, 2)]
    batch = collate(rows, 3)
    other = {k: v.clone() for k, v in batch.items()}
    pad = ~other["prompt_mask"]
    other["input_boxes"][pad] = torch.tensor([1.0, 2.0, 40.0, 50.0])  # different padding prompts
    other["gt_masks"][pad] = 1.0  # and different padding ground truth
    parts_a, grads_a = _loss(model, batch)
    parts_b, grads_b = _loss(model, other)
    assert parts_a["loss_d"] != 0 and parts_a["loss_r"] != 0
    for name in ("loss", "loss_seg", "loss_r", "loss_d"):
        torch.testing.assert_close(parts_a[name], parts_b[name], rtol=1e-6, atol=1e-7)
    assert grads_a.keys() == grads_b.keys() and grads_a
    for name in grads_a:
        torch.testing.assert_close(grads_a[name], grads_b[name], rtol=1e-5, atol=1e-8, msg=name)


def test_n_prompts_per_image_equal_the_same_pairs_as_separate_one_prompt_samples():
    """Each valid (image, prompt) pair is one InfoSAM sample: B images x N prompts == the pairs fed one by one."""
    model = make_model()
    rows = [instance_row(2, 0), instance_row(1, 1), instance_row(3, 2)]
    batch = collate(rows, 3)
    multi, _ = _loss(model, batch)
    valid = batch["prompt_mask"]
    image_of_pair = valid.nonzero()[:, 0]
    single = {
        "pixel_values": batch["pixel_values"][image_of_pair],
        "input_boxes": batch["input_boxes"][valid].unsqueeze(1),
        "gt_masks": batch["gt_masks"][valid].unsqueeze(1),
    }
    one, _ = _loss(model, single)
    for name in ("loss_seg", "loss_r", "loss_d", "loss"):
        torch.testing.assert_close(multi[name], one[name], rtol=1e-4, atol=1e-5)


def test_pairwise_compression_with_one_prompt_per_image_is_exactly_the_one_prompt_term():
    torch.manual_seed(0)
    feats, tokens, relation = torch.randn(4, 16, 8), torch.randn(4, 1, 8), torch.randn(4, 16)
    assert torch.equal(
        relation_compression_loss(feats, tokens, relation),
        relation_compression_loss(feats, tokens, relation, image_index=torch.arange(4)),
    )
    # pairs of one image share its image row: a planted wrong index changes the loss
    index = torch.tensor([0, 0, 1, 2])
    assert not torch.equal(
        relation_compression_loss(feats, tokens, relation, image_index=index),
        relation_compression_loss(feats, tokens, relation, image_index=torch.tensor([0, 1, 1, 2])),
    )


def test_one_object_per_image_through_the_multi_object_collator_gives_the_one_prompt_loss_exactly():
    rows = [instance_row(1, s) for s in range(3)]
    legacy = SamSegmentationCollator(PromptSampler(seed=1), "box")(rows)
    multi = SamSegmentationCollator(PromptSampler(seed=1), "box", max_objects_per_image=3)(rows)
    model = make_model()
    a, grads_a = _loss(model, legacy)
    b, grads_b = _loss(model, multi)
    for name in ("loss", "loss_seg", "loss_r", "loss_d"):
        assert torch.equal(a[name], b[name]), name
    assert all(torch.equal(grads_a[n], grads_b[n]) for n in grads_a)


def test_training_two_steps_with_three_prompts_runs_the_encoder_once_per_image(tmp_path):
    """2 steps on an instance-id dataset with N = 3: the vision encoder sees each image once (student + teacher)."""
    import datasets
    import PIL.Image

    from infosam_hf.data import SamSegmentationPreprocessor, prepare_instance_dataset

    rng = np.random.default_rng(0)
    images, labels = [], []
    for index in range(4):
        ids = np.zeros((SIZE, SIZE), dtype=np.uint8)
        for k in range(1, 2 + index % 3):
            y, x = rng.integers(0, SIZE - 16, 2)
            ids[y : y + 12, x : x + 12] = k
        pixels = (rng.random((SIZE, SIZE, 3)) * 80 + ids[..., None] * 40).astype(np.uint8)
        images.append(PIL.Image.fromarray(pixels))
        labels.append(PIL.Image.fromarray(ids))
    features = datasets.Features({"image": datasets.Image(), "mask": datasets.Image()})
    raw = datasets.Dataset.from_dict({"image": images, "mask": labels}, features=features)
    data = prepare_instance_dataset(raw, SamSegmentationPreprocessor(image_size=SIZE), "ids")
    model = make_model()
    encoder = model.student.get_base_model().vision_encoder
    seen = []
    encoder.register_forward_pre_hook(lambda _m, args, kwargs: seen.append(args[0].shape[0]), with_kwargs=True)
    args = TrainingArguments(
        output_dir=str(tmp_path / "run"),
        per_device_train_batch_size=2,
        max_steps=2,
        report_to=[],
        use_cpu=True,
        save_strategy="no",
        dataloader_num_workers=0,
    )
    collator = SamSegmentationCollator(PromptSampler(seed=0), max_objects_per_image=3)
    trainer = InfoSAMTrainer(model=model, args=args, train_dataset=data, data_collator=collator)
    prompts_seen = []
    original = model._forward_prompts

    def spy(pixel_values, prompts, prompt_mask, *rest):
        prompts_seen.append(int(prompt_mask.sum()))
        return original(pixel_values, prompts, prompt_mask, *rest)

    model._forward_prompts = spy
    trainer.train()
    assert seen == [2, 2, 2, 2]  # per step: student and teacher, each one pass over the 2 images
    assert len(prompts_seen) == 2 and sum(prompts_seen) > 4  # more objects decoded than images encoded
    assert all(np.isfinite(e["loss"]) for e in trainer.state.log_history if "loss" in e)


# --------------------------------------------------------------------------- gathering across ranks


def _gather_worker(rank: int, init_file: str, results) -> None:
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    try:
        out, gt = pair_outputs(rank)
        parts = InfoSAMTrainer.compute_infosam_loss(out, gt, InfoSAMConfig(), gather=True)
        results[rank] = (parts["loss_r"].item(), parts["loss_d"].item())
    finally:
        dist.destroy_process_group()


def test_gathering_handles_different_numbers_of_valid_pairs_per_rank(tmp_path):
    """The gathered relation terms equal one process holding both ranks' pairs (image indices shifted)."""
    import torch.multiprocessing as mp

    from infosam_hf.losses import InfoSAMLoss

    manager = mp.get_context("spawn").Manager()
    results = manager.dict()
    mp.start_processes(_gather_worker, args=(str(tmp_path / "init"), results), nprocs=2, start_method="spawn")
    (a, _), (b, _) = pair_outputs(0), pair_outputs(1)
    offset = a.teacher_image_feats.shape[0]
    expected = InfoSAMLoss(InfoSAMConfig()).from_relations(
        torch.cat([a.teacher_image_feats, b.teacher_image_feats]),
        torch.cat([a.teacher_mask_tokens, b.teacher_mask_tokens]),
        torch.cat([a.relation_teacher, b.relation_teacher]),
        torch.cat([a.relation_student, b.relation_student]),
        image_index=torch.cat([a.image_index, b.image_index + offset]),
    )
    for rank in (0, 1):
        assert results[rank][0] == pytest.approx(expected.loss_r.item(), rel=1e-5)
        assert results[rank][1] == pytest.approx(expected.loss_d.item(), rel=1e-5)


def test_too_many_prompts_for_memory_suggest_max_objects_per_image(monkeypatch):
    model = make_model()
    batch = collate([instance_row(3, 0), instance_row(2, 1)], 3)

    def out_of_memory(*args, **kwargs):
        raise RuntimeError("[enforce fail at alloc_cpu.cpp:117] DefaultCPUAllocator: can't allocate memory")

    monkeypatch.setattr(model.student, "forward", out_of_memory)
    with pytest.raises(torch.OutOfMemoryError, match="3 prompts for each of 2 images.*max_objects_per_image"):
        model(**batch)


# ------------------------------------------------------------------------ the object subset per image (issue 32 audit)
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
