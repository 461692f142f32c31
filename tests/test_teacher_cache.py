"""The teacher-embedding cache: exact, counts its hits, keys that tell inputs apart, and refuses configurations
where it cannot be exact; cache_teacher_embeddings="auto": on where the data comes back unchanged and fits in
memory, off (with the reason) everywhere else, and with the cache on a run's losses are the uncached run's."""

import pytest
import torch
from helpers import make_model
from peft import LoraConfig
from transformers import HfArgumentParser, SamModel, TrainingArguments

from infosam_hf import (
    InfoSAMConfig,
    InfoSAMModel,
    InfoSAMTrainer,
    InfoSAMTrainingArguments,
    PeftArguments,
    build_student,
)
from infosam_hf.data import SamSegmentationCollator
from infosam_hf.teacher_cache import TeacherEmbeddingCache, content_key, flatten_entry
from infosam_hf.testing import tiny_sam_config, toy_batch, toy_segmentation_dataset

IMAGES = 8  # two batches of 4 per epoch


def make_trainer(tmp_path, model=None, dataset=None, epochs=3, max_steps=-1, run=None, **kwargs):
    """`run`: InfoSAMTrainingArguments' own settings; without them plain TrainingArguments (their defaults)."""
    model = model or make_model(InfoSAMConfig())
    args = (InfoSAMTrainingArguments if run else TrainingArguments)(
        output_dir=str(tmp_path / "out"), per_device_train_batch_size=4, num_train_epochs=epochs, max_steps=max_steps,
        learning_rate=1e-3, logging_steps=1, save_strategy="no", report_to=[], use_cpu=True, seed=0,
        dataloader_num_workers=0, **(run or {}),
    )
    dataset = toy_segmentation_dataset(IMAGES) if dataset is None else dataset
    return InfoSAMTrainer(model=model, args=args, train_dataset=dataset, **kwargs)


def logged_parts(trainer):
    return torch.tensor([[e[k] for k in ("loss_seg", "loss_r", "loss_d")] for e in trainer.state.log_history
                         if "loss_r" in e], dtype=torch.float64)


def train_counting_encoder_images(trainer):
    """Trains; returns the images the (shared) image encoder ran on, student and teacher passes together."""
    images = []
    encoder = trainer.model.student.get_base_model().vision_encoder
    handle = encoder.register_forward_hook(lambda _m, _i, out: images.append(out.last_hidden_state.shape[0]))
    try:
        trainer.train()
    finally:
        handle.remove()
    return sum(images)


def test_auto_caches_a_small_local_set_over_epochs_exactly_and_runs_the_teacher_once_per_image(tmp_path):
    uncached = make_trainer(tmp_path, run=dict(cache_teacher_embeddings=False))
    assert not uncached.teacher_cache_decision.enabled and uncached.model.teacher_cache is None
    uncached_images = train_counting_encoder_images(uncached)
    assert uncached_images == 2 * 3 * IMAGES  # student and teacher, every image, every epoch

    trainer = make_trainer(tmp_path)  # the default: "auto"
    decision = trainer.teacher_cache_decision
    assert decision.enabled, decision
    assert f"{IMAGES} images x 3 epochs" in decision.reason and decision.max_items >= IMAGES
    assert str(decision).startswith("Teacher embedding cache on: ")
    images = train_counting_encoder_images(trainer)
    assert images == 3 * IMAGES + IMAGES, "the teacher's image encoder must run once per distinct image"
    cache = trainer.model.teacher_cache
    assert len(cache) == IMAGES and cache.hits == 4 and cache.misses == 2  # epoch 1 misses, epochs 2-3 hit
    torch.testing.assert_close(logged_parts(trainer), logged_parts(uncached), rtol=1e-6, atol=1e-6)


