"""The teacher-embedding cache is exact, counts its hits, and refuses configurations where it cannot be exact."""


import pytest
import torch
from peft import LoraConfig
from transformers import SamModel

from infosam_hf import InfoSAMConfig, InfoSAMModel, build_student
from infosam_hf.teacher_cache import TeacherEmbeddingCache, content_key
from infosam_hf.testing import tiny_sam_config, toy_batch


def make_model():
    torch.manual_seed(0)
    config = InfoSAMConfig()
    return InfoSAMModel(build_student(SamModel(tiny_sam_config()), config), config)


def test_cached_teacher_features_equal_uncached_and_hit_on_the_second_pass():
    model = make_model()
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
