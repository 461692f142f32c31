"""examples/train.py end to end on the built-in tiny SAM (and SAM 2: `--builtin_model sam2`) and a small synthetic set."""

import importlib.util
import json
import os
import re
import sys

import pytest
from helpers import ROOT, load_example
from huggingface_hub import ModelCard

from infosam_hf.builtin import BUILTIN_MODEL_PATH, BUILTIN_SAM2_PATH
from infosam_hf.synthetic import write_synthetic_dataset


@pytest.mark.slow
def test_train_script_runs_streams_and_saves_the_adapter(tmp_path):
    assert os.path.isfile(os.path.join(BUILTIN_MODEL_PATH, "model.safetensors")), "built-in weights are missing"
    data = write_synthetic_dataset(tmp_path / "data", "specialised", num_train=32, num_test=8, image_size=128, seed=1)
    out = tmp_path / "run"
    summary = load_example("train").main(
        ["--dataset_name", str(data), "--output_dir", str(out), "--max_steps", "6", "--per_device_train_batch_size", "4",
         "--logging_steps", "2", "--disable_tqdm", "true", "--lora_r", "4"]
    )
    for key in ("zero_shot_iou", "iou", "zero_shot_dice", "dice"):
        assert 0.0 <= summary[key] <= 1.0
    # The scores the run reports are what examples/evaluate_adapter.py measures on the saved adapter, same split
    # and box prompts (two code paths: the Trainer's compute_metrics on batches, the script at the original size).
    evaluated = load_example("evaluate_adapter").main(
        ["--adapter", str(out), "--dataset_name", str(data), "--disable_tqdm",
         "true", "--batch_size", "3"])
    assert evaluated["num_images"] == 8
    for prefix, row in (("zero_shot_", "zero_shot"), ("", "adapter")):
        for key in ("iou", "dice"):
            assert summary[prefix + key] == pytest.approx(evaluated["metrics"][row][key], abs=1e-6), (prefix, key)
    assert summary["iou"] != summary["zero_shot_iou"]  # six steps did change the masks
    files = set(os.listdir(out))
    assert {"adapter_model.safetensors", "adapter_config.json", "relation_module.safetensors",
            "infosam_config.json", "processor_config.json"} <= files
    assert not any(f.endswith((".bin", ".pt", ".pth", ".pkl")) for f in files)
    assert json.loads((out / "adapter_config.json").read_text())["r"] == 4  # --lora_r, in the adapter's PEFT config
    assert json.loads((out / "iou_before_after.json").read_text())["iou"] == summary["iou"]

    # overlays of the same 4 evaluation images, zero-shot and after training
    assert sorted(os.listdir(out / "eval_overlays")) == ["step-0-zero_shot", "step-6"]
    overlays = sorted(os.listdir(out / "eval_overlays" / "step-6"))
    assert overlays == ["grid.png"] + [f"sample-{i:02d}.png" for i in range(4)] + ["scores.json"]

    card = ModelCard.load(out / "README.md")  # the run's card, written beside the adapter
    assert card.data.library_name == "peft" and card.data.pipeline_tag == "mask-generation"
    assert card.data.datasets is None  # a local folder is no Hub dataset id
    results = {r.metric_type: r.metric_value for r in card.data.eval_results}
    assert results["iou"] == pytest.approx(summary["iou"]) and results["dice"] == pytest.approx(summary["dice"])
    assert f"| iou | {summary['iou']:.6g} | {summary['zero_shot_iou']:.6g} |" in card.text  # adapter vs zero-shot
    assert re.search(r"^\| loss \| [-0-9.e]+ \| – \|$", card.text, flags=re.M)  # the base never trained a relation
    for value in ("LoRA rank r | 4", "training_steps | 6", "local data `data`", "sam-tiny-general`, the tiny SAM"):
        assert value in card.text, value
    assert "None" not in card.text and "{{" not in card.text
    # the file table describes what sits beside the card, folders as one entry
    assert "| `eval_overlays/` | the same few evaluation images" in card.text
    assert "| `iou_before_after.json` | IoU and Dice" in card.text and "step-6" not in card.text
    assert not re.search(r"^\| `[^`]+` \| *\|$", card.text, flags=re.M), "a file without a description"


