"""The configuration split as trl splits it: the method (InfoSAMConfig, saved with the adapter), the adapter's PEFT
choices (PeftArguments) and the run-local settings (InfoSAMTrainingArguments), with nothing machine-local saved."""

import dataclasses
import json
import os

import pytest
import torch
from peft import LoraConfig
from transformers import SamModel, TrainingArguments

from infosam_hf import (
    InfoSAMConfig,
    InfoSAMModel,
    InfoSAMTrainer,
    InfoSAMTrainingArguments,
    PeftArguments,
    build_student,
    default_peft_config,
)
from infosam_hf.config import MOVED_FIELDS, RUN_LOCAL_FIELDS
from infosam_hf.models import family_of
from infosam_hf.selection import SELECTION_FIELDS
from infosam_hf.testing import tiny_family_model, tiny_sam_config, toy_segmentation_dataset
from infosam_hf.training_args import run_setting
from infosam_hf.tuners import BottleneckAdapterConfig

# Every InfoSAM flag of examples/train.py before the split (main @ 830eced), by name.
FLAGS_BEFORE_THE_SPLIT = {
    "lambda_1", "lambda_2", "relation_dim", "train_relation_module", "seg_loss", "structure_loss_weighted_bce",
    "box_prompt_probability", "num_points", "box_noise", "max_box_noise", "box_jitter", "multimask_output", "lora_r",
    "lora_alpha", "lora_dropout", "lora_target_modules", "modules_to_save", "peft_method", "adapter_ratio",
    "adapter_placement", "adapter_scaling", "adapter_layers", "adapter_train_layernorms", "adapter_target_modules",
    "teacher_model_name_or_path", "gather_across_processes", "cache_teacher_embeddings", "teacher_cache_max_gb",
    "teacher_cache_dtype", "teacher_dtype", "teacher_store", "teacher_store_max_gb", "image_size",
    "allow_image_upscaling",
}


def names(cls) -> set[str]:
    return {f.name for f in dataclasses.fields(cls)}


def test_the_three_dataclasses_hold_disjoint_fields_that_cover_every_flag():
    method, peft = names(InfoSAMConfig), names(PeftArguments)
    run = names(InfoSAMTrainingArguments) - names(TrainingArguments)
    assert not (method & peft) and not (method & run) and not (peft & run)
    selection = set(SELECTION_FIELDS)  # new since the split (issue 30): never InfoSAMConfig's, so never "moved"
    assert method | peft | run == FLAGS_BEFORE_THE_SPLIT | selection
    assert run == set(RUN_LOCAL_FIELDS) | selection and set(MOVED_FIELDS) == peft | (run - selection)
    assert not (names(TrainingArguments) & (method | peft))  # one HfArgumentParser takes them all


def test_the_train_script_help_renders_every_flag():
    """argparse formats each help string with %: a bare '%' in one (it was "25% of the memory") broke --help."""
    from infosam_hf.cli import ScriptArgumentParser
    from infosam_hf.data.arguments import DataArguments
    from infosam_hf.script_arguments import ModelArguments, OutputArguments

    parser = ScriptArgumentParser(
        (ModelArguments, DataArguments, InfoSAMConfig, PeftArguments, OutputArguments, InfoSAMTrainingArguments)
    )
    text = parser.format_help()
    assert "--best_model_metric" in text and "--max_retention_drop" in text and "--teacher_cache_max_gb" in text


def test_every_flag_keeps_its_name_and_value_on_the_train_script_parser():
    from infosam_hf.cli import ScriptArgumentParser

    parser = ScriptArgumentParser((InfoSAMConfig, PeftArguments, InfoSAMTrainingArguments))
    config, peft, args = parser.parse_args_into_dataclasses(
        ["--output_dir", "out", "--report_to", "none", "--lambda_2", "0.7", "--lora_r", "4", "--peft_method",
         "adapter", "--adapter_layers", "2-11", "--teacher_store", "stores/x", "--teacher_dtype", "bfloat16",
         "--cache_teacher_embeddings", "false", "--gather_across_processes", "false", "--image_size", "64"]
    )
    assert (config.lambda_2, config.image_size) == (0.7, 64)
    assert (peft.lora_r, peft.peft_method, peft.adapter_layer_indices()) == (4, "adapter", list(range(2, 12)))
    assert (args.teacher_store, args.teacher_dtype, args.cache_teacher_embeddings) == ("stores/x", "bfloat16", False)
    assert args.gather_across_processes is False


