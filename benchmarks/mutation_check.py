"""Mutation check: plant known bugs in the core, one at a time, and see the fast tests catch each.

Why: a suite can pass while the method is broken (a swapped weight, a detached tensor, a
gather that silently stops). Each mutant below is such a bug, planted by exact string
replacement in a scratch copy of the repository (this working tree is never touched);
the fast tests listed for it then run there with `-x`. A mutant is KILLED when a test
fails, SURVIVED when they all pass. The goal is 100%.

A pattern that is not found exactly once is an error, not a skip: after a refactor the
mutant must be re-pointed at the new code, or it would silently test nothing. Before the
mutants, the union of their tests runs once on the unmutated copy and must pass, and the
copy is checked to be what `import infosam_hf` loads there.

    python benchmarks/mutation_check.py                  # every mutant (a few minutes on 2 cores)
    python benchmarks/mutation_check.py --list           # names and files
    python benchmarks/mutation_check.py --patterns-only  # are the patterns still there (after a merge)?
    python benchmarks/mutation_check.py --only ld_in_bf16,pickle_guard_off

Prints one line per mutant and ends with `mutation_score=<killed>/<total>`; exits 1 if a
mutant survived, 2 on an error (pattern not found, baseline failing, a test not found).
"""

from __future__ import annotations

import argparse
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
COPIED = ("infosam_hf", "tests", "examples", "benchmarks", "model_cards", "pyproject.toml")


@dataclass(frozen=True)
class Mutant:
    name: str
    path: str  # relative to the repository root
    replacements: tuple[tuple[str, str], ...]  # (exact text, what replaces it), each found exactly once
    tests: tuple[str, ...]  # pytest node ids (or files) that must catch it
    what: str


T = "tests/test_trainer.py::"
M = "tests/test_modeling.py::"
L = "tests/test_losses.py::"
H = "tests/test_hub.py::"
D = "tests/test_data.py::"
O = "tests/test_multi_object.py::"
F = "tests/test_families.py::"
A = "tests/test_adapter.py::"
C = "tests/test_teacher_cache.py::"
S = "tests/test_teacher_store.py::"
R = "tests/test_resolution.py::"
E = "tests/test_export.py::"

