"""Push, model card and loading against a loopback Hub (tests/hub_server.py), with the real client, offline."""


import json
import logging
import re
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import make_args
from huggingface_hub import HfApi, ModelCard
from huggingface_hub.utils import logging as hf_logging
from peft import PeftModel
from PIL import Image
from safetensors.torch import load as load_safetensors
from safetensors.torch import load_file
from transformers import SamImageProcessor, SamModel, SamProcessor

import infosam_hf
from infosam_hf import InfoSAMConfig, InfoSAMModel, InfoSAMTrainer, PeftArguments, build_student
from infosam_hf.builtin import BUILTIN_MODEL_PATH, builtin_model_path
from infosam_hf.loading import load_for_training
from infosam_hf.metrics import build_compute_metrics
from infosam_hf.model_card import CARD_MARKER, render_model_card
from infosam_hf.testing import tiny_sam_config, toy_batch, toy_segmentation_dataset

TOKEN = "hf_SECRETtoken123"
BASE_ID = "tiny/sam-base"
ADAPTER_FILES = {
    "README.md",
    "adapter_config.json",
    "adapter_model.safetensors",
    "relation_module.safetensors",
    "infosam_config.json",
    "processor_config.json",
}
PICKLE = re.compile(r"\.(bin|pt|pth|pkl|pickle|ckpt)$")
QUALITY = ("iou", "dice", "iou@0.5", "dice@0.5")


def tiny_processor():
    return SamProcessor(
        image_processor=SamImageProcessor(size={"longest_edge": 64}, pad_size={"height": 64, "width": 64})
    )


def predict(model, batch):
    with torch.no_grad():
        return model(pixel_values=batch["pixel_values"], input_boxes=batch["input_boxes"], multimask_output=False).pred_masks


@pytest.fixture
def base_on_hub(fake_hub, tmp_path):
    """A 'pre-trained' tiny SAM published as tiny/sam-base, so adapters name a base the same Hub serves."""
    torch.manual_seed(0)
    folder = tmp_path / "base"
    SamModel(tiny_sam_config()).save_pretrained(folder)
    tiny_processor().save_pretrained(folder)
    api = HfApi()
    api.create_repo(BASE_ID)
    api.upload_folder(repo_id=BASE_ID, folder_path=folder)
    return folder


@pytest.fixture
def trained(base_on_hub):
    """An InfoSAMModel over the Hub base whose adapter and relation module differ from their initial values."""
    config = InfoSAMConfig()
    model = InfoSAMModel(build_student(SamModel.from_pretrained(BASE_ID), config, PeftArguments(lora_r=2)), config)
    with torch.no_grad():
        for _, p in model.named_parameters():
            if p.requires_grad:
                p.add_(0.02 * torch.randn_like(p))
    return model.eval()


@pytest.fixture
def hub_debug_logs(caplog):
    """huggingface_hub at DEBUG (it logs requests then), everything else captured too: where a token could leak."""
    previous = hf_logging.get_verbosity()
    hf_logging.set_verbosity_debug()
    caplog.set_level(logging.DEBUG)
    yield caplog
    hf_logging.set_verbosity(previous)


def assert_no_token(*texts):
    for text in texts:
        assert TOKEN not in text


def python_blocks(card_text: str) -> list[str]:
    return re.findall(r"```python\n(.*?)```", card_text, flags=re.S)


