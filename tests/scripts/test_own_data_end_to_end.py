"""The scripts and the Trainer on a user's own data, end to end: seeds, CPU DDP, the metrics frame, corrupt images,
mis-sized masks, a batch of one, paths and errors, defaults, warnings, and the docs for the first hour (the points
of issue 11, each kept fixed).

Data: a tiny reference CSV layout (train.csv / test.csv with image,label paths) of
non-square images, written per test, with a corrupt file or a mis-sized mask where a
test needs one. Model: the built-in tiny SAM (128 px) or `tiny_sam_config`.
"""

from __future__ import annotations

import copy
import os
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import PIL.Image
import pytest
import torch
from helpers import ROOT, load_example, write_csv_index
from transformers import SamModel, TrainingArguments

from infosam_hf import InfoSAMConfig, InfoSAMTrainer
from infosam_hf.builtin import BUILTIN_MODEL_PATH
from infosam_hf.data import (
    CorruptSampleLog,
    PromptSampler,
    SamSegmentationCollator,
    SamSegmentationPreprocessor,
    find_bad_samples,
    load_segmentation_dataset,
    prepare_dataset,
)
from infosam_hf.testing import tiny_sam_config, toy_segmentation_dataset

# ------------------------------------------------------------------------------------------ helpers


def _sample(rng, height, width):
    """A bright ellipse on a textured background; the mask is the ellipse."""
    yy, xx = np.mgrid[:height, :width]
    cy, cx = rng.uniform(0.35, 0.65) * height, rng.uniform(0.35, 0.65) * width
    ry, rx = rng.uniform(0.15, 0.3) * height, rng.uniform(0.15, 0.3) * width
    mask = ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1
    image = rng.integers(0, 90, size=(height, width, 3)).astype(np.uint8)
    image[mask] = np.clip(image[mask] + 140, 0, 255)
    return PIL.Image.fromarray(image), PIL.Image.fromarray((mask * 255).astype(np.uint8))


def write_csv_layout(root: Path, train_sizes, test_sizes, corrupt=(), mis_sized=(), seed=0) -> Path:
    """<root>/{train,test}.csv; `corrupt` / `mis_sized` name rows like "test-0" to break."""
    rng = np.random.default_rng(seed)
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "masks").mkdir(exist_ok=True)
    for split, sizes in (("train", train_sizes), ("test", test_sizes)):
        rows = []
        for i, (h, w) in enumerate(sizes):
            key = f"{split}-{i}"
            image, mask = _sample(rng, h, w)
            image_path, mask_path = f"images/{key}.png", f"masks/{key}.png"
            if key in corrupt:
                (root / image_path).write_bytes(b"not a png at all")
            else:
                image.save(root / image_path)
            if key in mis_sized:
                mask = mask.resize((w + 7, h + 3), PIL.Image.NEAREST)
            mask.save(root / mask_path)
            rows.append({"image": image_path, "label": mask_path})
        write_csv_index(root / f"{split}.csv", rows)
    return root


NON_SQUARE = [(96, 160), (150, 90), (70, 128), (128, 64), (100, 100), (60, 150)]


def tiny_args(tmp_path, **overrides):
    values = dict(output_dir=str(tmp_path / "run"), per_device_train_batch_size=2, max_steps=1, report_to=[],
                  use_cpu=True, save_strategy="no", seed=0, logging_steps=1, disable_tqdm=True)
    values.update(overrides)
    return TrainingArguments(**values)


def trainable_state(model):
    return {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}


