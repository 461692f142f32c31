"""InfoSAMTrainer: real optimisation steps on a tiny SamModel, checkpoints, accumulation, precision."""


import json
import os
import random

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.nn.functional as F
from helpers import make_args, make_model, moved_student_model, pair_outputs
from safetensors.torch import load_file
from transformers import SamModel

import infosam_hf.trainer as trainer_module
from infosam_hf import (
    InfoSAMConfig,
    InfoSAMModel,
    InfoSAMTrainer,
    InfoSAMTrainingArguments,
    PeftArguments,
)
from infosam_hf.data import PromptSampler, SamSegmentationCollator
from infosam_hf.losses import InfoSAMLoss, relation_compression_loss, relation_distillation_loss, segmentation_loss
from infosam_hf.modeling import InfoSAMModelOutput, upsample_masks
from infosam_hf.testing import tiny_sam_config, toy_batch, toy_segmentation_dataset


def trainable_state(model):
    return {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}


def test_training_lowers_the_loss_and_logs_each_part(tmp_path):
    model = make_model()
    data = toy_segmentation_dataset(8)
    trainer = InfoSAMTrainer(model=model, args=make_args(tmp_path, max_steps=30), train_dataset=data)
    before = trainable_state(model)
    frozen_before = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
    trainer.train()
    logs = [entry for entry in trainer.state.log_history if "loss" in entry]
    assert {"loss_seg", "loss_r", "loss_d"} <= set(logs[0])
    first = sum(e["loss_seg"] for e in logs[:3]) / 3
    last = sum(e["loss_seg"] for e in logs[-3:]) / 3
    assert last < 0.8 * first, (first, last)
    assert all(e["loss_r"] != 0 and e["loss_d"] != 0 for e in logs)
    after = trainable_state(model)
    changed = {n for n in before if not torch.equal(before[n], after[n])}
    assert any(n.startswith("relation_module.") for n in changed)  # relation module is in the optimizer
    assert any("lora_" in n for n in changed) and any("modules_to_save" in n for n in changed)
    # the frozen pre-trained weights (the teacher) did not move, to the bit
    frozen = {n: p for n, p in model.named_parameters() if not p.requires_grad}
    assert frozen.keys() == frozen_before.keys() and all("lora_" not in n for n in frozen)
    assert any("original_module" in n for n in frozen) and any("vision_encoder" in n for n in frozen)
    moved = [n for n, p in frozen.items() if not torch.equal(p, frozen_before[n])]
    assert not moved, moved


def test_frozen_relation_module_is_not_trained(tmp_path):
    config = InfoSAMConfig(train_relation_module=False)
    model = make_model(config)
    before = {k: v.clone() for k, v in model.relation_module.state_dict().items()}
    InfoSAMTrainer(model=model, args=make_args(tmp_path, max_steps=2), train_dataset=toy_segmentation_dataset(8)).train()
    assert all(torch.equal(before[k], v) for k, v in model.relation_module.state_dict().items())