# ---------------------------------------------------------------------------------------------- push + card
def test_push_sends_exactly_the_safe_files_and_a_card_with_real_values(fake_hub, trained, hub_debug_logs, capfd):
    metrics = {"eval_iou": 0.61, "eval_dice": 0.72, "eval_loss": 0.9, "eval_runtime": 1.5}
    commit = trained.push_to_hub(
        "tiny/infosam-polyp",
        processor=tiny_processor(),
        token=TOKEN,
        metrics=metrics,
        dataset="tiny/polyp-set",
        license="apache-2.0",
    )
    files = fake_hub.files("tiny/infosam-polyp")
    assert set(files) == ADAPTER_FILES
    assert not any(PICKLE.search(name) for name in files)
    assert commit.oid == fake_hub.repo("tiny/infosam-polyp").commits[-1].oid
    assert json.loads(files["adapter_config.json"])["base_model_name_or_path"] == BASE_ID
    assert json.loads(files["adapter_config.json"])["r"] == 2  # PEFT facts live in the adapter's own config
    assert "lora_r" not in json.loads(files["infosam_config.json"])

    text = files["README.md"].decode()
    card = ModelCard(text)
    assert card.data.library_name == "peft"
    assert card.data.base_model == BASE_ID
    assert card.data.pipeline_tag == "mask-generation"
    assert card.data.license == "apache-2.0" and card.data.datasets == ["tiny/polyp-set"]
    assert {"infosam", "segment-anything", "lora", f"base_model:adapter:{BASE_ID}"} <= set(card.data.tags)
    results = {r.metric_type: r.metric_value for r in card.data.eval_results}
    assert results == {"iou": 0.61, "dice": 0.72}  # quality metrics in model-index; loss/speed stay out
    assert all(r.dataset_type == "tiny/polyp-set" and r.task_type == "mask-generation" for r in card.data.eval_results)
    for value in ("LoRA rank r | 2", "lambda_1 (relation compression L_r) | 1", "lambda_2 (relation distillation L_d) | 0.5",
                  "| iou | 0.61 |", "2505.21920", 'infosam_hf.load("tiny/infosam-polyp")', "`mask_decoder`"):
        assert value in text, value
    assert "{{" not in text and "None" not in text and "More Information Needed" not in text

    # the token went to the server, and nowhere else
    assert f"Bearer {TOKEN}" in fake_hub.auth_headers
    out, err = capfd.readouterr()
    assert_no_token(text, *[f.decode("utf-8", "replace") for f in files.values() if f[:1] == b"{"], out, err,
                    hub_debug_logs.text)


def test_the_one_infosam_model_pushes_and_loads_back_and_old_hub_imports_still_work(fake_hub, trained):
    """`infosam_hf.InfoSAMModel` is modeling's class itself (no Hub subclass): its push_to_hub reaches the Hub layer
    and what it pushed loads back as the same class. hub.py keeps the moved loading names for one release."""
    import infosam_hf.hub
    import infosam_hf.loading
    import infosam_hf.modeling

    assert type(trained) is infosam_hf.modeling.InfoSAMModel
    assert "push_to_hub" in vars(infosam_hf.modeling.InfoSAMModel)
    commit = trained.push_to_hub("tiny/infosam-one", processor=tiny_processor())
    assert set(fake_hub.files("tiny/infosam-one")) == ADAPTER_FILES
    assert commit.oid == fake_hub.repo("tiny/infosam-one").commits[-1].oid
    again = infosam_hf.modeling.InfoSAMModel.from_pretrained("tiny/infosam-one")
    assert type(again) is infosam_hf.modeling.InfoSAMModel
    torch.testing.assert_close(predict(again.student.eval(), toy_batch(2)), predict(trained.student, toy_batch(2)))
    for name in ("load", "load_for_training", "load_model_or_base", "resolve_folder", "check_adapter_fits",
                 "load_processor"):
        assert getattr(infosam_hf.hub, name) is getattr(infosam_hf.loading, name), name


def test_push_records_the_given_base_model_id_in_the_adapter_config(fake_hub, trained, tmp_path):
    trained.push_to_hub("tiny/infosam-rebased", processor=tiny_processor(), base_model_id="someone/sam-public")
    files = fake_hub.files("tiny/infosam-rebased")
    assert json.loads(files["adapter_config.json"])["base_model_name_or_path"] == "someone/sam-public"
    trained.save_pretrained(tmp_path / "local", model_card=False)  # the model itself still names its own base
    assert json.loads((tmp_path / "local" / "adapter_config.json").read_text())["base_model_name_or_path"] == BASE_ID


