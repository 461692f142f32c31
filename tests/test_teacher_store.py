"""The on-disk teacher store: a second run never runs the teacher's image encoder, and nothing stale is reused."""


import contextlib
import logging
import os
import shutil
import tempfile
from pathlib import Path

import pytest
import torch
from helpers import load_example, make_model
from transformers import SamModel

from infosam_hf import (
    InfoSAMConfig,
    InfoSAMModel,
    InfoSAMTrainer,
    InfoSAMTrainingArguments,
    PeftArguments,
    build_student,
)
from infosam_hf.data import PromptSampler, SamSegmentationCollator
from infosam_hf.teacher_cache import content_key
from infosam_hf.teacher_store import TeacherEmbeddingStore, check_store_root, estimate_bytes, teacher_fingerprint
from infosam_hf.testing import tiny_sam_config, toy_batch, toy_segmentation_dataset

STEPS = 3  # one epoch of 12 images in batches of 4: every image is seen once per run


def run(tmp_path, name, store, separate_teacher=False):
    config = InfoSAMConfig()
    model = make_model(config)
    if separate_teacher:
        torch.manual_seed(0)
        model = InfoSAMModel(model.student, config, teacher=SamModel(tiny_sam_config()))
    calls = []
    model.teacher_image_encoder.register_forward_hook(lambda *_: calls.append(1))
    args = InfoSAMTrainingArguments(
        output_dir=str(tmp_path / name), per_device_train_batch_size=4, learning_rate=1e-3, max_steps=STEPS,
        logging_steps=1, save_strategy="no", report_to=[], use_cpu=True, seed=0, dataloader_num_workers=0,
        teacher_store=str(store),
    )
    trainer = InfoSAMTrainer(model=model, args=args, train_dataset=toy_segmentation_dataset(12))
    trainer.train()
    losses = [(e["loss_seg"], e["loss_r"], e["loss_d"]) for e in trainer.state.log_history if "loss_r" in e]
    return losses, len(calls), model.teacher_cache.disk_store


def test_a_second_run_reads_the_teacher_from_disk_and_gives_the_same_losses(tmp_path):
    store = tmp_path / "store"
    first_losses, first_calls, first_store = run(tmp_path, "first", store)
    # shared-weights teacher: the encoder runs for the student and for the teacher on every step
    assert first_calls == 2 * STEPS
    assert (first_store.writes, first_store.hits) == (12, 0) and len(first_store) == 12

    second_losses, second_calls, second_store = run(tmp_path, "second", store)
    assert second_calls == STEPS, "the teacher's image encoder must not run at all in the second run"
    assert (second_store.hits, second_store.writes, second_store.misses) == (12, 0, 0)
    assert len(second_losses) == len(first_losses) == STEPS
    torch.testing.assert_close(torch.tensor(second_losses), torch.tensor(first_losses), rtol=1e-6, atol=1e-6)


def test_adapters_do_not_change_the_fingerprint_but_base_weights_and_precision_do():
    config = InfoSAMConfig()
    shared = make_model(config)
    torch.manual_seed(0)
    plain = SamModel(tiny_sam_config())
    # LoRA's B starts at zero; give it values: the teacher runs with adapters off, so they must not count
    for name, param in shared.student.named_parameters():
        if "lora_B" in name:
            param.data.normal_()
    reference = teacher_fingerprint(shared.teacher_image_encoder, shared.sam_config)
    assert reference == teacher_fingerprint(plain.vision_encoder, plain.config)
    assert reference != teacher_fingerprint(plain.vision_encoder, plain.config, precision="bfloat16")
    with torch.no_grad():
        plain.vision_encoder.neck.conv1.weight[0, 0, 0, 0] += 1e-3
    assert reference != teacher_fingerprint(plain.vision_encoder, plain.config)