def test_checkpoint_contents_and_bit_exact_resume(tmp_path):
    # One batch per epoch: the stock Trainer does not replay the exact shuffling RNG on resume, and with the
    # whole set in every batch the order cannot matter, so any difference comes from what we restore.
    data = toy_segmentation_dataset(4)
    straight = make_model()
    InfoSAMTrainer(model=straight, args=make_args(tmp_path / "a", max_steps=4), train_dataset=data).train()

    first = make_model()
    args = make_args(tmp_path / "b", max_steps=4, save_strategy="steps", save_steps=2)
    InfoSAMTrainer(model=first, args=args, train_dataset=data).train()
    ckpt = tmp_path / "b" / "run" / "checkpoint-2"
    files = set(os.listdir(ckpt))
    assert {"adapter_model.safetensors", "adapter_config.json", "relation_module.safetensors", "infosam_config.json"} <= files
    assert "training_args.bin" not in files and "training_args.json" in files
    assert {"optimizer.safetensors", "scheduler.safetensors", "rng_state.safetensors", "trainer_state.json"} <= files
    assert not [f for f in files if f.endswith((".pt", ".pth", ".bin", ".pkl"))], "no pickles in a checkpoint"
    assert json.loads((ckpt / "infosam_config.json").read_text())["lambda_2"] == 0.5

    resumed = make_model(relation_seed=123)  # a different random relation module before loading
    trainer = InfoSAMTrainer(model=resumed, args=make_args(tmp_path / "b", max_steps=4), train_dataset=data)
    trainer._load_from_checkpoint(str(ckpt))
    saved = load_file(ckpt / "relation_module.safetensors")
    assert saved.keys() == resumed.relation_module.state_dict().keys()
    assert all(torch.equal(saved[k], v) for k, v in resumed.relation_module.state_dict().items())

    resumed = make_model(relation_seed=123)
    trainer = InfoSAMTrainer(model=resumed, args=make_args(tmp_path / "b", max_steps=4), train_dataset=data)
    trainer.train(resume_from_checkpoint=str(ckpt))
    for (name, a), b in zip(trainable_state(straight).items(), trainable_state(resumed).values()):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-6, msg=name)

    # ... and the optimizer state is part of that: without it, the resumed run ends elsewhere
    (ckpt / "optimizer.safetensors").unlink()
    amnesic = make_model(relation_seed=123)
    InfoSAMTrainer(model=amnesic, args=make_args(tmp_path / "b", max_steps=4), train_dataset=data).train(
        resume_from_checkpoint=str(ckpt)
    )
    assert any(not torch.allclose(a, b, atol=1e-6) for a, b in zip(trainable_state(straight).values(),
                                                                   trainable_state(amnesic).values()))


def test_resume_draws_the_prompts_the_uninterrupted_run_draws(tmp_path):
    """Random training prompts (box or points, jittered): the collator's sampler state is in the checkpoint."""

    data = toy_segmentation_dataset(8)  # resumed mid-epoch: the loader had collated the next batch at the save

    def run(name, seed=0, **kwargs):
        model = make_model()
        collator = SamSegmentationCollator(PromptSampler(box_probability=0.5, box_noise=0.2, seed=seed))
        trainer = InfoSAMTrainer(model=model, args=make_args(tmp_path / name, max_steps=4, **kwargs),
                                 train_dataset=data, data_collator=collator)
        return trainer, model

    trainer, straight = run("straight", save_strategy="steps", save_steps=3)
    trainer.train()
    ckpt = tmp_path / "straight" / "run" / "checkpoint-3"
    assert json.loads((ckpt / "data_collator_state.json").read_text())["prompt_sampler"]["seed"] == 0
    trainer, resumed = run("resumed")
    trainer.train(resume_from_checkpoint=str(ckpt))
    for (name, a), b in zip(trainable_state(straight).items(), trainable_state(resumed).values()):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-6, msg=name)
    # the prompts matter: other draws end elsewhere
    trainer, other = run("other_prompts", seed=1)
    trainer.train()
    assert any(not torch.allclose(a, b, atol=1e-5) for a, b in zip(trainable_state(straight).values(),
                                                                   trainable_state(other).values()))


def test_resume_without_relation_module_says_what_is_missing(tmp_path):
    model = make_model()
    trainer = InfoSAMTrainer(model=model, args=make_args(tmp_path), train_dataset=toy_segmentation_dataset(4))
    trainer.save_model(str(tmp_path / "saved"))
    os.remove(tmp_path / "saved" / "relation_module.safetensors")
    with pytest.raises(FileNotFoundError, match="relation_module.safetensors"):
        trainer._load_from_checkpoint(str(tmp_path / "saved"))


def test_gradient_accumulation_matches_one_big_batch_for_the_segmentation_loss(tmp_path):
    # The InfoSAM terms are batch-level (B x B Gram matrices) so they differ by construction between
    # 2 x B and 2B; the Trainer's loss scaling must still make the segmentation part identical.
    config = InfoSAMConfig(lambda_1=0.0, lambda_2=0.0)
    data = toy_segmentation_dataset(4)
    results = []
    for bs, ga in ((4, 1), (2, 2)):
        model = make_model(config)
        args = make_args(tmp_path / f"{bs}", max_steps=1, per_device_train_batch_size=bs, gradient_accumulation_steps=ga,
                         learning_rate=1e-2, optim="sgd", max_grad_norm=0.0)
        InfoSAMTrainer(model=model, args=args, train_dataset=data).train()
        results.append(trainable_state(model))
    for name in results[0]:
        torch.testing.assert_close(results[0][name], results[1][name], rtol=1e-4, atol=1e-6, msg=name)