def test_train_script_needs_max_steps_when_streaming(tmp_path):
    with pytest.raises(SystemExit, match="max_steps"):
        load_example("train").main(["--output_dir", str(tmp_path), "--max_steps", "-1", "--streaming", "true"])


def test_paper_recipe_command(tmp_path, capsys, monkeypatch):

    (tmp_path / "train.csv").write_text("image,label\n")
    (tmp_path / "test.csv").write_text("image,label\n")
    spec = importlib.util.spec_from_file_location("paper", os.path.join(ROOT, "benchmarks", "paper.py"))
    paper = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = paper  # dataclasses resolve their module by name
    spec.loader.exec_module(paper)
    monkeypatch.setattr(sys, "argv", ["paper.py", "--dataset", "road", "--data_root", str(tmp_path), "--print_only"])
    paper.main()
    command = capsys.readouterr().out
    assert "--num_train_epochs 20" in command and "--eval_prompt points --eval_num_points 5" in command
    assert "--learning_rate 2e-4" in command and "min_lr_rate" in command
    monkeypatch.setattr(sys, "argv", ["paper.py", "--dataset", "polyp", "--data_root", str(tmp_path / "nope")])
    with pytest.raises(SystemExit, match="train.csv"):
        paper.main()


def saved_builtin_adapter(folder):
    from transformers import SamModel, SamProcessor

    from infosam_hf import InfoSAMConfig, InfoSAMModel, PeftArguments, build_student

    config = InfoSAMConfig()
    model = InfoSAMModel(build_student(SamModel.from_pretrained(BUILTIN_MODEL_PATH), config, PeftArguments(lora_r=4)),
                         config)
    model.save_pretrained(folder, processor=SamProcessor.from_pretrained(BUILTIN_MODEL_PATH))
    return folder


def test_resume_adapter_takes_the_method_flags_of_the_command_line(tmp_path, caplog):
    adapter = saved_builtin_adapter(tmp_path / "adapter")
    data = write_synthetic_dataset(tmp_path / "data", "specialised", num_train=4, num_test=2, image_size=128, seed=1)
    common = ["--resume_adapter", str(adapter), "--dataset_name", str(data), "--max_steps", "1",
              "--per_device_train_batch_size", "2", "--eval_overlays", "0", "--max_eval_samples", "2",
              "--disable_tqdm", "true"]
    with caplog.at_level("INFO"):
        load_example("train").main([*common, "--output_dir", str(tmp_path / "run"), "--lambda-2", "0.7",
                                   "--teacher_dtype", "bfloat16", "--lora_r", "4"])  # --lora_r as saved: allowed
    saved = json.loads((tmp_path / "run" / "infosam_config.json").read_text())
    assert (saved["lambda_2"], saved["lambda_1"]) == (0.7, 1.0)
    assert "teacher_dtype" not in saved and "lora_r" not in saved  # run-local / the adapter's PEFT config
    assert json.loads((tmp_path / "run" / "adapter_config.json").read_text())["r"] == 4
    assert "the command line replaces the adapter's saved --lambda_2 0.5 -> 0.7." in caplog.text

    with pytest.raises(ValueError, match=r"--lora_r 16 \(the adapter has 4\).*cannot change"):
        load_example("train").main([*common, "--output_dir", str(tmp_path / "bad"), "--lora_r", "16"])
    with pytest.raises(ValueError, match=r"--peft_method 'adapter' \(the adapter has 'lora'\).*cannot change"):
        load_example("train").main([*common, "--output_dir", str(tmp_path / "bad"), "--peft_method", "adapter"])