class PickleWritingProcessor:
    """A processor whose save_pretrained leaves a pickle beside its config (as some custom ones do)."""

    def save_pretrained(self, folder):
        tiny_processor().save_pretrained(folder)
        torch.save({"state": 1}, Path(folder) / "extra_state.bin")


def test_push_refuses_a_folder_holding_a_pickle_before_uploading_anything(fake_hub, trained):
    # allow_patterns would drop the file anyway; the guard is the second lock and is checked on its own.
    with pytest.raises(RuntimeError, match=r"extra_state\.bin is a pickle file"):
        trained.push_to_hub("tiny/infosam-guarded", processor=PickleWritingProcessor())
    assert fake_hub.files("tiny/infosam-guarded") == {}


def test_push_keeps_a_card_edited_on_the_hub(fake_hub, trained):
    trained.push_to_hub("tiny/infosam-polyp", processor=tiny_processor())
    edited = b"---\nlicense: mit\n---\n# Polyp adapter\n\nWritten by hand on the Hub.\n"
    HfApi().upload_file(path_or_fileobj=edited, path_in_repo="README.md", repo_id="tiny/infosam-polyp")
    with torch.no_grad():
        trained.relation_module.query_proj.weight.add_(1.0)
    with pytest.warns(UserWarning, match="already has a README.md that infosam_hf did not write; it was kept"):
        trained.push_to_hub("tiny/infosam-polyp", processor=tiny_processor())
    files = fake_hub.files("tiny/infosam-polyp")
    assert files["README.md"] == edited
    pushed = load_safetensors(files["relation_module.safetensors"])  # the rest of the push did happen
    assert torch.equal(pushed["query_proj.weight"], trained.relation_module.query_proj.weight)
    trained.push_to_hub("tiny/infosam-polyp", processor=tiny_processor(), overwrite_card=True)
    assert CARD_MARKER in fake_hub.files("tiny/infosam-polyp")["README.md"].decode()


def test_download_loads_identical_predictions_and_merge_gives_the_same_masks(fake_hub, trained, base_on_hub, tmp_path):
    trained.push_to_hub("tiny/infosam-polyp", processor=tiny_processor())
    batch = toy_batch(2)
    expected = predict(trained.student, batch)

    model, processor = infosam_hf.load("tiny/infosam-polyp")
    assert isinstance(model, PeftModel) and not model.training
    assert processor.image_processor.size["longest_edge"] == 64
    torch.testing.assert_close(predict(model, batch), expected, rtol=0, atol=0)
    merged, _ = infosam_hf.load("tiny/infosam-polyp", merge=True)
    assert not isinstance(merged, PeftModel)
    torch.testing.assert_close(predict(merged, batch), expected, rtol=1e-5, atol=1e-5)
    assert torch.equal(predict(merged, batch) > 0, expected > 0)

    # the plain PEFT path, from the Hub and from local folders
    plain = PeftModel.from_pretrained(SamModel.from_pretrained(BASE_ID), "tiny/infosam-polyp").eval()
    torch.testing.assert_close(predict(plain, batch), expected, rtol=0, atol=0)
    trained.save_pretrained(tmp_path / "adapter")
    local = PeftModel.from_pretrained(SamModel.from_pretrained(base_on_hub), str(tmp_path / "adapter")).eval()
    torch.testing.assert_close(predict(local, batch), expected, rtol=0, atol=0)
    again, _ = infosam_hf.load(tmp_path / "adapter")
    torch.testing.assert_close(predict(again, batch), expected, rtol=0, atol=0)