def test_gradient_checkpointing_gives_the_same_gradients():
    batch = toy_batch(2)
    grads = []
    for checkpointing in (False, True):
        model = make_model()
        model.train()
        if checkpointing:
            model.gradient_checkpointing_enable()
            assert model.is_gradient_checkpointing
        out = model(**batch)
        parts = InfoSAMTrainer.compute_infosam_loss(out, batch["gt_masks"], model.infosam_config)
        parts["loss"].backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})
    assert grads[0].keys() == grads[1].keys() and any("lora_" in n for n in grads[1])
    for name in grads[0]:
        torch.testing.assert_close(grads[0][name], grads[1][name], rtol=1e-4, atol=1e-6, msg=name)


def test_bf16_mixed_precision_and_gradient_checkpointing_train(tmp_path):
    model = make_model()
    args = make_args(tmp_path, bf16=True, gradient_checkpointing=True, max_steps=2)
    trainer = InfoSAMTrainer(model=model, args=args, train_dataset=toy_segmentation_dataset(8))
    dtypes = []
    hook = model.student.get_base_model().vision_encoder.register_forward_hook(
        lambda _m, _i, out: dtypes.append(out.last_hidden_state.dtype)
    )
    trainer.train()
    hook.remove()
    assert torch.bfloat16 in dtypes  # the encoder really ran under bf16 autocast, not in float32
    logs = [e for e in trainer.state.log_history if "loss" in e]
    assert len(logs) == 2 and all(torch.isfinite(torch.tensor(e["loss"])) for e in logs)
    config = model.infosam_config
    for e in logs:  # each step's parts are finite, non-trivial and make up the logged loss
        assert e["loss_r"] != 0 and e["loss_d"] != 0
        total = e["loss_seg"] + config.lambda_1 * e["loss_r"] + config.lambda_2 * e["loss_d"]
        assert e["loss"] == pytest.approx(total, rel=1e-3, abs=1e-3)


def test_evaluation_reports_loss_parts_and_mask_predictions(tmp_path):
    model = make_model()
    seen = {}

    def compute_metrics(pred):
        seen["shapes"] = (pred.predictions.shape, pred.label_ids.shape)
        return {"fraction_positive": float((pred.predictions > 0).mean())}

    trainer = InfoSAMTrainer(model=model, args=make_args(tmp_path, per_device_eval_batch_size=2),
                             eval_dataset=toy_segmentation_dataset(4), compute_metrics=compute_metrics)
    metrics = trainer.evaluate()
    assert seen["shapes"] == ((4, 1, 64, 64), (4, 1, 64, 64))
    assert {"eval_loss", "eval_loss_seg", "eval_loss_r", "eval_loss_d", "eval_fraction_positive"} <= set(metrics)


def test_a_zero_shot_evaluations_loss_parts_are_its_own(tmp_path):
    """`evaluate(metric_key_prefix="zero_shot")` logs `zero_shot_loss_*` and clears them: the next evaluation of the
    same model on the same set logs the same parts (they once leaked into it and were averaged with its own)."""
    model = make_model()
    trainer = InfoSAMTrainer(model=model, args=make_args(tmp_path, per_device_eval_batch_size=2),
                             eval_dataset=toy_segmentation_dataset(4))
    before = trainer.evaluate(metric_key_prefix="zero_shot")
    with torch.no_grad():  # another model: the parts of the next evaluation differ from the zero-shot ones
        for p in model.student.parameters():
            if p.requires_grad:
                p.add_(0.05)
    after = trainer.evaluate()
    again = trainer.evaluate()
    for name in ("loss_seg", "loss_r", "loss_d"):
        assert after[f"eval_{name}"] == pytest.approx(again[f"eval_{name}"], rel=1e-6)
    assert after["eval_loss_seg"] != pytest.approx(before["zero_shot_loss_seg"], rel=1e-4)
    total = after["eval_loss_seg"] + model.infosam_config.lambda_1 * after["eval_loss_r"] + \
        model.infosam_config.lambda_2 * after["eval_loss_d"]
    assert after["eval_loss"] == pytest.approx(total, rel=1e-4, abs=1e-5)