def test_an_output_dir_holding_a_run_is_refused_and_kept(tmp_path):
    from transformers import TrainingArguments

    from infosam_hf.run_setup import claim_output_dir

    out = tmp_path / "run"
    (out / "eval_overlays" / "step-300").mkdir(parents=True)
    (out / "adapter_model.safetensors").write_bytes(b"the main job's adapter")
    (out / "notes.txt").write_text("mine")
    args = TrainingArguments(output_dir=str(out), report_to=[])
    with pytest.raises(FileExistsError, match=r"already holds a run \(adapter_model.safetensors, eval_overlays\)"
                                              r".*--overwrite_output_dir"):
        claim_output_dir(args, overwrite=False)
    assert (out / "adapter_model.safetensors").read_bytes() == b"the main job's adapter"
    assert (out / "eval_overlays" / "step-300").is_dir()
    claim_output_dir(TrainingArguments(output_dir=str(out), report_to=[],
                                       resume_from_checkpoint=str(out / "checkpoint-2")), overwrite=False)
    claim_output_dir(args, overwrite=True)  # the old run's overlays go; what is not a run's stays
    assert not (out / "eval_overlays").exists() and (out / "notes.txt").read_text() == "mine"
    only_mine = tmp_path / "mine"
    only_mine.mkdir()
    (only_mine / "notes.txt").write_text("mine")
    claim_output_dir(TrainingArguments(output_dir=str(only_mine), report_to=[]), overwrite=False)


@pytest.mark.slow
def test_a_second_run_into_the_same_folder_needs_overwrite_and_then_leaves_only_its_own_overlays(tmp_path):
    data = write_synthetic_dataset(tmp_path / "data", "specialised", num_train=4, num_test=2, image_size=128, seed=1)
    out = tmp_path / "run"
    common = ["--dataset_name", str(data), "--output_dir", str(out), "--per_device_train_batch_size", "2",
              "--max_eval_samples", "2", "--eval_overlays", "1", "--disable_tqdm", "true"]
    load_example("train").main([*common, "--max_steps", "2"])
    adapter = (out / "adapter_model.safetensors").read_bytes()
    with pytest.raises(SystemExit, match="error: --output_dir .* already holds a run"):
        load_example("train").run([*common, "--max_steps", "1"])
    assert (out / "adapter_model.safetensors").read_bytes() == adapter
    load_example("train").main([*common, "--max_steps", "1", "--overwrite_output_dir"])
    assert sorted(os.listdir(out / "eval_overlays")) == ["step-0-zero_shot", "step-1"]
    assert "| training_steps | 1 |" in (out / "README.md").read_text()


def test_train_script_builtin_model_flag(tmp_path, monkeypatch):
    import infosam_hf.builtin

    train = load_example("train")
    from infosam_hf.script_arguments import builtin_defaults

    assert builtin_defaults("sam2")[:2] == ["--output_dir", os.path.join("outputs", "infosam-builtin-sam2")]
    with pytest.raises(SystemExit, match="both name the model"):
        train.main(["--builtin_model", "sam2", "--model_name_or_path", str(tmp_path), "--output_dir", str(tmp_path)])
    monkeypatch.setitem(infosam_hf.builtin.BUILTIN_MODELS, "sam2", str(tmp_path / "absent"))
    with pytest.raises(SystemExit, match="pretrain_builtin_sam2.py"):
        train.main(["--builtin_model", "sam2", "--output_dir", str(tmp_path)])


@pytest.mark.slow
def test_train_script_runs_the_builtin_sam2_path(tmp_path):
    """`--builtin_model sam2` end to end on the shipped built-in SAM 2 (README), then loaded back in one call."""
    import infosam_hf

    data = write_synthetic_dataset(tmp_path / "data", "specialised", num_train=8, num_test=4, image_size=128, seed=1)
    out = tmp_path / "run"
    summary = load_example("train").main(
        ["--builtin_model", "sam2", "--dataset_name", str(data), "--output_dir", str(out), "--max_steps", "2",
         "--per_device_train_batch_size", "2", "--eval_overlays", "0", "--disable_tqdm", "true", "--lora_r", "2"]
    )
    # the shipped model follows boxes on the specialised domain too: far above a prompt-blind model (~0.2)
    assert summary["zero_shot_iou"] > 0.5 and 0.0 <= summary["iou"] <= 1.0
    adapter = json.loads((out / "adapter_config.json").read_text())
    assert adapter["base_model_name_or_path"] == BUILTIN_SAM2_PATH
    processor = json.loads((out / "preprocessor_config.json").read_text())
    assert processor["size"] == {"height": 128, "width": 128} and not processor["do_pad"]  # SAM 2's geometry
    card = (out / "README.md").read_text()
    assert "Sam2Model.from_pretrained(" in card and "the tiny SAM 2 built into" in card
    model, _ = infosam_hf.load(str(out))
    assert type(model.get_base_model()).__name__ == "Sam2Model"