def test_bfloat16_storage_halves_the_cache_and_keeps_the_loss_parts_within_the_teacher_dtype_tolerance(tmp_path):
    exact = make_trainer(tmp_path)
    exact.train()
    compact = make_trainer(tmp_path, run=dict(teacher_cache_dtype="bfloat16"))
    assert compact.teacher_cache_decision.enabled and "in bfloat16" in compact.teacher_cache_decision.reason
    compact.train()
    entries = [flatten_entry(e) for e in compact.model.teacher_cache._entries.values()]
    assert {t.dtype for e in entries for t in e.values()} == {torch.bfloat16}
    assert compact.model.teacher_cache.nbytes() * 2 == exact.model.teacher_cache.nbytes()
    got, want = logged_parts(compact), logged_parts(exact)
    first_epoch = IMAGES // 4
    torch.testing.assert_close(got[:first_epoch], want[:first_epoch], rtol=0, atol=0)  # computed, not read back
    assert not torch.equal(got[first_epoch:], want[first_epoch:]), "read back in bf16, the embeddings must round"
    # the tolerances of the bf16-teacher test in tests/test_modeling.py for --teacher_dtype bfloat16
    torch.testing.assert_close(got[:, 0], want[:, 0], rtol=2e-2, atol=0)
    torch.testing.assert_close(got[:, 1], want[:, 1], rtol=0, atol=1e-2)
    torch.testing.assert_close(got[:, 2], want[:, 2], rtol=1e-2, atol=0)


def test_auto_is_off_for_a_stream_of_unknown_size(tmp_path):
    stream = toy_segmentation_dataset(IMAGES).to_iterable_dataset()
    trainer = make_trainer(tmp_path, dataset=stream, max_steps=6)
    assert not trainer.teacher_cache_decision.enabled and trainer.model.teacher_cache is None
    assert "stream of unknown size" in trainer.teacher_cache_decision.reason


def test_auto_is_off_when_every_image_is_seen_once(tmp_path):
    decision = make_trainer(tmp_path, epochs=1).teacher_cache_decision
    assert not decision.enabled and "seen once" in decision.reason
    decision = make_trainer(tmp_path, max_steps=2).teacher_cache_decision  # 2 x 4 = 8 images: one epoch
    assert not decision.enabled and "seen once" in decision.reason
    assert make_trainer(tmp_path, max_steps=6).teacher_cache_decision.enabled  # three epochs


class NoisyCollator:
    """An augmenting collator: new noise on the pixels at every call."""

    def __call__(self, features):
        batch = {k: torch.stack([f[k] for f in features]) for k in features[0]}
        batch["pixel_values"] = batch["pixel_values"] + 0.01 * torch.randn_like(batch["pixel_values"])
        return batch


class StackingCollator(NoisyCollator):
    augments_pixels = False

    def __call__(self, features):
        return {k: torch.stack([f[k] for f in features]) for k in features[0]}


def test_auto_is_off_for_an_augmenting_or_unknown_collator_and_dataset_transform(tmp_path):
    decision = make_trainer(tmp_path, data_collator=NoisyCollator()).teacher_cache_decision
    assert not decision.enabled
    assert "data collator NoisyCollator is not known to give the same pixels" in decision.reason
    assert "augments_pixels = False" in decision.reason
    noisy = NoisyCollator()
    noisy.augments_pixels = True
    assert "declares augments_pixels=True" in make_trainer(tmp_path, data_collator=noisy).teacher_cache_decision.reason
    # declared pixel-preserving, and the package's collator (prompts drawn, pixels kept): on
    assert make_trainer(tmp_path, data_collator=StackingCollator()).teacher_cache_decision.enabled
    assert make_trainer(tmp_path, data_collator=SamSegmentationCollator()).teacher_cache_decision.enabled
    # a dataset transform of unknown kind may augment as well
    flipped = toy_segmentation_dataset(IMAGES).with_transform(lambda batch: batch)
    decision = make_trainer(tmp_path, dataset=flipped).teacher_cache_decision
    assert not decision.enabled and "training dataset Dataset with the transform" in decision.reason