def test_the_cards_code_runs(fake_hub, trained, tmp_path, monkeypatch):
    trained.push_to_hub("tiny/infosam-polyp", processor=tiny_processor())
    text = fake_hub.files("tiny/infosam-polyp")["README.md"].decode()
    blocks = python_blocks(text)
    assert len(blocks) == 3  # infosam_hf.load, plain PEFT, continued training
    monkeypatch.chdir(tmp_path)
    Image.fromarray((np.random.default_rng(0).random((48, 80, 3)) * 255).astype("uint8")).save("image.png")
    scopes = []
    for block in blocks:
        scope = {}
        exec(compile(block, "README.md", "exec"), scope)
        scopes.append(scope)
    assert scopes[0]["masks"].shape == (1, 1, 48, 80) and scopes[0]["masks"].dtype == torch.bool
    assert isinstance(scopes[1]["model"], PeftModel) and isinstance(scopes[2]["model"], InfoSAMModel)


def test_card_template_ships_in_the_package_and_renders_without_placeholders():
    root = Path(__file__).resolve().parents[1]
    shipped = root / "infosam_hf" / "templates" / "infosam_adapter_card.md"
    assert (root / "model_cards" / "infosam_adapter_card.md").read_text() == shipped.read_text()
    text = render_model_card({"model_name": "bare", "base_model": "facebook/sam-vit-base"})
    card = ModelCard(text)
    assert card.data.base_model == "facebook/sam-vit-base" and card.data.eval_results is None
    assert "{{" not in text and "None" not in text and "No evaluation was recorded" in text


# ---------------------------------------------------------------------------------------------- Trainer
def trainer_args(tmp_path, **overrides):
    return make_args(tmp_path, **{
        "per_device_train_batch_size": 2, "per_device_eval_batch_size": 2, "max_steps": 2, "push_to_hub": True,
        "hub_model_id": "tiny/infosam-trainer", "hub_strategy": "end", "hub_token": TOKEN, **overrides,
    })


def test_trainer_push_to_hub_sends_adapter_relation_config_and_card(fake_hub, base_on_hub, tmp_path, hub_debug_logs,
                                                                   capfd):
    trainer = InfoSAMTrainer(
        model=BASE_ID,
        args=trainer_args(tmp_path),
        peft_config=PeftArguments(lora_r=2),
        train_dataset=toy_segmentation_dataset(4),
        eval_dataset=toy_segmentation_dataset(2, seed=1),
        compute_metrics=build_compute_metrics(),
        processing_class=tiny_processor(),
    )
    assert type(trainer.model) is InfoSAMModel  # the one class, with push_to_hub and the card
    trainer.train()
    final = trainer.evaluate()
    trainer.push_to_hub(dataset="tiny/polyp-set")

    files = fake_hub.files("tiny/infosam-trainer")
    assert set(files) == ADAPTER_FILES | {"training_args.json"}
    text = files["README.md"].decode()
    card = ModelCard(text)
    assert card.data.library_name == "peft" and card.data.base_model == BASE_ID
    assert "infosam" in card.data.tags and "mask-generation" in card.data.tags
    results = {r.metric_type: r.metric_value for r in card.data.eval_results}
    assert results == {name: pytest.approx(final[f"eval_{name}"], abs=0) for name in QUALITY}
    for value in ("learning_rate | 0.001", "total_train_batch_size | 2", "training_steps | 2", "seed | 0",
                  "mixed_precision | fp32"):
        assert value in text, value
    trainer.save_model()  # a later save keeps what the push said about the card
    assert ModelCard.load(tmp_path / "run" / "README.md").data.datasets == ["tiny/polyp-set"]
    relation = load_file(tmp_path / "run" / "relation_module.safetensors")
    pushed = load_safetensors(files["relation_module.safetensors"])
    assert all(torch.equal(relation[k], pushed[k]) for k in relation)

    assert f"Bearer {TOKEN}" in fake_hub.auth_headers
    out, err = capfd.readouterr()
    assert_no_token(text, files["training_args.json"].decode(), out, err, hub_debug_logs.text)