MUTANTS = (
    # ------------------------------------------------------------------ the eleven of issue 20
    Mutant(
        "total_lambdas_swapped", "infosam_hf/trainer.py",
        (('parts["loss"] = loss_seg + distill.loss',
          'parts["loss"] = loss_seg + config.lambda_2 * distill.loss_r + config.lambda_1 * distill.loss_d'),),
        (T + "test_the_total_loss_weights_each_part_by_its_own_lambda",),
        "lambda_1 and lambda_2 swapped where compute_infosam_loss assembles the total",
    ),
    Mutant(
        "logged_last_micro_batch", "infosam_hf/trainer.py",
        (("[[sum(recorded[n]) / len(recorded[n]), 1.0]", "[[recorded[n][-1], 1.0]"),),
        (T + "test_logged_loss_parts_are_the_mean_since_the_last_log_in_training_and_evaluation",),
        "each logged loss part is the last micro-batch's, not the mean since the last log",
    ),
    Mutant(
        "upsample_align_corners", "infosam_hf/modeling.py",
        (('mode="bilinear", align_corners=False)', 'mode="bilinear", align_corners=True)'),),
        (M + "test_upsample_masks_is_bilinear_with_half_pixel_centres_as_sam_postprocesses",),
        "upsample_masks with align_corners=True",
    ),
    Mutant(
        "rng_read_not_restored", "infosam_hf/training_state.py",
        (('        random.setstate(states["python"])\n', ""),
         ('        np.random.set_state(states["numpy"])\n', ""),
         ('        torch.random.set_rng_state(states["cpu"])\n', "")),
        (T + "test_the_trainer_restores_the_python_numpy_and_torch_rng_states_it_saved",),
        "RNG states read from the checkpoint but not restored",
    ),
    Mutant(
        "ld_in_bf16", "infosam_hf/losses.py",
        (("r_t, r_s = _float32(relation_teacher, relation_student)", "r_t, r_s = relation_teacher, relation_student"),
         ("return renyi_entropy(g_t * g_s) - renyi_entropy(g_t) - renyi_entropy(g_s)",
          "return (renyi_entropy(g_t * g_s) - renyi_entropy(g_t) - renyi_entropy(g_s)).float()")),
        (L + "test_bf16_inputs_under_autocast_are_computed_in_float32",),
        "L_d computed in the inputs' bf16, only the result cast to float32",
    ),
    Mutant(
        "base_model_id_dropped", "infosam_hf/hub.py",
        (("        if base_model_id:\n            _set_base_model(folder, base_model_id)",
          "        if base_model_id:\n            pass"),),
        (H + "test_push_records_the_given_base_model_id_in_the_adapter_config",),
        "push_to_hub(base_model_id=...) not written to adapter_config.json",
    ),
    Mutant(
        "pickle_guard_off", "infosam_hf/hub.py",
        (("        _check_no_pickles(folder)\n        try:", "        try:"),),
        (H + "test_push_refuses_a_folder_holding_a_pickle_before_uploading_anything",),
        "the pickle guard before upload disabled",
    ),
    Mutant(
        "flatten_without_permute", "infosam_hf/features.py",
        (("return image_embeddings.permute(0, 2, 3, 1).reshape(batch, -1, channels)",
          "return image_embeddings.reshape(batch, -1, channels)"),),
        (M + "test_flatten_puts_positions_first_and_channels_last",
         M + "test_capture_on_plain_sam_matches_manual_computation"),
        "z_i flattened without the channel-last permute",
    ),
    Mutant(
        "student_detached_at_relation", "infosam_hf/modeling.py",
        (("result.relation_student = self.relation_module(student_image_feats, student_mask_tokens)",
          "result.relation_student = self.relation_module(student_image_feats.detach(), student_mask_tokens.detach())"),),
        (M + "test_the_distillation_term_reaches_the_student_through_the_model",),
        "student features detached at the relation module input",
    ),
    Mutant(
        "no_gather_under_ddp", "infosam_hf/trainer.py",
        (("gather = run_setting(self.args, \"gather_across_processes\") and _distributed()", "gather = False"),),
        (T + "test_under_ddp_the_relation_terms_span_the_gathered_batch",),
        "gathering off under DDP",
    ),
    Mutant(
        "all_gather_without_autograd", "infosam_hf/trainer.py",
        (("    parts = _AllGatherWithGrad.apply(tensor)\n",
          "    parts = [torch.zeros_like(tensor) for _ in range(world)]\n    dist.all_gather(parts, tensor)\n"),),
        (T + "test_the_all_gather_keeps_the_autograd_graph",),
        "all-gather without autograd (torch.distributed.all_gather)",
    ),
    # ------------------------------------------------------------------ variants and the weak tests' targets
    Mutant(
        "torch_rng_not_restored", "infosam_hf/training_state.py",
        (('        torch.random.set_rng_state(states["cpu"])\n', ""),),
        (T + "test_the_trainer_restores_the_python_numpy_and_torch_rng_states_it_saved",),
        "only the torch CPU generator left unrestored",
    ),
    Mutant(
        "lr_in_bf16", "infosam_hf/losses.py",
        (("zi, zm, r = _float32(image_feats, mask_tokens, relation)\n        zi = F.normalize(zi.reshape(batch, -1)",
          "zi, zm, r = image_feats, mask_tokens, relation\n        zi = F.normalize(zi.reshape(batch, -1)"),
         ("g_i, g_m, g_f = gram_matrix(zi), gram_matrix(zm), gram_matrix(r)\n        return renyi_entropy(g_f) - renyi_entropy(g_i * g_m * g_f)",
          "g_i, g_m, g_f = gram_matrix(zi), gram_matrix(zm), gram_matrix(r)\n        return (renyi_entropy(g_f) - renyi_entropy(g_i * g_m * g_f)).float()")),
        (L + "test_bf16_inputs_under_autocast_are_computed_in_float32",),
        "L_r computed in the inputs' bf16",
    ),
    Mutant(
        "loss_lambdas_swapped", "infosam_hf/losses.py",
        (("loss = self.config.lambda_1 * loss_r + self.config.lambda_2 * loss_d",
          "loss = self.config.lambda_2 * loss_r + self.config.lambda_1 * loss_d"),),
        (T + "test_the_total_loss_weights_each_part_by_its_own_lambda",),
        "lambda_1 and lambda_2 swapped inside InfoSAMLoss",
    ),
    Mutant(
        "student_image_feats_detached", "infosam_hf/modeling.py",
        (("result.relation_student = self.relation_module(student_image_feats, student_mask_tokens)",
          "result.relation_student = self.relation_module(student_image_feats.detach(), student_mask_tokens)"),),
        (M + "test_the_distillation_term_reaches_the_student_through_the_model",),
        "only z_i of the student detached (L_d still reaches the encoder through z_m)",
    ),
    Mutant(
        "z_m_is_the_iou_token", "infosam_hf/models/sam.py",
        (('two_way_transformer_class="SamTwoWayTransformer",\n    first_mask_token=1,',
          'two_way_transformer_class="SamTwoWayTransformer",\n    first_mask_token=0,'),),
        (M + "test_z_m_is_the_token_the_decoder_turns_into_its_first_mask",),
        "z_m read at the IoU token's index",
    ),
    Mutant(
        "teacher_keeps_the_adapters", "infosam_hf/modeling.py",
        (("return self.student.disable_adapter()", "return contextlib.nullcontext()"),),
        (M + "test_shared_teacher_equals_frozen_pretrained_model",),
        "the shared teacher runs with the adapters on",
    ),
    Mutant(
        "teacher_decoder_trained", "infosam_hf/modeling.py",
        (("        return get_peft_model(base_model, peft_config)\n",
          "        student = get_peft_model(base_model, peft_config)\n"
          "    for name, param in student.named_parameters():\n"
          "        if 'original_module' in name:\n"
          "            param.requires_grad_(True)\n"
          "    return student\n"),),
        (T + "test_training_lowers_the_loss_and_logs_each_part",),
        "the teacher's copy of the mask decoder is trained too",
    ),
    Mutant(
        "box_jitter_uncapped", "infosam_hf/data/prompts.py",
        (("np.minimum(self.box_noise * sides[:2], cap)", "(self.box_noise * sides[:2])"),),
        (D + "test_box_prompt_contains_the_mask_within_the_jitter_and_points_are_foreground",),
        "the box jitter ignores its pixel cap",
    ),
    Mutant(
        "relation_without_scale", "infosam_hf/relation.py",
        (("* self.scale + tok @ feat.transpose(1, 2)", "+ tok @ feat.transpose(1, 2)"),),
        (L + "test_relation_module_formula_and_names",),
        "the relation score without its 1/sqrt(C)",
    ),
    Mutant(
        "renyi_in_nats", "infosam_hf/losses.py",
        (("return -torch.log2((normalised * normalised).sum().clamp_min(eps))",
          "return -torch.log((normalised * normalised).sum().clamp_min(eps))"),),
        (L + "test_entropy_2x2_hand_cases", L + "test_entropy_3x3_matches_eigenvalue_definition"),
        "Renyi entropy in nats instead of bits",
    ),
    # ------------------------------------------------------------------ issue 32: the audit's blind spots
    # 1. teacher/student confusion, visible only with a student that has moved (tests/test_modeling.py)
    Mutant(
        "teacher_relation_on_student_z_i_multi", "infosam_hf/modeling.py",
        (("self.relation_module.forward_prompts(teacher_image_feats, teacher_tokens)[valid]",
          "self.relation_module.forward_prompts(result.student_image_feats, teacher_tokens)[valid]"),),
        (M + "test_moved_student_several_prompts_relations_use_each_sides_own_features",),
        "several prompts: the teacher relation computed on the student's z_i",
    ),
    Mutant(
        "teacher_relation_on_student_z_m", "infosam_hf/modeling.py",
        (("result.relation_teacher = self.relation_module(teacher_image_feats, teacher_mask_tokens)",
          "result.relation_teacher = self.relation_module(teacher_image_feats, student_mask_tokens.detach())"),),
        (M + "test_moved_student_one_prompt_relations_use_each_sides_own_features",),
        "one prompt: the teacher relation computed with the student's z_m",
    ),
    # 2. segmentation losses by value
    Mutant(
        "dice_unsmoothed_denominator", "infosam_hf/losses.py",
        (("(2 * inter + smooth) / (prob.sum(1) + target.sum(1) + smooth)",
          "(2 * inter + smooth) / (prob.sum(1) + target.sum(1) + 2 * smooth)"),),
        (L + "test_dice_hand_values_and_the_empty_prediction_on_an_empty_target_is_zero",),
        "dice smoothing doubled in the denominator (an empty prediction of an empty target costs 0.5)",
    ),
    Mutant(
        "focal_alpha_per_class_swapped", "infosam_hf/losses.py",
        (("alpha_t = alpha * target + (1 - alpha) * (1 - target)",
          "alpha_t = (1 - alpha) * target + alpha * (1 - target)"),),
        (L + "test_focal_loss_weighs_foreground_by_alpha_and_background_by_one_minus_alpha",),
        "focal alpha given to the background, 1 - alpha to the foreground",
    ),
    Mutant(
        "weighted_bce_mean_normalised", "infosam_hf/losses.py",
        (("bce = (weight * bce).sum(dim=(2, 3)) / weight.sum(dim=(2, 3))",
          "bce = (weight * bce).mean(dim=(2, 3))"),),
        (L + "test_structure_loss_equals_its_definition",),
        "weighted BCE divided by the pixel count instead of the weight sum",
    ),
    # 3. the cross-rank gather with two real ranks (a forked gloo group, in the fast suite)
    Mutant(
        "gather_backward_rank0_slice", "infosam_hf/trainer.py",
        (("        return grad[dist.get_rank()]\n", "        return grad[0]\n"),),
        (T + "test_two_ranks_get_the_gradient_of_their_own_slice_and_shifted_image_indices",),
        "the all-gather's backward hands every rank rank 0's slice",
    ),
    Mutant(
        "gather_backward_not_summed", "infosam_hf/trainer.py",
        (("        grad = grad.contiguous().clone()\n        dist.all_reduce(grad)\n",
          "        grad = grad.contiguous().clone()\n"),),
        (T + "test_two_ranks_get_the_gradient_of_their_own_slice_and_shifted_image_indices",),
        "the all-gather's backward keeps the local gradient only (no sum over the ranks)",
    ),
    Mutant(
        "image_offset_counts_pairs", "infosam_hf/trainer.py",
        (("local = torch.tensor([num_images], device=image_index.device)",
          "local = torch.tensor([image_index.shape[0]], device=image_index.device)"),),
        (T + "test_two_ranks_get_the_gradient_of_their_own_slice_and_shifted_image_indices",),
        "the image-index offset of a rank counts the pairs of lower ranks, not their images",
    ),
    # 4. multimask output: the best of the three masks is the one trained
    Mutant(
        "multimask_trains_the_first_mask", "infosam_hf/trainer.py",
        (("best = (inter / union.clamp_min(1)).argmax(dim=1)", "best = (inter / union.clamp_min(1)).argmax(dim=1) * 0"),),
        (T + "test_multimask_output_trains_the_mask_closest_to_the_ground_truth_with_its_own_iou_score",
         T + "test_with_multimask_output_only_the_best_masks_hypernetwork_is_trained"),
        "multimask output trains the first mask, not the best",
    ),
    Mutant(
        "multimask_iou_score_of_the_first_mask", "infosam_hf/trainer.py",
        (("return logits[index, best].unsqueeze(1), iou_scores[index, best].unsqueeze(1)",
          "return logits[index, best].unsqueeze(1), iou_scores[:, :1]"),),
        (T + "test_multimask_output_trains_the_mask_closest_to_the_ground_truth_with_its_own_iou_score",),
        "multimask output trains the best mask with the first mask's IoU score",
    ),
    # 5. prompt randomness over epochs and workers
    Mutant(
        "worker_reseed_by_worker_id", "infosam_hf/data/prompts.py",
        (("self._rng = np.random.default_rng([self.seed, info.seed % (2**63)])",
          "self._rng = np.random.default_rng([self.seed, info.id])"),),
        (D + "test_every_epoch_and_every_worker_draws_new_prompts",),
        "workers re-seeded from their id: different per worker, the same every epoch",
    ),
    # 6. the object subset chosen per image
    Mutant(
        "object_subset_unsorted", "infosam_hf/data/collator.py",
        (("keep = np.sort(sampler.rng.choice(masks.shape[0], self.max_objects_per_image, replace=False))",
          "keep = sampler.rng.choice(masks.shape[0], self.max_objects_per_image, replace=False)"),),
        (O + "test_the_object_subset_is_in_annotation_order_reproducible_and_varies_with_the_draws",),
        "the object subset in draw order, not annotation order",
    ),
    Mutant(
        "object_subset_global_numpy_rng", "infosam_hf/data/collator.py",
        (("keep = np.sort(sampler.rng.choice(masks.shape[0], self.max_objects_per_image, replace=False))",
          "keep = np.sort(np.random.choice(masks.shape[0], self.max_objects_per_image, replace=False))"),),
        (O + "test_the_object_subset_is_in_annotation_order_reproducible_and_varies_with_the_draws",),
        "the object subset drawn from numpy's global generator, not the seeded sampler's",
    ),
    # 7. model card figures under several devices, accumulation and evaluations
    Mutant(
        "card_total_batch_without_devices", "infosam_hf/model_card.py",
        (('rows.append(("total_train_batch_size", per_device * accumulation * world))',
          'rows.append(("total_train_batch_size", per_device * accumulation))'),),
        (H + "test_card_total_batch_size_counts_devices_and_accumulation_and_reports_the_last_evaluation",),
        "the card's total batch size leaves out the devices",
    ),
    Mutant(
        "card_reports_the_first_evaluation", "infosam_hf/model_card.py",
        (("for key, value in evaluations[-1].items()", "for key, value in evaluations[0].items()"),),
        (H + "test_card_total_batch_size_counts_devices_and_accumulation_and_reports_the_last_evaluation",),
        "the card reports the first evaluation's metrics, not the last",
    ),
    Mutant(
        "card_stream_epochs_without_accumulation", "infosam_hf/model_card.py",
        (("seen = state.global_step * args.per_device_train_batch_size * args.gradient_accumulation_steps",
          "seen = state.global_step * args.per_device_train_batch_size"),),
        (H + "test_card_epochs_of_a_stream_count_every_device_and_accumulated_batch",),
        "the epochs of a streamed run leave out the accumulated micro-batches",
    ),
    # 8. family geometry between valid sizes
    Mutant(
        "sam2_size_multiple_one_stride", "infosam_hf/models/sam2.py",
        (("return 2 * (SamFamily.image_size(config) // coarsest)",
          "return SamFamily.image_size(config) // coarsest"),),
        (F + "test_every_sam2_size_the_check_accepts_runs_and_every_size_it_refuses_fails",),
        "SAM 2 sizes checked against the coarsest stride (16) instead of twice it: 48 px passes and fails inside",
    ),
    # 9. the Adapter's dropout path
    Mutant(
        "adapter_dropout_ignored", "infosam_hf/tuners/bottleneck_adapter/layer.py",
        (("nn.Dropout(config.adapter_dropout) if config.adapter_dropout > 0 else nn.Identity()", "nn.Identity()"),),
        (A + "test_adapter_dropout_acts_on_the_adapter_input_in_training_only_and_trains",),
        "adapter_dropout is never applied",
    ),
    Mutant(
        "adapter_dropout_on_the_output", "infosam_hf/tuners/bottleneck_adapter/layer.py",
        ((("hidden = self.bottleneck_dropout[name](source.to(down.weight.dtype))\n"
           "            delta = self.bottleneck_up[name](self.bottleneck_act[name](down(hidden)))"),
          ("hidden = source.to(down.weight.dtype)\n            delta = self.bottleneck_dropout[name]("
           "self.bottleneck_up[name](self.bottleneck_act[name](down(hidden))))")),),
        (A + "test_adapter_dropout_acts_on_the_adapter_input_in_training_only_and_trains",),
        "the adapter's dropout on its output instead of its input",
    ),
    # 10. teacher cache and store keys
    Mutant(
        "cache_key_without_dtype_and_shape", "infosam_hf/teacher_cache.py",
        ((('    digest = hashlib.blake2b(digest_size=16)\n'
           '    digest.update(f"{data.dtype}{tuple(data.shape)}".encode())\n'),
          "    digest = hashlib.blake2b(digest_size=16)\n"),),
        (C + "test_cache_keys_tell_apart_the_same_bytes_under_another_dtype_or_shape",),
        "the cache key hashes the bytes only: a reshaped or reinterpreted tensor shares its key",
    ),
    Mutant(
        "cache_hit_not_made_recent", "infosam_hf/teacher_cache.py",
        ((("        for key in keys:\n            if key in self._entries:\n"
           "                self._entries.move_to_end(key)\n"), ""),),
        (C + "test_a_cache_hit_makes_its_entry_the_most_recent_and_each_image_gets_its_own_entry",),
        "a cache hit does not refresh the entry's recency (LRU degrades to FIFO)",
    ),
    Mutant(
        "store_key_not_checked", "infosam_hf/teacher_store.py",
        (('if meta.get("key") != key or meta.get("fingerprint") != self.fingerprint:',
          'if meta.get("fingerprint") != self.fingerprint:'),),
        (S + "test_a_store_entry_is_never_served_under_another_key",),
        "the disk store serves an entry filed under another image's key",
    ),
    # 11. the position-embedding resize
    Mutant(
        "pos_embed_bilinear", "infosam_hf/resolution.py",
        (('resized = F.interpolate(image, size=grid, mode="bicubic", align_corners=False, antialias=shrink)',
          'resized = F.interpolate(image, size=grid, mode="bilinear", align_corners=False, antialias=shrink)'),),
        (R + "test_position_embedding_resize_matches_a_bicubic_oracle_on_a_non_symmetric_grid",),
        "the position embedding resized bilinearly, not bicubically",
    ),
    Mutant(
        "pos_embed_grid_transposed", "infosam_hf/resolution.py",
        (("image = pos_embed.float().permute(0, 3, 1, 2)", "image = pos_embed.float().permute(0, 3, 2, 1)"),),
        (R + "test_an_adapted_model_carries_the_resized_position_embedding",),
        "the position-embedding grid transposed by the resize (shapes right on a square grid)",
    ),
    Mutant(
        "pos_embed_shrunk_without_antialias", "infosam_hf/resolution.py",
        (('mode="bicubic", align_corners=False, antialias=shrink)',
          'mode="bicubic", align_corners=False, antialias=False)'),),
        (R + "test_position_embedding_resize_matches_a_bicubic_oracle_on_a_non_symmetric_grid",),
        "the position embedding shrunk without antialiasing",
    ),
    # 12. export with a processor other than the saved one
    Mutant(
        "export_ignores_the_given_processor", "infosam_hf/export.py",
        (("processor = processor if processor is not None else loaded_processor",
          "processor = loaded_processor if loaded_processor is not None else processor"),),
        (E + "test_export_saves_the_processor_it_is_given_not_the_adapters",),
        "export(processor=...) saves the adapter's processor instead of the given one",
    ),
)