def test_auto_is_off_above_the_memory_bound(tmp_path, monkeypatch):
    decision = make_trainer(tmp_path, run=dict(teacher_cache_max_gb=1e-6)).teacher_cache_decision  # ~1 KB; 64 KB each
    assert not decision.enabled and "exceed --teacher_cache_max_gb 1e-06" in decision.reason
    assert "--teacher_cache_dtype bfloat16 halves it" in decision.reason
    # the default bound: a quarter of the available memory
    from infosam_hf import teacher_cache

    monkeypatch.setattr(teacher_cache, "available_memory_bytes", lambda device: 2**20)
    decision = make_trainer(tmp_path).teacher_cache_decision
    assert not decision.enabled and "25% of the 0.0 GB RAM available" in decision.reason


def test_auto_refuses_a_teacher_whose_encoder_trains_and_forced_on_raises(tmp_path):
    model = make_model(InfoSAMConfig())
    neck = model.student.get_base_model().vision_encoder.neck.conv1.weight
    neck.requires_grad_(True)  # trained in place: the shared teacher would see it change
    decision = make_trainer(tmp_path, model).teacher_cache_decision
    assert not decision.enabled and "neck.conv1.weight" in decision.reason
    forced = make_model(InfoSAMConfig())
    forced.student.get_base_model().vision_encoder.neck.conv1.weight.requires_grad_(True)
    with pytest.raises(ValueError, match="--cache_teacher_embeddings true cannot be exact here: 1 image-encoder"):
        make_trainer(tmp_path, forced, run=dict(cache_teacher_embeddings=True))
    with pytest.raises(ValueError, match=r"^--teacher_store \S+store cannot be exact here: 1 image-encoder"):
        make_trainer(tmp_path, forced, run=dict(teacher_store=str(tmp_path / "store")))  # says what the user passed
    # a separate frozen teacher is unaffected by what the student trains
    separate = make_model(InfoSAMConfig(), separate_teacher=True)
    separate.student.get_base_model().vision_encoder.neck.conv1.weight.requires_grad_(True)
    assert make_trainer(tmp_path, separate).teacher_cache_decision.enabled
    # trained parts that disable_adapter() switches off for the teacher are fine: the Adapter's LayerNorm copies
    adapter_args = PeftArguments(peft_method="adapter", adapter_train_layernorms=True)
    adapter = make_model(InfoSAMConfig(), peft_args=adapter_args)
    assert any("bottleneck_norm" in n for n, p in adapter.student.named_parameters() if p.requires_grad)
    assert make_trainer(tmp_path, adapter).teacher_cache_decision.enabled
    # encoder layers trained in full through modules_to_save: for_model's refusal, as the reason
    from peft import LoraConfig

    config = InfoSAMConfig()
    peft_config = LoraConfig(r=2, target_modules=["qkv"], modules_to_save=["mask_decoder", "neck"])
    torch.manual_seed(0)
    copied = InfoSAMModel(build_student(SamModel(tiny_sam_config()), config, peft_config), config)
    decision = make_trainer(tmp_path, copied).teacher_cache_decision
    assert not decision.enabled and "modules_to_save" in decision.reason


def test_auto_is_off_when_the_shared_teacher_applies_dropout(tmp_path):
    sam_config = tiny_sam_config()
    sam_config.vision_config.attention_dropout = 0.1
    decision = make_trainer(tmp_path, make_model(InfoSAMConfig(), sam_config=sam_config)).teacher_cache_decision
    assert not decision.enabled and "dropout in training (attention_dropout=0.1)" in decision.reason


def test_no_teacher_no_cache_and_the_store_implies_it(tmp_path):
    decision = make_trainer(tmp_path, make_model(InfoSAMConfig(lambda_1=0, lambda_2=0))).teacher_cache_decision
    assert not decision.enabled and "no teacher runs" in decision.reason
    stored = make_trainer(tmp_path, epochs=1, run=dict(teacher_store=str(tmp_path / "store")))
    assert stored.teacher_cache_decision.enabled and "implies it" in stored.teacher_cache_decision.reason
    assert stored.model.teacher_cache.disk_store is not None