def test_checkpoint_pushes_carry_no_pickles(fake_hub, base_on_hub, tmp_path):
    trainer = InfoSAMTrainer(
        model=BASE_ID,
        args=trainer_args(tmp_path, max_steps=1, save_strategy="steps", save_steps=1, hub_strategy="checkpoint"),
        peft_config=PeftArguments(lora_r=2),
        train_dataset=toy_segmentation_dataset(2),
        processing_class=tiny_processor(),
    )
    trainer.train()
    trainer._finish_current_push()
    files = fake_hub.files("tiny/infosam-trainer")
    assert not any(PICKLE.search(name) for name in files), sorted(files)
    assert {"adapter_model.safetensors", "relation_module.safetensors", "last-checkpoint/adapter_model.safetensors",
            "last-checkpoint/relation_module.safetensors", "last-checkpoint/trainer_state.json"} <= set(files)
    assert not any(PICKLE.search(p.name) for p in (tmp_path / "run").iterdir())
    # the mid-training push already carries the card, naming the Hub repo in its code
    card = ModelCard(files["README.md"].decode())
    assert card.data.library_name == "peft" and 'infosam_hf.load("tiny/infosam-trainer")' in card.text
    # ... and the pushed last-checkpoint is enough to continue training, optimizer state included
    assert {"last-checkpoint/optimizer.safetensors", "last-checkpoint/rng_state.safetensors"} <= set(files)
    snapshot = HfApi().snapshot_download("tiny/infosam-trainer") + "/last-checkpoint"
    again = load_for_training(snapshot)
    assert again.student.peft_config["default"].r == 2
    resumed = InfoSAMTrainer(
        model=BASE_ID,
        args=trainer_args(tmp_path / "resumed", max_steps=2, push_to_hub=False),
        peft_config=PeftArguments(lora_r=2),
        train_dataset=toy_segmentation_dataset(2),
    )
    resumed.train(resume_from_checkpoint=snapshot)
    moments = resumed.optimizer.state_dict()["state"]
    assert resumed.state.global_step == 2  # continued from step 1 ...
    assert moments and all(float(s["step"]) == 2.0 for s in moments.values())  # ... with Adam's state of step 1


# ---------------------------------------------------------------------------------------------- continue training
def test_continued_training_from_a_pushed_adapter_restores_the_relation_module(fake_hub, trained, tmp_path):
    trained.push_to_hub("tiny/infosam-polyp", processor=tiny_processor())
    again = load_for_training("tiny/infosam-polyp")
    expected = trained.relation_module.state_dict()
    assert all(torch.equal(expected[k], v) for k, v in again.relation_module.state_dict().items())
    assert again.infosam_config == trained.infosam_config
    trainable = {n for n, p in again.named_parameters() if p.requires_grad}
    assert any("lora_" in n for n in trainable) and any(n.startswith("relation_module.") for n in trainable)
    torch.testing.assert_close(predict(again.student.eval(), toy_batch(2)), predict(trained.student, toy_batch(2)))
    same = InfoSAMModel.from_pretrained("tiny/infosam-polyp")  # the transformers-style entry point takes Hub ids too
    assert all(torch.equal(expected[k], v) for k, v in same.relation_module.state_dict().items())

    HfApi().delete_file("relation_module.safetensors", repo_id="tiny/infosam-polyp")
    with pytest.raises(FileNotFoundError, match=r"tiny/infosam-polyp has no relation_module\.safetensors.*"
                                                r"require_relation_module=False"):
        load_for_training("tiny/infosam-polyp")
    fresh = load_for_training("tiny/infosam-polyp", require_relation_module=False)
    assert not torch.equal(fresh.relation_module.query_proj.weight, trained.relation_module.query_proj.weight)