@pytest.mark.parametrize("model_class", ["SamModel", "Sam2Model", "Sam3TrackerModel"])
def test_get_peft_config_gives_the_old_default_lora_and_adapter(model_class):
    family = family_of(tiny_family_model(model_class))
    # main @ 830eced's modeling.default_peft_config(InfoSAMConfig(), family), written out
    lora = PeftArguments().get_peft_config(family)
    expected = LoraConfig(r=8, lora_alpha=16, lora_dropout=0.0, target_modules=family.lora_targets("encoder"),
                          modules_to_save=["mask_decoder"], bias="none")
    assert lora.to_dict() == expected.to_dict()
    adapter_args = PeftArguments(peft_method="adapter", adapter_layers="2-3", adapter_train_layernorms=True)
    adapter = adapter_args.get_peft_config()
    expected = BottleneckAdapterConfig(target_modules=None, layers_to_transform=[2, 3], ratio=0.25,
                                       placement="sequential", scaling=1.0, train_layernorms=True,
                                       modules_to_save=["mask_decoder"])
    assert adapter.to_dict() == expected.to_dict()
    # the old name still answers, now taking PeftArguments
    assert default_peft_config(PeftArguments(), family).to_dict() == lora.to_dict()
    assert default_peft_config().to_dict() == PeftArguments().get_peft_config().to_dict()


def test_build_student_takes_peft_arguments_and_defaults_to_them():
    torch.manual_seed(0)
    default = build_student(SamModel(tiny_sam_config()), InfoSAMConfig())
    torch.manual_seed(0)
    given = build_student(SamModel(tiny_sam_config()), peft_config=PeftArguments(lora_r=2))
    assert default.peft_config["default"].r == 8 and given.peft_config["default"].r == 2
    with pytest.raises(ValueError, match=r"PeftArguments.lora_target_modules='nope'.*match\(es\) no module"):
        build_student(SamModel(tiny_sam_config()), peft_config=PeftArguments(lora_target_modules="nope"))


def test_moved_fields_passed_to_infosam_config_name_their_new_home():
    with pytest.raises(TypeError, match=r"InfoSAMConfig\(lora_r=...\): lora_r moved to PeftArguments"):
        InfoSAMConfig(lora_r=4)
    with pytest.raises(TypeError, match=r"teacher_store moved to InfoSAMTrainingArguments.*--teacher_store"):
        InfoSAMConfig(teacher_store="/data/store")
    assert dataclasses.replace(InfoSAMConfig(), lambda_2=0.7).lambda_2 == 0.7  # the guard passes real fields on


def test_an_old_format_infosam_config_json_loads(tmp_path):
    """What main @ 830eced saved: all 34 fields, the PEFT and run-local ones among them."""
    old = {"lambda_1": 0.3, "lambda_2": 0.5, "relation_dim": 256, "train_relation_module": True,
           "seg_loss": "structure", "structure_loss_weighted_bce": False, "box_prompt_probability": 0.5,
           "num_points": 1, "box_noise": 0.1, "max_box_noise": 5.0, "box_jitter": "shift", "multimask_output": False,
           "lora_r": 4, "lora_alpha": 16, "lora_dropout": 0.0, "lora_target_modules": "encoder",
           "modules_to_save": "mask_decoder", "peft_method": "lora", "adapter_ratio": 0.25,
           "adapter_placement": "sequential", "adapter_scaling": 1.0, "adapter_layers": "",
           "adapter_train_layernorms": False, "adapter_target_modules": "", "teacher_model_name_or_path": None,
           "gather_across_processes": True, "cache_teacher_embeddings": "auto", "teacher_cache_max_gb": None,
           "teacher_cache_dtype": None, "teacher_dtype": "bfloat16", "teacher_store": "/home/someone/stores/polyp",
           "teacher_store_max_gb": None, "image_size": 64, "allow_image_upscaling": False}
    assert set(old) == FLAGS_BEFORE_THE_SPLIT
    (tmp_path / "infosam_config.json").write_text(json.dumps(old))
    config = InfoSAMConfig.from_pretrained(tmp_path)
    assert (config.lambda_1, config.image_size) == (0.3, 64)
    assert config == InfoSAMConfig(lambda_1=0.3, image_size=64)
    (tmp_path / "infosam_config.json").write_text(json.dumps({**old, "lambda_3": 1}))
    with pytest.raises(ValueError, match=r"fields InfoSAMConfig does not know: \['lambda_3'\]"):
        InfoSAMConfig.from_pretrained(tmp_path)  # a field no release had is still refused