@pytest.mark.parametrize("train_layernorms", [False, True])
def test_bottleneck_adapter_runs_of_any_seed_share_the_base_models_store(tmp_path, train_layernorms):
    """The Adapter's weights (`bottleneck_down/up`, LayerNorm copies `bottleneck_norm`) are adapter state as PEFT
    declares it: two seeds (different adapter draws, trained further) and a precompute over the bare base meet
    in one folder."""
    config = InfoSAMConfig()
    peft_args = PeftArguments(peft_method="adapter", adapter_train_layernorms=train_layernorms)
    torch.manual_seed(0)
    plain = SamModel(tiny_sam_config())
    folders = set()
    for seed in (1, 2):
        torch.manual_seed(0)
        base = SamModel(tiny_sam_config())
        torch.manual_seed(seed)
        model = InfoSAMModel(build_student(base, config, peft_args), config)
        with torch.no_grad():
            for name, param in model.student.named_parameters():
                if "bottleneck" in name:
                    param.add_(torch.randn_like(param))  # as after training
        folders.add(TeacherEmbeddingStore.for_teacher(tmp_path, model.teacher_image_encoder, model.sam_config).folder)
    assert folders == {TeacherEmbeddingStore.for_teacher(tmp_path, plain.vision_encoder, plain.config).folder}


def test_a_changed_teacher_never_reads_the_old_entries(tmp_path):
    model = make_model(InfoSAMConfig())
    encoder = model.teacher_image_encoder
    store = TeacherEmbeddingStore.for_teacher(tmp_path, encoder, model.sam_config)
    store.put("ab" * 16, {"image_embeddings": torch.ones(2, 2)})
    with torch.no_grad():
        encoder.layers[0].mlp.lin1.weight.mul_(1.01)
    changed = TeacherEmbeddingStore.for_teacher(tmp_path, encoder, model.sam_config)
    assert changed.folder != store.folder
    assert changed.get("ab" * 16) is None and store.get("ab" * 16) is not None


def test_a_corrupt_or_foreign_entry_is_deleted_and_recomputed(tmp_path, caplog):
    store = TeacherEmbeddingStore(tmp_path, "f" * 32)
    key = content_key(toy_batch(1)["pixel_values"][0])
    assert store.put(key, {"image_embeddings": torch.arange(6.0).reshape(2, 3)})
    torch.testing.assert_close(store.get(key)["image_embeddings"], torch.arange(6.0).reshape(2, 3))
    path = store.path_of(key)
    path.write_bytes(path.read_bytes()[:-7])  # a truncated write
    with caplog.at_level(logging.WARNING):
        assert store.get(key) is None
    assert store.rebuilt == 1 and not path.exists() and str(path) in caplog.text
    assert store.put(key, {"image_embeddings": torch.zeros(2, 3)})  # recomputed and written again
    # a file copied in from another teacher's folder carries the other fingerprint: not used
    other = TeacherEmbeddingStore(tmp_path, "e" * 32)
    other.put(key, {"image_embeddings": torch.ones(2, 3)})
    path.write_bytes(other.path_of(key).read_bytes())
    assert store.get(key) is None and store.rebuilt == 2


def test_flipped_bytes_under_an_intact_header_are_caught_by_the_checksum(tmp_path, caplog, monkeypatch):
    """Only the tensor data changes (header, key and fingerprint intact): the entry is recomputed, counted, named."""
    from safetensors.torch import save_file

    store = TeacherEmbeddingStore(tmp_path, "f" * 32)
    key = content_key(toy_batch(1)["pixel_values"][0])
    assert store.put(key, {"image_embeddings": torch.randn(8, 4, 4), "high_res.0": torch.randn(2, 8, 8).bfloat16()})
    path = store.path_of(key)
    data = bytearray(path.read_bytes())
    header_end = 8 + int.from_bytes(data[:8], "little")
    for offset in (header_end + 5, len(data) - 3):  # a byte of each tensor
        data[offset] ^= 0x10
    path.write_bytes(bytes(data))
    with caplog.at_level(logging.WARNING):
        assert store.get(key) is None
    assert store.rebuilt == 1 and not path.exists() and str(path) in caplog.text and "checksum" in caplog.text
    # an entry as format 1 wrote it (no checksum) in a format-2 folder is not taken as verified either
    save_file({"image_embeddings": torch.ones(2)}, str(path), metadata={"key": key, "fingerprint": store.fingerprint})
    assert store.get(key) is None and store.rebuilt == 2
    # and the format is part of the fingerprint: a format-1 store's folder is never looked at
    encoder = SamModel(tiny_sam_config()).vision_encoder
    current = teacher_fingerprint(encoder)
    monkeypatch.setattr("infosam_hf.teacher_store.STORE_FORMAT", 1)
    assert teacher_fingerprint(encoder) != current