def test_cache_flags_parse_from_the_command_line_and_saved_arguments(tmp_path):
    parser = HfArgumentParser(InfoSAMTrainingArguments)
    out = ["--output_dir", str(tmp_path), "--report_to", "none"]
    assert parser.parse_args_into_dataclasses(args=out)[0].cache_teacher_embeddings == "auto"
    (args,) = parser.parse_args_into_dataclasses(args=[*out, "--cache_teacher_embeddings", "false"])
    assert args.cache_teacher_embeddings is False
    make = lambda **kw: InfoSAMTrainingArguments(output_dir=str(tmp_path), report_to=[], **kw)  # noqa: E731
    assert make(cache_teacher_embeddings="True").cache_teacher_embeddings is True
    assert make(cache_teacher_embeddings=False).cache_teacher_embeddings is False  # training_args.json: a bool
    with pytest.raises(ValueError, match="cache_teacher_embeddings must be 'auto', true or false"):
        make(cache_teacher_embeddings="sometimes")
    with pytest.raises(ValueError, match="teacher_cache_dtype"):
        make(teacher_cache_dtype="float16")
    with pytest.raises(ValueError, match="teacher_cache_max_gb must be positive"):
        make(teacher_cache_max_gb=0)


@pytest.mark.slow
def test_train_script_prints_the_decision_with_the_schedule(tmp_path, capsys):
    from helpers import load_example

    from infosam_hf.synthetic import write_synthetic_dataset

    data = write_synthetic_dataset(tmp_path / "data", "specialised", num_train=8, num_test=2, image_size=128, seed=1)
    load_example("train").main(
        ["--dataset_name", str(data), "--output_dir", str(tmp_path / "run"), "--max_steps", "4",
         "--per_device_train_batch_size", "4", "--disable_tqdm", "true", "--eval_overlays", "0"]
    )
    lines = capsys.readouterr().out.splitlines()
    schedule = next(i for i, line in enumerate(lines) if line.startswith("Schedule: 4 optimiser steps"))
    assert lines[schedule + 1].startswith("Teacher embedding cache on: 4 steps x 4 images over 8 images: 2 epochs")


# ---------------------------------------------------------------------- the cache itself: exact, keyed, bounded
def test_cached_teacher_features_equal_uncached_and_hit_on_the_second_pass():
    model = make_model(InfoSAMConfig())
    batch = toy_batch(3)
    reference = model(**batch)
    model.teacher_cache = TeacherEmbeddingCache.for_model(model)
    first = model(**batch)
    second = model(**batch)
    assert (model.teacher_cache.misses, model.teacher_cache.hits, len(model.teacher_cache)) == (1, 1, 3)
    for out in (first, second):
        torch.testing.assert_close(out.teacher_image_feats, reference.teacher_image_feats)
        torch.testing.assert_close(out.teacher_mask_tokens, reference.teacher_mask_tokens, rtol=1e-5, atol=1e-6)
    # a batch with one new image misses and computes everything
    other = toy_batch(3, seed=7)
    model(**other)
    assert model.teacher_cache.misses == 2 and len(model.teacher_cache) == 6


def test_keys_depend_on_every_pixel_and_the_lru_bound_holds():
    pixels = torch.zeros(3, 8, 8)
    changed = pixels.clone()
    changed[2, 7, 7] = 1e-6
    assert content_key(pixels) != content_key(changed)
    assert content_key(pixels) == content_key(pixels.clone())
    cache = TeacherEmbeddingCache(max_items=2)
    cache.store(["a", "b", "c"], torch.randn(3, 4))
    assert len(cache) == 2 and "a" not in cache._entries


def test_cache_refuses_encoder_layers_trained_in_full_with_the_shared_teacher():
    torch.manual_seed(0)
    config = InfoSAMConfig()
    peft_config = LoraConfig(r=2, target_modules=["qkv"], modules_to_save=["mask_decoder", "neck"])
    model = InfoSAMModel(build_student(SamModel(tiny_sam_config()), config, peft_config), config)
    with pytest.raises(ValueError, match="cannot be exact"):
        TeacherEmbeddingCache.for_model(model)
    # a separate frozen teacher makes it exact again
    model = InfoSAMModel(model.student, config, teacher=SamModel(tiny_sam_config()))
    assert isinstance(TeacherEmbeddingCache.for_model(model), TeacherEmbeddingCache)


# --------------------------------------------------------------------------------- teacher cache keys (issue 32 audit)
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