class CheckError(RuntimeError):
    """The check itself cannot be trusted (a pattern gone, the baseline failing): fail loudly."""


def apply(mutant: Mutant, text: str) -> str:
    for old, new in mutant.replacements:
        count = text.count(old)
        if count != 1:
            raise CheckError(
                f"mutant {mutant.name}: the pattern {old!r} occurs {count} times in {mutant.path} (expected once). "
                "The code changed: re-point this mutant at the new code in benchmarks/mutation_check.py."
            )
        text = text.replace(old, new)
    return text


def make_scratch() -> str:
    scratch = tempfile.mkdtemp(prefix="infosam-mutants-")
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", ".pytest_cache", "outputs")
    for name in COPIED:
        source = os.path.join(ROOT, name)
        if os.path.isdir(source):
            shutil.copytree(source, os.path.join(scratch, name), ignore=ignore)
        elif os.path.isfile(source):
            shutil.copy2(source, os.path.join(scratch, name))
    return scratch


def scratch_env(scratch: str) -> dict[str, str]:
    return dict(os.environ, PYTHONPATH=scratch, PYTHONDONTWRITEBYTECODE="1")


def run_tests(scratch: str, tests: list[str], timeout: int) -> tuple[int, str]:
    command = [sys.executable, "-m", "pytest", "-x", "-q", "-rf", "-p", "no:cacheprovider", "-m", "not slow", *tests]
    out = subprocess.run(command, cwd=scratch, env=scratch_env(scratch), capture_output=True, text=True,
                         timeout=timeout, check=False)
    return out.returncode, out.stdout + out.stderr