# ---------------------------------------------------------------------------------------------- bad input
def test_bad_input_says_what_is_missing(fake_hub, trained, base_on_hub, tmp_path):
    trained.push_to_hub("tiny/infosam-polyp", processor=tiny_processor())
    errors = []

    def expect(exc, pattern, fn, *args, **kwargs):
        with pytest.raises(exc, match=pattern) as info:
            fn(*args, **kwargs)
        errors.append(str(info.value) + repr(info.value.__cause__))

    expect(FileNotFoundError, r"'nobody/does-not-exist'.*Check the name, or log in", infosam_hf.load,
           "nobody/does-not-exist", token=TOKEN)
    expect(FileNotFoundError, r"no revision 'v9'", infosam_hf.load, "tiny/infosam-polyp", revision="v9")
    expect(FileNotFoundError, r"'tiny/sam-base' has no adapter_config\.json.*config\.json, model\.safetensors",
           infosam_hf.load, BASE_ID)
    (tmp_path / "empty").mkdir()
    expect(FileNotFoundError, r"has no adapter_config\.json", infosam_hf.load, str(tmp_path / "empty"))
    expect(FileNotFoundError, r"neither an existing local folder nor a Hub repo id", infosam_hf.load, "no//such//thing")

    pickled = tmp_path / "pickled"
    trained.save_pretrained(pickled)
    (pickled / "adapter_model.safetensors").rename(pickled / "adapter_model.bin")
    expect(FileNotFoundError, r"no adapter_model\.safetensors.*adapter_model\.bin, a pickle", infosam_hf.load, pickled)

    other = tmp_path / "sam-other"
    SamModel(tiny_sam_config(vision_hidden_size=48)).save_pretrained(other)
    pattern = rf"does not fit this base model: .*qkv has 48 input features.*'{BASE_ID}'.*{re.escape(str(other))}"
    expect(ValueError, pattern, infosam_hf.load, "tiny/infosam-polyp", base_model=str(other))
    expect(ValueError, pattern, load_for_training, "tiny/infosam-polyp", base_model=str(other))

    fake_hub.forbidden_namespaces.add("someone-else")
    expect(PermissionError, r"'someone-else/adapter'.*refused it \(HTTP 403\).*hf auth login", trained.push_to_hub,
           "someone-else/adapter", token=TOKEN)
    assert_no_token(*errors)


# ---------------------------------------------------------------------------------------------- local folders
def test_save_pretrained_writes_our_card_but_keeps_a_hand_written_one(trained, tmp_path):
    folder = tmp_path / "adapter"
    trained.save_pretrained(folder, processor=tiny_processor())
    text = (folder / "README.md").read_text()
    assert CARD_MARKER in text and "LoRA rank r | 2" in text and "processor_config.json" in text
    assert ModelCard(text).data.base_model == BASE_ID
    assert "No evaluation was recorded" in text  # no run, no invented numbers

    mine = "# My polyp adapter\n\nHand-written notes, \xe9\xe8 and all.\n".encode("latin-1")  # not even UTF-8
    (folder / "README.md").write_bytes(mine)
    with pytest.warns(UserWarning, match=r"README\.md was not written by infosam_hf, so it was kept"):
        trained.save_pretrained(folder)
    assert (folder / "README.md").read_bytes() == mine  # byte for byte: PEFT's card rewrite is not run either
    trained.save_pretrained(folder, model_card=False)
    assert (folder / "README.md").read_bytes() == mine

    (folder / "README.md").unlink()
    trained.save_pretrained(folder, model_card=False)
    assert not (folder / "README.md").exists()  # no PEFT stub in our folders

    (folder / "README.md").write_text(text.replace("LoRA rank r | 2", "LoRA rank r | 99"))  # a stale card of ours
    trained.save_pretrained(folder)
    regenerated = (folder / "README.md").read_text()
    assert "LoRA rank r | 2" in regenerated and "LoRA rank r | 99" not in regenerated
    assert "create_or_update_model_card" not in vars(trained.student)  # PEFT's own method is back after the save