def test_the_trainer_applies_the_run_local_teacher_dtype_and_plain_arguments_keep_the_defaults(tmp_path):
    def trainer(args, teacher_dtype=None):
        torch.manual_seed(0)
        config = InfoSAMConfig()
        model = InfoSAMModel(build_student(SamModel(tiny_sam_config()), config), config, teacher_dtype=teacher_dtype)
        return InfoSAMTrainer(model=model, args=args, train_dataset=toy_segmentation_dataset(4))

    common = dict(output_dir=str(tmp_path), report_to=[], use_cpu=True, per_device_train_batch_size=2)
    assert trainer(InfoSAMTrainingArguments(**common, teacher_dtype="bfloat16")).model.teacher_dtype == "bfloat16"
    plain = trainer(TrainingArguments(**common))
    assert plain.model.teacher_dtype is None
    assert run_setting(plain.args, "gather_across_processes") is True
    assert run_setting(plain.args, "cache_teacher_embeddings") == "auto" and plain.teacher_cache_decision.enabled
    assert trainer(TrainingArguments(**common), teacher_dtype="float16").model.teacher_dtype == "float16"
    with pytest.raises(ValueError, match=r"built with teacher_dtype='float16' but .* --teacher_dtype bfloat16"):
        trainer(InfoSAMTrainingArguments(**common, teacher_dtype="bfloat16"), teacher_dtype="float16")


@pytest.mark.slow
def test_a_run_with_a_local_store_and_teacher_saves_and_pushes_no_path_of_the_machine(tmp_path):
    """train.py with --teacher_store and --teacher_model_name_or_path on local folders: no saved file names them."""
    from helpers import load_example

    from infosam_hf.builtin import BUILTIN_MODEL_PATH
    from infosam_hf.synthetic import write_synthetic_dataset

    machine = tmp_path / "machine-local"
    store, teacher = machine / "teacher-store", machine / "teacher"
    SamModel.from_pretrained(BUILTIN_MODEL_PATH).save_pretrained(teacher)
    data = write_synthetic_dataset(tmp_path / "data", "specialised", num_train=4, num_test=2, image_size=128, seed=1)
    out = tmp_path / "run"
    load_example("train").main(
        ["--dataset_name", str(data), "--output_dir", str(out), "--max_steps", "2", "--per_device_train_batch_size",
         "2", "--eval_overlays", "0", "--max_eval_samples", "2", "--disable_tqdm", "true", "--teacher_store",
         str(store), "--teacher_model_name_or_path", str(teacher), "--save_strategy", "steps", "--save_steps", "2"]
    )
    assert os.listdir(store), "the store was used"
    saved = json.loads((out / "infosam_config.json").read_text())
    assert set(saved) == names(InfoSAMConfig) and saved["teacher_model_name_or_path"] is None
    assert json.loads((out / "training_args.json").read_text())["teacher_store"] == "<TEACHER_STORE>"
    # every file of the run and its checkpoint: what push_to_hub / push_checkpoint upload is a subset
    leaks = []
    for root, _, files in os.walk(out):
        for name in files:
            text = open(os.path.join(root, name), "rb").read().decode("utf-8", errors="ignore")
            leaks += [f"{name}: {needle}" for needle in (str(machine), "machine-local") if needle in text]
    assert not leaks, leaks
    assert (out / "checkpoint-2" / "infosam_config.json").is_file()


def test_saved_files_record_a_hub_teacher_but_no_local_path(tmp_path):
    local = tmp_path / "teacher"
    local.mkdir()
    for teacher, recorded in ((str(local), None), ("./teacher", None), ("facebook/sam-vit-huge", "facebook/sam-vit-huge")):
        config = InfoSAMConfig(teacher_model_name_or_path=teacher)
        saved = json.loads(open(config.save_pretrained(tmp_path / "saved")).read())
        assert saved["teacher_model_name_or_path"] == recorded, teacher
        assert config.teacher_model_name_or_path == teacher  # this run still loads it
    args = InfoSAMTrainingArguments(output_dir=str(tmp_path / "out"), report_to=[], teacher_store=str(tmp_path / "s"))
    assert json.loads(args.to_json_string())["teacher_store"] == "<TEACHER_STORE>" and args.teacher_store.endswith("s")