def first_failure(output: str) -> str:
    match = re.search(r"^FAILED (\S+)", output, flags=re.M)
    return match.group(1) if match else "?"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", help="comma-separated mutant names")
    parser.add_argument("--list", action="store_true", help="list the mutants and exit")
    parser.add_argument("--patterns-only", action="store_true",
                        help="only check that every pattern is found exactly once (seconds; after a merge)")
    parser.add_argument("--no-baseline", action="store_true", help="skip the run on the unmutated copy")
    parser.add_argument("--timeout", type=int, default=900, help="seconds per pytest run")
    args = parser.parse_args(argv)

    names = [m.name for m in MUTANTS]
    assert len(set(names)) == len(names), "duplicate mutant names"
    chosen = list(MUTANTS)
    if args.only:
        wanted = args.only.split(",")
        unknown = sorted(set(wanted) - set(names))
        if unknown:
            raise SystemExit(f"unknown mutant(s) {unknown}; --list shows them")
        chosen = [m for m in MUTANTS if m.name in wanted]
    if args.list:
        for m in chosen:
            print(f"{m.name:<32} {m.path:<32} {m.what}")
        return 0

    print(f"command: python benchmarks/mutation_check.py {shlex.join(sys.argv[1:] if argv is None else argv)}")
    scratch = make_scratch()
    try:
        # Every pattern is checked before anything runs, so a stale one fails in seconds.
        originals = {}
        for m in chosen:
            path = os.path.join(scratch, m.path)
            originals.setdefault(m.path, open(path, encoding="utf-8").read())
            apply(m, originals[m.path])
        if args.patterns_only:
            print(f"patterns: all {len(chosen)} mutants apply, each pattern found exactly once")
            return 0
        located = subprocess.run([sys.executable, "-c", "import infosam_hf; print(infosam_hf.__file__)"], cwd=scratch,
                                 env=scratch_env(scratch), capture_output=True, text=True, check=True).stdout.strip()
        if not located.startswith(os.path.realpath(scratch) + os.sep) and not located.startswith(scratch + os.sep):
            raise CheckError(f"the scratch copy imports infosam_hf from {located}, not from {scratch}")
        if not args.no_baseline:
            union = list(dict.fromkeys(t for m in chosen for t in m.tests))
            start = time.perf_counter()
            code, output = run_tests(scratch, union, args.timeout)
            if code != 0:
                raise CheckError(f"the tests fail on the unmutated copy (exit {code}):\n{output[-4000:]}")
            print(f"baseline: {len(union)} test ids pass unmutated ({time.perf_counter() - start:.0f} s)")

        killed, survived = [], []
        for m in chosen:
            path = os.path.join(scratch, m.path)
            with open(path, "w", encoding="utf-8") as f:
                f.write(apply(m, originals[m.path]))
            start = time.perf_counter()
            try:
                code, output = run_tests(scratch, list(m.tests), args.timeout)
            finally:
                with open(path, "w", encoding="utf-8") as f:
                    f.write(originals[m.path])
            seconds = time.perf_counter() - start
            if code == 1:
                killed.append(m.name)
                print(f"KILLED    {m.name:<32} {seconds:5.0f} s  by {first_failure(output)}")
            elif code == 0:
                survived.append(m.name)
                print(f"SURVIVED  {m.name:<32} {seconds:5.0f} s  ({m.what})")
            else:
                raise CheckError(f"mutant {m.name}: pytest exited {code} (not a test failure):\n{output[-4000:]}")
    except CheckError as err:
        print(f"ERROR: {err}", file=sys.stderr)
        return 2
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    total = len(chosen)
    print(f"survivors: {', '.join(survived) if survived else 'none'}")
    print(f"mutation_score={len(killed)}/{total} ({100 * len(killed) / total:.0f}%)")
    return 0 if not survived else 1


if __name__ == "__main__":
    sys.exit(main())