def test_nan_loss_raises_a_clear_error(tmp_path):
    model = make_model()
    data = toy_segmentation_dataset(4)
    trainer = InfoSAMTrainer(model=model, args=make_args(tmp_path), train_dataset=data)
    batch = toy_batch(2)
    batch["pixel_values"][0, 0, 0, 0] = float("nan")
    with pytest.raises(FloatingPointError, match="not finite"):
        trainer.compute_loss(model, batch)


def test_trainer_builds_the_pair_from_a_bare_sam_model(tmp_path):
    torch.manual_seed(0)
    trainer = InfoSAMTrainer(model=SamModel(tiny_sam_config()), args=make_args(tmp_path),
                             peft_config=PeftArguments(lora_r=2), train_dataset=toy_segmentation_dataset(4))
    assert isinstance(trainer.model, InfoSAMModel)
    assert trainer.model.student.peft_config["default"].r == 2
    assert trainer.args.remove_unused_columns is False and trainer.args.label_names == ["gt_masks"]
    with pytest.raises(ValueError, match="needs a model"):
        InfoSAMTrainer(model=None, args=make_args(tmp_path))


# ---------------------------------------------------------------------------------------------- what the total is made of
def test_the_total_loss_weights_each_part_by_its_own_lambda():
    config = InfoSAMConfig(lambda_1=0.3, lambda_2=1.7)
    model = make_model(config).eval()
    batch = toy_batch(3)
    out = model(**batch)
    parts = InfoSAMTrainer.compute_infosam_loss(out, batch["gt_masks"], config)
    # each part is what its own function gives on the model's outputs ...
    logits = upsample_masks(out.pred_masks, batch["gt_masks"].shape[-2:])
    torch.testing.assert_close(parts["loss_seg"], segmentation_loss(config, logits, batch["gt_masks"], out.iou_scores))
    torch.testing.assert_close(
        parts["loss_r"], relation_compression_loss(out.teacher_image_feats, out.teacher_mask_tokens, out.relation_teacher)
    )
    torch.testing.assert_close(parts["loss_d"], relation_distillation_loss(out.relation_teacher, out.relation_student))
    # ... and the total weighs L_r by lambda_1 and L_d by lambda_2 (the two differ, so a swap shows)
    assert abs(parts["loss_r"].item() - parts["loss_d"].item()) > 1e-3
    expected = parts["loss_seg"] + 0.3 * parts["loss_r"] + 1.7 * parts["loss_d"]
    torch.testing.assert_close(parts["loss"], expected)


class LossSpy:
    """Wraps `compute_infosam_loss` and records the parts of every call, to check what the Trainer logs."""

    def __init__(self, monkeypatch):
        self.calls = []
        original = InfoSAMTrainer.compute_infosam_loss

        def spy(*args, **kwargs):
            parts = original(*args, **kwargs)
            self.calls.append({name: value.item() for name, value in parts.items()})
            return parts

        monkeypatch.setattr(InfoSAMTrainer, "compute_infosam_loss", staticmethod(spy))

    def means(self, calls):
        return {name: sum(c[name] for c in calls) / len(calls) for name in ("loss_seg", "loss_r", "loss_d")}


def test_logged_loss_parts_are_the_mean_since_the_last_log_in_training_and_evaluation(tmp_path, monkeypatch):
    spy = LossSpy(monkeypatch)
    args = make_args(tmp_path, max_steps=4, logging_steps=2, per_device_train_batch_size=2, per_device_eval_batch_size=2)
    trainer = InfoSAMTrainer(model=make_model(), args=args, train_dataset=toy_segmentation_dataset(8),
                             eval_dataset=toy_segmentation_dataset(4, seed=1))
    trainer.train()
    logs = [e for e in trainer.state.log_history if "loss" in e]
    assert len(spy.calls) == 4 and len(logs) == 2
    for log, calls in zip(logs, (spy.calls[:2], spy.calls[2:])):
        assert calls[0]["loss_seg"] != calls[1]["loss_seg"]  # so that the mean differs from either call
        assert {k: log[k] for k in ("loss_seg", "loss_r", "loss_d")} == pytest.approx(spy.means(calls), rel=1e-6)
    spy.calls.clear()
    metrics = trainer.evaluate()
    assert len(spy.calls) == 2 and spy.calls[0]["loss_seg"] != spy.calls[1]["loss_seg"]
    logged = {k: metrics[f"eval_{k}"] for k in ("loss_seg", "loss_r", "loss_d")}
    assert logged == pytest.approx(spy.means(spy.calls), rel=1e-6)