@contextlib.contextmanager
def unprivileged():
    """Permission bits do not bind root: run as root, the block runs as `nobody` (effective ids, restored after)."""
    if os.geteuid() != 0:
        yield
        return
    os.setegid(65534)
    os.seteuid(65534)
    try:
        yield
    finally:
        os.seteuid(0)
        os.setegid(0)


def set_writable(root, writable: bool) -> None:
    for folder, _, files in os.walk(root):
        os.chmod(folder, 0o755 if writable else 0o555)
        for name in files:
            os.chmod(os.path.join(folder, name), 0o644 if writable else 0o444)


@pytest.fixture
def shared_dir():
    """A folder `nobody` can reach (pytest's tmp_path is private to its user), left writable for the clean-up."""
    root = tempfile.mkdtemp(prefix="infosam-store-")
    os.chmod(root, 0o755)
    yield Path(root)
    set_writable(root, True)
    shutil.rmtree(root)


def test_a_read_only_store_is_read_and_never_written(shared_dir, caplog):
    root = shared_dir / "store"
    store = TeacherEmbeddingStore(root, "f" * 32)
    good, bad, new = "aa" * 16, "ab" * 16, "ac" * 16
    store.put(good, {"image_embeddings": torch.arange(4.0)})
    store.put(bad, {"image_embeddings": torch.arange(4.0)})
    data = bytearray(store.path_of(bad).read_bytes())
    data[-1] ^= 0x01
    store.path_of(bad).write_bytes(bytes(data))
    set_writable(shared_dir, False)
    with unprivileged(), caplog.at_level(logging.WARNING):
        assert check_store_root(root) is False  # holds stores: the run may read them
        with pytest.raises(ValueError, match=rf"Teacher store {root} is not writable.*chmod"):
            check_store_root(root, write=True)  # a precompute only writes
        reader = TeacherEmbeddingStore(root, "f" * 32)
        assert reader.read_only and "read-only" in caplog.text
        torch.testing.assert_close(reader.get(good)["image_embeddings"], torch.arange(4.0))
        caplog.clear()
        assert reader.get(bad) is None and reader.get(bad) is None
        assert caplog.text.count(str(reader.path_of(bad))) == 1, "one warning per corrupted entry"
        assert reader.path_of(bad).exists()  # skipped, not deleted: it cannot be
        assert reader.put(new, {"image_embeddings": torch.zeros(4)}) is False and not reader.path_of(new).exists()
        # nothing for this teacher to read, and nowhere to write it: one error naming the folder and the fix
        with pytest.raises(ValueError, match=rf"Teacher store {root} is not writable and holds nothing for this"):
            TeacherEmbeddingStore(root, "e" * 32)
        with pytest.raises(ValueError, match=rf"{shared_dir / 'empty'} is not writable and holds no store"):
            check_store_root(shared_dir / "empty")
    assert (reader.hits, reader.misses, reader.writes) == (1, 2, 0)


def test_scripts_refuse_an_unwritable_store_before_loading_a_model(shared_dir, monkeypatch):
    import infosam_hf.models
    import infosam_hf.teacher_store
    from infosam_hf.testing import load_script

    def no_model(*_args, **_kwargs):
        raise AssertionError("the model was loaded before the store was checked")

    monkeypatch.setattr(infosam_hf.models, "load_sam_model", no_model)
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    precompute = load_script(os.path.join(root, "examples", "precompute_teacher.py"), "precompute_teacher")
    train = load_script(os.path.join(root, "examples", "train.py"), "train_script")
    set_writable(shared_dir, False)
    store = shared_dir / "store"
    with unprivileged():
        with pytest.raises(SystemExit, match=rf"^error: Teacher store {store} is not writable, and filling it writes"):
            precompute.main(["--teacher_store", str(store)])
    # train.py reads files `nobody` may not reach (its own path, under root's home here): the folder is made
    # unwritable for root too by answering the write probe as a read-only mount would
    monkeypatch.setattr(infosam_hf.teacher_store, "_writable", lambda folder: False)
    with pytest.raises(SystemExit, match=rf"^error: Teacher store {store} is not writable and holds no store"):
        train.run(["--teacher_store", str(store), "--output_dir", str(shared_dir / "out"), "--max_steps", "1"])