def run_train_script(args, env_extra=None, cwd=ROOT, timeout=600):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
               HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1")
    env.pop("INFOSAM_DEBUG", None)
    env.update(env_extra or {})
    return subprocess.run([sys.executable, str(ROOT / "examples" / "train.py"), *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=timeout)


# ------------------------------------------------------------------------------------------ 1. --seed
def test_same_seed_builds_the_same_adapter_and_relation_module(tmp_path):
    base = SamModel(tiny_sam_config())
    built = []
    for noise in (1, 2):
        torch.manual_seed(noise)  # whatever the global RNG held before, the seed decides
        trainer = InfoSAMTrainer(model=copy.deepcopy(base), args=tiny_args(tmp_path, seed=7),
                                 train_dataset=toy_segmentation_dataset(2))
        built.append(trainable_state(trainer.model))
    assert any("lora_A" in n for n in built[0]) and any("relation_module" in n for n in built[0])
    for name in built[0]:
        assert torch.equal(built[0][name], built[1][name]), name


def test_load_for_training_builds_under_the_seed(tmp_path):
    from infosam_hf.loading import load_for_training

    trainer = InfoSAMTrainer(model=SamModel(tiny_sam_config()), args=tiny_args(tmp_path),
                             train_dataset=toy_segmentation_dataset(2))
    trainer.save_model(str(tmp_path / "adapter"))
    os.remove(tmp_path / "adapter" / "relation_module.safetensors")  # a fresh, random relation module
    modules = []
    for noise in (1, 2):
        torch.manual_seed(noise)
        model = load_for_training(tmp_path / "adapter", base_model=SamModel(tiny_sam_config()),
                                  require_relation_module=False, seed=3)
        modules.append(model.relation_module.state_dict())
    for name in modules[0]:
        assert torch.equal(modules[0][name], modules[1][name]), name


@pytest.mark.slow
def test_two_train_script_runs_with_one_seed_write_identical_files(tmp_path):
    # Bad samples on the way (points 4 and 5): a corrupt image among the first --eval_overlays test rows and a
    # mis-sized mask in the training stream are skipped, and the run ends with the list.
    data = write_csv_layout(tmp_path / "data", [(64, 96)] * 3, [(64, 96)] * 3, corrupt={"test-0"},
                            mis_sized={"train-1"})  # 2 steps of 2 read the whole 3-row stream
    outputs = []
    for run in ("a", "b"):
        out = tmp_path / run
        proc = run_train_script(["--dataset_name", str(data), "--output_dir", str(out), "--max_steps", "2",
                                 "--learning_rate", "0", "--per_device_train_batch_size", "2", "--eval_overlays", "2",
                                 "--disable_tqdm", "true", "--seed", "5", "--streaming", "true"])
        assert proc.returncode == 0, proc.stderr[-3000:]
        outputs.append(out)
    for name in ("adapter_model.safetensors", "relation_module.safetensors"):
        assert (outputs[0] / name).read_bytes() == (outputs[1] / name).read_bytes(), name
    summary = [line for line in proc.stdout.splitlines() if line.startswith("Skipped ")]
    assert len(summary) == 1 and "2 corrupt sample(s)" in summary[0], proc.stdout
    assert "test-0.png" in summary[0] and "train-1.png" in summary[0]
    assert "Schedule: 2 optimiser steps x 2 images (1 process(es)" in proc.stdout, proc.stdout
    card = (outputs[1] / "README.md").read_text()
    assert "epochs trained" not in card  # a stream of unknown size: no made-up epoch count
    assert "| Steps with L_r and L_d active | 2 of 2 optimiser steps |" in card


# ------------------------------------------------------------------------------------------ 2. DDP on the CPU
def test_a_process_group_the_trainer_does_not_use_is_refused(tmp_path, monkeypatch):
    import infosam_hf.trainer as trainer_module

    args = tiny_args(tmp_path)
    assert args.world_size == 1
    monkeypatch.setattr(trainer_module.dist, "is_initialized", lambda: True)
    monkeypatch.setattr(trainer_module.dist, "get_world_size", lambda group=None: 2)
    with pytest.raises(RuntimeError, match="not distributed.*--use_cpu"):
        InfoSAMTrainer(model=SamModel(tiny_sam_config()), args=args, train_dataset=toy_segmentation_dataset(2))


@pytest.mark.skipif(torch.cuda.is_available(), reason="the CPU launch path")
def test_train_script_asks_for_cpu_ddp_under_a_launcher(monkeypatch):
    from infosam_hf.run_setup import use_cpu_under_a_launcher_without_gpu

    monkeypatch.delenv("ACCELERATE_USE_CPU", raising=False)
    monkeypatch.setenv("WORLD_SIZE", "1")
    use_cpu_under_a_launcher_without_gpu()
    assert "ACCELERATE_USE_CPU" not in os.environ  # a plain single-process run is left alone
    monkeypatch.setenv("WORLD_SIZE", "2")
    use_cpu_under_a_launcher_without_gpu()
    assert os.environ["ACCELERATE_USE_CPU"] == "true"


def test_cpu_accelerate_config_documents_the_command_without_env_var():
    text = (ROOT / "examples" / "accelerate_configs" / "cpu.yaml").read_text()
    assert "\n#   accelerate launch --config_file examples/accelerate_configs/cpu.yaml examples/train.py\n" in text


@pytest.mark.slow
def test_cpu_accelerate_config_starts_one_two_process_run(tmp_path):
    data = write_csv_layout(tmp_path / "data", [(64, 96)] * 8, [(64, 96)] * 2)
    env = dict(os.environ, PYTHONPATH=str(ROOT), HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1", HF_HOME=str(tmp_path / "hf"))
    for key in ("ACCELERATE_USE_CPU", "WORLD_SIZE", "RANK", "LOCAL_RANK", "ACCELERATE_CONFIG_FILE"):
        env.pop(key, None)
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    cmd = [sys.executable, "-m", "accelerate.commands.accelerate_cli", "launch", "--config_file",
           str(ROOT / "examples" / "accelerate_configs" / "cpu.yaml"), "--main_process_port", str(port),
           str(ROOT / "examples" / "train.py"), "--dataset_name", str(data), "--output_dir", str(tmp_path / "out"),
           "--max_steps", "2", "--per_device_train_batch_size", "2", "--eval_overlays", "0",
           "--max_eval_samples", "2", "--disable_tqdm", "true"]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert proc.stdout.count("IoU before") == 1, proc.stdout  # one run, reported by rank 0
    assert "2 process(es)" in proc.stdout, proc.stdout


# ------------------------------------------------------------------------------------------ 3. metrics frame
def test_trainer_evaluation_equals_evaluate_script_on_non_square_images(tmp_path):
    data = write_csv_layout(tmp_path / "data", [(64, 64)] * 2, NON_SQUARE)
    model = SamModel.from_pretrained(BUILTIN_MODEL_PATH)
    from transformers import SamProcessor

    from infosam_hf.metrics import build_compute_metrics

    processor = SamProcessor.from_pretrained(BUILTIN_MODEL_PATH)
    preprocessor = SamSegmentationPreprocessor.from_processor(processor)
    raw = load_segmentation_dataset(str(data), split="test", streaming=False)
    eval_collator = SamSegmentationCollator(PromptSampler(box_probability=1.0, box_noise=0.0, seed=0), "box")
    trainer = InfoSAMTrainer(
        model=model, args=tiny_args(tmp_path, per_device_eval_batch_size=4),
        eval_dataset=prepare_dataset(raw, preprocessor, keep_original_mask=True),
        eval_data_collator=eval_collator, processing_class=processor, compute_metrics=build_compute_metrics(),
    )
    trainer.save_model(str(tmp_path / "adapter"))
    ours = trainer.evaluate()
    reference = load_example("evaluate_adapter").main(
        ["--adapter", str(tmp_path / "adapter"), "--dataset_name", str(data), "--split", "test",
         "--compare_base", "false", "--disable_tqdm", "true", "--batch_size", "4"]
    )["metrics"]["adapter"]
    for key in ("iou", "dice", "iou@0.5", "dice@0.5"):
        assert ours[f"eval_{key}"] == pytest.approx(reference[key], abs=1e-6), key
    # the padded model frame (the old definition) gives other numbers on these images
    padded = InfoSAMTrainer(
        model=trainer.model, args=tiny_args(tmp_path, per_device_eval_batch_size=4),
        eval_dataset=prepare_dataset(raw, preprocessor), eval_data_collator=eval_collator,
        compute_metrics=build_compute_metrics(),
    ).evaluate()
    assert abs(padded["eval_iou"] - reference["iou"]) > 1e-4


def test_packed_maps_survive_padding_and_concatenation():
    from transformers.trainer_pt_utils import nested_concat

    from infosam_hf.packing import pack_maps, unpack_maps

    a = [np.arange(6, dtype=np.float32).reshape(2, 3)]
    b = [np.ones((4, 5), np.float32), np.zeros((1, 1), np.float32)]
    joined = nested_concat(pack_maps(a), pack_maps(b), padding_index=-100)
    back = unpack_maps(joined)
    assert [m.shape for m in back] == [(2, 3), (4, 5), (1, 1)]
    np.testing.assert_array_equal(back[0], a[0])
    np.testing.assert_array_equal(back[1], b[0])


# ------------------------------------------------------------------------------------------ 4. corrupt images
def test_overlay_callback_skips_a_corrupt_image_and_names_it(tmp_path):
    from infosam_hf.callbacks import EvalOverlayCallback

    data = write_csv_layout(tmp_path / "data", [(64, 64)] * 2, [(64, 80)] * 4, corrupt={"test-0"})
    raw = load_segmentation_dataset(str(data), split="test", streaming=False)
    log = CorruptSampleLog()
    callback = EvalOverlayCallback(raw, num_samples=2, corrupt_log=log)
    assert len(callback.samples) == 2  # the next good rows replace the bad one
    assert log.count == 1 and log.skipped[0].endswith("test-0.png")


def test_evaluate_script_skips_and_reports_a_corrupt_image(tmp_path, capsys):
    data = write_csv_layout(tmp_path / "data", [(64, 64)] * 2, [(64, 80)] * 3, corrupt={"test-1"})
    result = load_example("evaluate_adapter").main(
        ["--model_name_or_path", BUILTIN_MODEL_PATH, "--dataset_name", str(data),
         "--disable_tqdm", "true"])
    assert result["num_images"] == 2
    assert [Path(p).name for p in result["skipped_samples"]] == ["test-1.png"]
    assert "Skipped 1 corrupt sample(s)" in capsys.readouterr().out


def test_predict_script_skips_a_corrupt_image(tmp_path, capsys):
    data = write_csv_layout(tmp_path / "data", [], [(64, 80)] * 2, corrupt={"test-0"})
    results = load_example("predict").main(["--model_name_or_path", BUILTIN_MODEL_PATH, "--images",
                                           str(data / "images"), "--box", "10", "10", "50", "40",
                                           "--output_dir", str(tmp_path / "pred")])
    assert [Path(r["image"]).name for r in results] == ["test-1.png"]
    assert "test-0.png" in capsys.readouterr().out


# ------------------------------------------------------------------------------------------ 5. mask size
def test_a_mis_sized_mask_in_a_stream_is_skipped_counted_and_named(tmp_path):
    data = write_csv_layout(tmp_path / "data", [(64, 96)] * 4, [(64, 96)], mis_sized={"train-2"})
    stream = load_segmentation_dataset(str(data), split="train", streaming=True)
    prepared = prepare_dataset(stream, SamSegmentationPreprocessor(image_size=64))
    rows = list(prepared)
    assert len(rows) == 3
    assert prepared.corrupt_log.count == 1 and "train-2.png" in prepared.corrupt_log.skipped[0]


def test_validate_data_lists_every_bad_sample_and_exits_non_zero(tmp_path, capsys):
    data = write_csv_layout(tmp_path / "data", [(64, 96)] * 3, [(64, 96)] * 2, corrupt={"test-1"},
                            mis_sized={"train-0"})
    problems = find_bad_samples(load_segmentation_dataset(str(data), split="train", streaming=True))
    assert len(problems) == 1 and "train-0.png" in problems[0] and "96x64" in problems[0] and "103x67" in problems[0]
    with pytest.raises(SystemExit) as exit_info:
        load_example("train").main(["--dataset_name", str(data), "--validate_data", "true",
                                   "--output_dir", str(tmp_path / "out")])
    assert exit_info.value.code not in (0, None)
    out = capsys.readouterr().out
    assert "train-0.png" in out and "test-1.png" in out


# ------------------------------------------------------------------------------------------ 6. batch of one
def test_a_per_device_batch_of_one_without_gathering_is_refused(tmp_path):
    data = toy_segmentation_dataset(2)
    with pytest.raises(ValueError, match="per_device_train_batch_size=1.*lambda_1"):
        InfoSAMTrainer(model=SamModel(tiny_sam_config()), args=tiny_args(tmp_path, per_device_train_batch_size=1),
                       train_dataset=data)
    # segmentation only: a batch of one is fine
    InfoSAMTrainer(model=SamModel(tiny_sam_config()), args=tiny_args(tmp_path, per_device_train_batch_size=1),
                   infosam_config=InfoSAMConfig(lambda_1=0.0, lambda_2=0.0), train_dataset=data)


def test_a_last_batch_of_one_is_dropped_and_active_steps_are_counted(tmp_path):
    trainer = InfoSAMTrainer(model=SamModel(tiny_sam_config()), args=tiny_args(tmp_path, max_steps=-1,
                             num_train_epochs=1), train_dataset=toy_segmentation_dataset(5),
                             data_collator=SamSegmentationCollator())
    assert len(trainer.get_train_dataloader()) == 2  # 2 + 2, the lone fifth image dropped
    trainer.train()
    assert trainer.state.global_step == 2 and trainer.infosam_active_steps == 2
    trainer.save_model()
    card = (Path(trainer.args.output_dir) / "README.md").read_text()
    assert "| Steps with L_r and L_d active | 2 of 2 optimiser steps |" in card


def test_a_streamed_batch_of_one_is_skipped_not_trained_without_the_infosam_terms(tmp_path):
    trainer = InfoSAMTrainer(model=SamModel(tiny_sam_config()), args=tiny_args(tmp_path),
                             train_dataset=toy_segmentation_dataset(2))
    before = trainable_state(trainer.model)
    from infosam_hf.testing import toy_batch

    batch = toy_batch(1)
    trainer.create_optimizer_and_scheduler(num_training_steps=1)
    loss = trainer.training_step(trainer.model, batch)
    assert float(loss) == 0.0 and trainer.dropped_batches_of_one == 1
    assert all(p.grad is None for p in trainer.model.parameters())
    after = trainable_state(trainer.model)
    assert all(torch.equal(before[n], after[n]) for n in before)


# ------------------------------------------------------------------------------------------ 7. paths and errors
def test_missing_local_looking_paths_fail_at_once_naming_them(tmp_path, monkeypatch):
    train = load_example("train")
    (tmp_path / "data").mkdir()
    monkeypatch.chdir(tmp_path)
    with pytest.raises(FileNotFoundError, match="--dataset_name 'data/polyp' not found"):
        train.main(["--dataset_name", "data/polyp", "--output_dir", str(tmp_path / "out")])
    with pytest.raises(FileNotFoundError, match="--model_name_or_path '/no/such/sam' not found"):
        train.main(["--model_name_or_path", "/no/such/sam", "--output_dir", str(tmp_path / "out")])


def test_train_script_prints_one_error_line_and_the_traceback_on_request(tmp_path):
    args = ["--model_name_or_path", "./no-such-sam", "--output_dir", str(tmp_path / "out")]
    proc = run_train_script(args, cwd=tmp_path)
    assert proc.returncode != 0
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "./no-such-sam" in errors[0] and "Traceback" not in proc.stderr
    debug = run_train_script(args, env_extra={"INFOSAM_DEBUG": "1"}, cwd=tmp_path)
    assert debug.returncode != 0 and "Traceback" in debug.stderr


# ------------------------------------------------------------------------------------------ 9. defaults
def test_builtin_schedule_scales_with_a_short_custom_run():
    from transformers import HfArgumentParser

    from infosam_hf.data.arguments import DataArguments
    from infosam_hf.script_arguments import BUILTIN_DEFAULTS, ModelArguments

    parser = HfArgumentParser((ModelArguments, DataArguments, InfoSAMConfig, TrainingArguments))
    args = parser.parse_args_into_dataclasses(args=BUILTIN_DEFAULTS + ["--max_steps", "4", "--use_cpu"])[-1]
    assert 1 <= args.get_warmup_steps(4) < 4  # the learning rate reaches its value
    assert args.logging_steps < 1 and np.ceil(4 * args.logging_steps) <= 4  # a loss line within the run
    builtin = parser.parse_args_into_dataclasses(args=BUILTIN_DEFAULTS + ["--use_cpu"])[-1]
    assert builtin.get_warmup_steps(300) == 10 and np.ceil(300 * builtin.logging_steps) == 25  # as before


def test_replicas_stay_quiet():
    import logging

    from infosam_hf.run_setup import quiet_replicas

    class Replica:
        process_index = 1

    logger = logging.getLogger("infosam_hf")
    level = logger.level
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            quiet_replicas(Replica())
            warnings.warn("printed by every rank", UserWarning)
        assert not caught and logger.level == logging.ERROR
    finally:
        logger.setLevel(level)
        import transformers

        transformers.logging.set_verbosity_warning()


def test_card_explains_negative_loss_and_omits_unknown_epochs(tmp_path):
    from infosam_hf.model_card import hyperparameters_of

    class State:
        global_step, epoch = 6, 3.0

    rows = dict(hyperparameters_of(tiny_args(tmp_path), State(), epochs_trained=None))
    assert "epochs trained" not in rows and rows["steps trained"] == "6"
    trainer = InfoSAMTrainer(model=SamModel(tiny_sam_config()), args=tiny_args(tmp_path),
                             train_dataset=toy_segmentation_dataset(2))
    trainer.save_model()
    assert "may be negative" in (Path(trainer.args.output_dir) / "README.md").read_text()


# ------------------------------------------------------------------------------------------ 10. warnings
def test_training_on_cpu_triggers_none_of_our_warnings(tmp_path):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer = InfoSAMTrainer(model=SamModel(tiny_sam_config()), args=tiny_args(tmp_path, max_steps=1),
                                 train_dataset=toy_segmentation_dataset(2), data_collator=SamSegmentationCollator())
        trainer.train()
    messages = [str(w.message) for w in caught]
    assert not [m for m in messages if "is_gradient_checkpointing" in m or "pin_memory" in m], messages


def test_gather_with_grad_warns_not_and_sums_gradients(tmp_path):
    import torch.distributed as dist

    from infosam_hf.trainer import _gather_with_grad

    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'pg'}", rank=0, world_size=1)
    try:
        x = torch.randn(3, 4, requires_grad=True)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            gathered = _gather_with_grad(x)
            (gathered * 2).sum().backward()
        assert not [w for w in caught if issubclass(w.category, FutureWarning)], [str(w.message) for w in caught]
        assert torch.equal(gathered, x) and torch.equal(x.grad, torch.full_like(x, 2.0))
    finally:
        dist.destroy_process_group()


# ------------------------------------------------------------------------------------------ 8. README and overlays
def test_readme_covers_the_first_hour():
    readme = (ROOT / "README.md").read_text()
    first_hour, deploy = ((ROOT / "docs" / name).read_text() for name in ("first-hour.md", "deploy.md"))
    for needle in ("--mask_column mask", "metadata.jsonl", "train.csv", ".parquet", ".tar", "BUILTIN_MODEL_PATH",
                   "builtin_dataset_path", "bf16=torch.cuda.is_available()", "step-0-zero_shot", "can be negative",
                   "--validate_data", "(docs/first-hour.md)"):
        assert needle in readme, needle
    for needle in ("--mask_column mask", "metadata.jsonl", "train.csv", ".parquet", ".tar", "BUILTIN_MODEL_PATH",
                   "builtin_dataset_path", "step-0-zero_shot", "legend", "can be negative", "--validate_data"):
        assert needle in first_hour, needle
    assert "trainer.model.push_to_hub" in deploy
    for text in (readme, first_hour, deploy):
        assert "\nmodel.push_to_hub(" not in text  # `model` was undefined in that snippet


def test_overlay_grid_has_a_legend_of_its_colours(tmp_path):
    from infosam_hf.callbacks import with_legend
    from infosam_hf.visualization import BOX_COLOR, GT_COLOR, MASK_COLOR

    plain = PIL.Image.new("RGB", (80, 40), (0, 0, 0))
    legend = with_legend(plain, {"box": True})
    assert legend.width == 80 and legend.height > 40
    colours = {tuple(c) for c in np.asarray(legend)[40:].reshape(-1, 3)}
    assert {tuple(MASK_COLOR), tuple(GT_COLOR), tuple(BOX_COLOR)} <= colours