def test_the_trainer_restores_the_python_numpy_and_torch_rng_states_it_saved(tmp_path):
    trainer = InfoSAMTrainer(model=make_model(), args=make_args(tmp_path), train_dataset=toy_segmentation_dataset(4))
    checkpoint = tmp_path / "checkpoint"

    def reseed(seed):
        random.seed(seed)
        np.random.seed(seed)
        torch.manual_seed(seed)

    def draws():
        return {"python": random.random(), "numpy": float(np.random.rand()), "torch": torch.rand(1).item()}

    reseed(1)
    trainer._save_rng_state(str(checkpoint))
    assert os.listdir(checkpoint) == ["rng_state.safetensors"]  # our format, not the stock pickle
    expected = draws()
    reseed(2)
    assert all(value != expected[name] for name, value in draws().items())
    trainer._load_rng_state(str(checkpoint))
    assert draws() == expected  # each generator is restored, not only read


# ---------------------------------------------------------------------------------------------- DDP, in one process
def fake_gather(tensor):
    """What an all-gather over two ranks returns when rank 1 holds other samples (a fixed transform of ours)."""
    return torch.cat([tensor, tensor.flip(0).roll(1, dims=-1)])


@pytest.mark.parametrize("gather", [True, False])
def test_under_ddp_the_relation_terms_span_the_gathered_batch(tmp_path, monkeypatch, gather):
    config = InfoSAMConfig()
    model = make_model(config).eval()
    # gathering is on by default: plain TrainingArguments keep it; InfoSAMTrainingArguments turn it off
    off = make_args(tmp_path, InfoSAMTrainingArguments, gather_across_processes=False) if not gather else None
    args = off or make_args(tmp_path)
    trainer = InfoSAMTrainer(model=model, args=args, train_dataset=toy_segmentation_dataset(4))
    monkeypatch.setattr(trainer_module, "_distributed", lambda: True)  # as under DDP with 2 processes
    monkeypatch.setattr(trainer_module, "_gather_with_grad", fake_gather)
    # pair -> image over the gathered batch: one prompt per image, rank 1's images after rank 0's
    monkeypatch.setattr(trainer_module, "_gather_image_index", lambda index, num_images: torch.arange(2 * len(index)))
    batch = toy_batch(2)
    loss = trainer.compute_loss(model, batch)

    out = model(**batch)
    tensors = (out.teacher_image_feats, out.teacher_mask_tokens, out.relation_teacher, out.relation_student)
    local = InfoSAMLoss(config).from_relations(*tensors)
    gathered = InfoSAMLoss(config).from_relations(*(fake_gather(t) for t in tensors))
    assert abs(local.loss.item() - gathered.loss.item()) > 1e-3  # the check below can tell the two apart
    seg = InfoSAMTrainer.compute_infosam_loss(out, batch["gt_masks"], config)["loss_seg"]
    torch.testing.assert_close(loss, seg + (gathered.loss if gather else local.loss))


@pytest.fixture
def gloo_group(tmp_path):
    """A one-process gloo group: the collectives run for real, in this process."""
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'gloo-store'}", rank=0, world_size=1)
    try:
        yield
    finally:
        dist.destroy_process_group()


@pytest.mark.filterwarnings("ignore:torch.distributed.nn.functional.all_gather is deprecated:FutureWarning")
def test_the_all_gather_keeps_the_autograd_graph(gloo_group):
    # Each rank's Gram matrices span the global batch; its local slice must get the gradient back.
    local = torch.randn(3, 4, requires_grad=True)
    gathered = trainer_module._gather_with_grad(local)
    torch.testing.assert_close(gathered, local)
    weights = torch.arange(12.0).reshape(3, 4)
    (gathered * weights).sum().backward()
    torch.testing.assert_close(local.grad, weights)


# ------------------------------------------------------------------- the cross-rank gather, two ranks (issue 32 audit)
def _rank_outputs(rank: int):
    """helpers.pair_outputs' two ranks of pairs, other draws, relations as leaves with gradients."""
    return pair_outputs(rank, seed=10, relations_require_grad=True)


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


# ---------------------------------------------------------------- multimask: the best mask is trained (issue 32 audit)
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