def test_the_size_bound_stops_writes_and_the_estimate_matches_the_files(tmp_path, caplog):
    entry = {"image_embeddings": torch.zeros(256, 4, 4)}
    per_image = estimate_bytes(1, (256, 4, 4))
    store = TeacherEmbeddingStore(tmp_path, "a" * 32, max_bytes=int(2.5 * per_image))
    with caplog.at_level(logging.WARNING):
        written = [store.put(f"{i:032x}", entry) for i in range(4)]
    assert written == [True, True, False, False]
    assert "max_bytes" in caplog.text and caplog.text.count("max_bytes") == 1
    assert store.disk_bytes() <= store.max_bytes
    assert abs(store.disk_bytes() / 2 - per_image) < 0.05 * per_image


def test_a_separate_teacher_is_stored_too(tmp_path):
    _, calls, store = run(tmp_path, "separate", tmp_path / "store", separate_teacher=True)
    assert calls == STEPS and store.writes == 12  # only the teacher's encoder is hooked here
    _, calls, store = run(tmp_path, "separate-again", tmp_path / "store", separate_teacher=True)
    assert calls == 0 and store.hits == 12


def test_config_validates_the_bound(tmp_path):
    with pytest.raises(ValueError, match="teacher_store_max_gb"):
        InfoSAMTrainingArguments(output_dir=str(tmp_path), report_to=[], teacher_store="x", teacher_store_max_gb=0)


def assert_store_holds_the_teachers_training_embeddings(store, model, data, processor, image_size=None):
    """What the Trainer would look up: batches of `data`'s training split from the training collator, each image's
    store entry equal to what the teacher (the student's base) computes for it."""
    from infosam_hf.data import SamSegmentationPreprocessor, load_segmentation_dataset, prepare_dataset

    prepared = prepare_dataset(load_segmentation_dataset(str(data), split="train", streaming=True),
                               SamSegmentationPreprocessor.from_processor(processor))
    batch = SamSegmentationCollator(PromptSampler(seed=0))(list(prepared))
    if image_size is not None:
        assert batch["pixel_values"].shape[-2:] == (image_size, image_size)
    with torch.no_grad():
        expected = model.student.get_base_model().get_image_embeddings(batch["pixel_values"])
    for pixels, embedding in zip(batch["pixel_values"], expected):
        entry = store.get(content_key(pixels))
        assert entry is not None, "the precomputed store misses a training image"
        torch.testing.assert_close(entry["image_embeddings"], embedding, rtol=1e-5, atol=1e-6)


@pytest.mark.slow
def test_precompute_script_fills_the_store_train_py_reads(tmp_path):
    """The script's keys are the training collator's keys, and its embeddings the training teacher's."""
    from transformers import SamProcessor

    from infosam_hf.builtin import BUILTIN_MODEL_PATH
    from infosam_hf.synthetic import write_synthetic_dataset

    script = load_example("precompute_teacher")

    data = write_synthetic_dataset(tmp_path / "data", "specialised", num_train=6, num_test=2, image_size=128, seed=3)
    store_dir = tmp_path / "store"
    summary = script.main(["--teacher_store", str(store_dir), "--dataset_name", str(data), "--batch_size", "4"])
    assert (summary["computed"], summary["entries"]) == (6, 6)
    again = script.main(["--teacher_store", str(store_dir), "--dataset_name", str(data)])
    assert (again["computed"], again["entries"]) == (0, 6), "a second precompute computes nothing"
    with pytest.raises(SystemExit, match="max_gb"):
        script.main(["--teacher_store", str(tmp_path / "small"), "--dataset_name", str(data), "--max_gb", "1e-6"])

    # What the Trainer would look up: a LoRA student over the same base, batches from the training collator.
    config = InfoSAMConfig()
    model = InfoSAMModel(build_student(SamModel.from_pretrained(BUILTIN_MODEL_PATH), config), config)
    store = TeacherEmbeddingStore.for_teacher(store_dir, model.teacher_image_encoder, model.sam_config)
    assert store.folder == type(store)(store_dir, store.fingerprint).folder and len(store) == 6
    processor = SamProcessor.from_pretrained(BUILTIN_MODEL_PATH)
    assert_store_holds_the_teachers_training_embeddings(store, model, data, processor)