def test_an_adapter_on_the_builtin_base_loads_on_another_install(tmp_path):
    assert builtin_model_path("/elsewhere/venv/lib/site-packages/infosam_hf/builtin/sam-tiny-general") == BUILTIN_MODEL_PATH
    assert builtin_model_path("/elsewhere/sam-tiny-general") is None and builtin_model_path(None) is None
    config = InfoSAMConfig()
    student = build_student(SamModel.from_pretrained(BUILTIN_MODEL_PATH), config, PeftArguments(lora_r=2))
    model = InfoSAMModel(student, config)
    model.save_pretrained(tmp_path / "adapter")
    adapter_config = tmp_path / "adapter" / "adapter_config.json"
    recorded = json.loads(adapter_config.read_text())
    assert recorded["base_model_name_or_path"] == BUILTIN_MODEL_PATH
    recorded["base_model_name_or_path"] = "/home/someone/venv/lib/python3.11/site-packages/infosam_hf/builtin/sam-tiny-general"
    adapter_config.write_text(json.dumps(recorded))
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)  # not even a "trained on another base" warning
        loaded, processor = infosam_hf.load(tmp_path / "adapter")
    assert processor.image_processor.size["longest_edge"] == 128
    batch = {k: v for k, v in toy_batch(1, image_size=128).items()}
    torch.testing.assert_close(predict(loaded, batch), predict(model.student.eval(), batch), rtol=0, atol=0)
    text = (tmp_path / "adapter" / "README.md").read_text()
    assert "SamModel.from_pretrained(BUILTIN_MODEL_PATH)" in text and "the tiny SAM built into infosam-hf" in text


@pytest.mark.slow
def test_train_script_pushes_to_the_hub(fake_hub, tmp_path, hub_debug_logs, capfd):
    from helpers import load_example

    from infosam_hf.synthetic import write_synthetic_dataset

    data = write_synthetic_dataset(tmp_path / "data", "specialised", num_train=8, num_test=4, image_size=128, seed=1)
    summary = load_example("train").main(
        ["--dataset_name", str(data), "--output_dir", str(tmp_path / "run"), "--max_steps", "2",
         "--per_device_train_batch_size", "4", "--disable_tqdm", "true", "--lora_r", "2",
         "--push_to_hub", "--hub_model_id", "tiny/infosam-script", "--hub_token", TOKEN]
    )
    files = fake_hub.files("tiny/infosam-script")
    assert ADAPTER_FILES | {"training_args.json"} <= set(files) and not any(PICKLE.search(f) for f in files)
    card = ModelCard(files["README.md"].decode())
    results = {r.metric_type: r.metric_value for r in card.data.eval_results}
    assert results["iou"] == pytest.approx(summary["iou"])
    assert "Base model (zero-shot)" in card.text and 'infosam_hf.load("tiny/infosam-script")' in card.text
    model, _ = infosam_hf.load("tiny/infosam-script")  # the built-in base resolves on this install
    assert isinstance(model, PeftModel)

    # --resume_adapter continues from the pushed adapter: with lr 0 it saves the pushed weights back unchanged
    load_example("train").main(
        ["--dataset_name", str(data), "--output_dir", str(tmp_path / "again"), "--max_steps", "1",
         "--per_device_train_batch_size", "4", "--disable_tqdm", "true", "--learning_rate", "0",
         "--resume_adapter", "tiny/infosam-script"]
    )
    for name in ("relation_module.safetensors", "adapter_model.safetensors"):
        pushed, saved = load_safetensors(files[name]), load_file(tmp_path / "again" / name)
        assert pushed.keys() == saved.keys() and all(torch.equal(pushed[k], saved[k]) for k in pushed), name
    out, err = capfd.readouterr()
    assert_no_token(card.text, files["training_args.json"].decode(), out, err, hub_debug_logs.text)


# --------------------------------------------------------------------------------- model card figures (issue 32 audit)
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