@pytest.mark.slow
def test_precompute_at_another_image_size_fills_the_folder_training_at_that_size_reads(tmp_path):
    """--image_size as train.py's: the teacher and processor are adapted alike, so folder and keys agree."""
    from transformers import SamProcessor

    from infosam_hf.builtin import BUILTIN_MODEL_PATH
    from infosam_hf.resolution import adapt_model, adapt_processor
    from infosam_hf.synthetic import write_synthetic_dataset

    script = load_example("precompute_teacher")
    data = write_synthetic_dataset(tmp_path / "data", "specialised", num_train=3, num_test=1, image_size=128, seed=3)
    store_dir = tmp_path / "store"
    summary = script.main(["--teacher_store", str(store_dir), "--dataset_name", str(data), "--image_size", "64"])
    assert (summary["computed"], summary["entries"]) == (3, 3)

    config = InfoSAMConfig(image_size=64)
    base = adapt_model(SamModel.from_pretrained(BUILTIN_MODEL_PATH), 64)  # as train.py does for --image_size 64
    model = InfoSAMModel(build_student(base, config), config)
    store = TeacherEmbeddingStore.for_teacher(store_dir, model.teacher_image_encoder, model.sam_config)
    assert str(store.folder) == summary["folder"]
    processor = adapt_processor(SamProcessor.from_pretrained(BUILTIN_MODEL_PATH), 64)
    assert_store_holds_the_teachers_training_embeddings(store, model, data, processor, image_size=64)


@pytest.mark.parametrize("model_class", ["SamModel", "SamHQModel", "Sam2Model", "Sam3TrackerModel", "EdgeTamModel"])
def test_every_family_replays_its_encoding_from_disk_exactly(tmp_path, model_class):
    """SAM 2's feature levels and SAM-HQ's intermediate embeddings survive the flat safetensors entries."""
    from helpers import family_batch

    from infosam_hf.teacher_cache import TeacherEmbeddingCache
    from infosam_hf.testing import tiny_family_model

    torch.manual_seed(0)
    config = InfoSAMConfig(relation_dim=32)
    model = InfoSAMModel(build_student(tiny_family_model(model_class), config, PeftArguments(lora_r=2)), config).eval()
    batch = family_batch(model.student.get_base_model(), n=3)
    prompts = {"input_boxes": batch["input_boxes"]}
    expected = model._run_teacher(batch["pixel_values"], prompts, False)
    store = TeacherEmbeddingStore.for_teacher(tmp_path, model.teacher_image_encoder, model.sam_config)
    model.teacher_cache = TeacherEmbeddingCache(disk_store=store)
    model._run_teacher(batch["pixel_values"], prompts, False)  # computes and writes
    model.teacher_cache = TeacherEmbeddingCache(disk_store=store)  # a new run: memory empty
    calls = []
    handle = model.teacher_image_encoder.register_forward_hook(lambda *_: calls.append(1))
    replayed = model._run_teacher(batch["pixel_values"], prompts, False)
    handle.remove()
    assert calls == [] and store.hits == 3 and store.writes == 3
    for got, want in zip(replayed, expected):
        torch.testing.assert_close(got, want, rtol=0, atol=0)


@pytest.mark.slow
def test_checksum_benchmark_runs_and_its_ratio_is_the_quotient_of_its_figures():
    import os
    import subprocess
    import sys

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    command = [sys.executable, os.path.join(root, "benchmarks", "teacher_store_read.py"), "--shape", "8", "16",
               "--images", "4", "--rounds", "1"]
    out = subprocess.run(command, capture_output=True, text=True, cwd=root, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    lines = out.stdout.strip().splitlines()
    rows = [line.split() for line in lines]
    times = {row[0]: float(row[1]) for row in rows if row[0] in ("unverified", "verified")}
    ratio = float(lines[-1].removeprefix("verify_ratio="))
    assert ratio == pytest.approx(times["verified"] / times["unverified"], rel=0.02)


# --------------------------------------------------------------------------------- teacher store keys (issue 32 audit)
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
