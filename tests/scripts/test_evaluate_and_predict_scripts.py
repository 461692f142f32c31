"""examples/evaluate_adapter.py, examples/predict.py and the evaluation-overlay callback, on tiny models.

Everything runs in-process (`main(argv)`) on a tiny SamConfig (64 px) saved with a matching
SamProcessor, a fresh InfoSAM adapter on it, and a five-image CSV-layout dataset whose
images have different sizes (one smaller than the model input, one larger, one with an
empty mask), so that the crop-and-resize to the original size is exercised.
"""

import json
import logging
import os

import numpy as np
import PIL.Image
import pytest
import torch
from helpers import load_example, save_adapter, tiny_processor
from transformers import SamModel, SamProcessor, TrainingArguments

import infosam_hf.builtin
from infosam_hf import InfoSAMTrainer, PeftArguments
from infosam_hf.builtin import BUILTIN_MODEL_PATH
from infosam_hf.callbacks import EvalOverlayCallback
from infosam_hf.synthetic import make_synthetic_sample
from infosam_hf.testing import tiny_sam_config

SIZES = [(64, 48), (40, 64), (80, 80), (64, 64), (30, 50)]  # (width, height); index 3 has an empty mask
METRIC_KEYS = {"iou", "dice", "iou@0.5", "dice@0.5"}


@pytest.fixture(scope="module")
def evaluate_script():
    return load_example("evaluate_adapter")


@pytest.fixture(scope="module")
def predict_script():
    return load_example("predict")


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    root = tmp_path_factory.mktemp("assets")
    processor = tiny_processor()
    torch.manual_seed(0)
    base_dir = root / "base"
    SamModel(tiny_sam_config(image_size=64)).save_pretrained(base_dir)
    processor.save_pretrained(base_dir)
    other_base = root / "other-base"  # another architecture: the adapter does not fit it
    SamModel(tiny_sam_config(image_size=64, vision_hidden_size=48)).save_pretrained(other_base)
    processor.save_pretrained(other_base)

    data = root / "data"
    (data / "images").mkdir(parents=True)
    rng = np.random.default_rng(0)
    rows = ["image,label"]
    for i, (w, h) in enumerate(SIZES):
        image, mask = make_synthetic_sample("general", 80, rng)
        image, mask = image.crop((0, 0, w, h)), mask.crop((0, 0, w, h))
        if i == 3:
            mask = PIL.Image.new("L", (w, h), 0)  # an image without the object
        image.save(data / "images" / f"img{i}.png")
        mask.save(data / "images" / f"img{i}_gt.png")
        rows.append(f"images/img{i}.png,images/img{i}_gt.png")
    (data / "test.csv").write_text("\n".join(rows) + "\n")
    return {
        "root": root,
        "base": str(base_dir),
        "other_base": str(other_base),
        "adapter": save_adapter(base_dir, root / "adapter", processor),
        "trained_adapter": save_adapter(base_dir, root / "trained-adapter", processor, perturb=True),
        "data": str(data),
        "processor": processor,
    }


# ----------------------------------------------------------------------------------- evaluate_adapter.py


def run_evaluate(script, assets, tmp_path, *extra):
    out = tmp_path / f"metrics-{len(list(tmp_path.iterdir()))}.json"
    result = script.main(
        ["--dataset_name", assets["data"], "--batch_size", "2", "--disable_tqdm", "true", "--output_file", str(out),
         *extra]
    )
    assert json.loads(out.read_text()) == json.loads(json.dumps(result))
    return result


def check_scores(scores, keys=METRIC_KEYS):
    """The keys, the range, and what the definitions imply between IoU and Dice.

    Per image and threshold Dice = 2 IoU / (1 + IoU): so Dice >= IoU, and, that map being
    concave, the mean Dice <= 2 mean IoU / (1 + mean IoU) (Jensen). Swapped or mis-averaged
    scores break one of the two.
    """
    assert set(scores) == set(keys)
    for value in scores.values():
        assert 0.0 <= value <= 1.0
    for iou, dice in (("iou", "dice"), ("iou@0.5", "dice@0.5")):
        assert scores[iou] - 1e-12 <= scores[dice] <= 2 * scores[iou] / (1 + scores[iou]) + 1e-12, scores


def test_evaluate_base_only(evaluate_script, assets, tmp_path, capsys):
    result = run_evaluate(evaluate_script, assets, tmp_path, "--model_name_or_path", assets["base"],
                          "--structure_measures")
    assert result["num_images"] == len(SIZES)
    assert set(result["metrics"]) == {"zero_shot"} and "improvement" not in result
    check_scores(result["metrics"]["zero_shot"], METRIC_KEYS | {"s_measure", "e_measure", "weighted_f"})
    assert result["models"] == {"zero_shot": assets["base"]}
    assert result["prompt"]["type"] == "box" and result["protocol"]["size"] == "original image"
    table = capsys.readouterr().out
    assert "| zero-shot base |" in table and "| adapter " not in table


def test_evaluate_fresh_adapter_equals_zero_shot(evaluate_script, assets, tmp_path, capsys):
    """A fresh LoRA (B = 0) with an untouched decoder is the base model: both rows must agree exactly,
    and agree with the base model loaded on its own."""
    result = run_evaluate(evaluate_script, assets, tmp_path, "--adapter", assets["adapter"])
    base_only = run_evaluate(evaluate_script, assets, tmp_path, "--model_name_or_path", assets["base"])
    check_scores(result["metrics"]["adapter"])
    assert result["metrics"]["adapter"] == result["metrics"]["zero_shot"] == base_only["metrics"]["zero_shot"]
    assert all(v == 0.0 for v in result["improvement"].values())
    assert result["models"] == {"zero_shot": assets["base"], "adapter": assets["adapter"]}
    table = capsys.readouterr().out
    assert "| zero-shot base |" in table and "| adapter " in table and "| adapter - base |" in table


def test_evaluate_uses_the_adapter_weights(evaluate_script, assets, tmp_path):
    result = run_evaluate(evaluate_script, assets, tmp_path, "--adapter", assets["trained_adapter"],
                          "--prompt", "points", "--num_points", "2", "--max_samples", "4")
    base_only = run_evaluate(evaluate_script, assets, tmp_path, "--model_name_or_path", assets["base"],
                             "--prompt", "points", "--num_points", "2", "--max_samples", "4")
    assert result["num_images"] == 4
    assert result["prompt"] == {"type": "points", "num_points": 2, "box_noise": 0.0, "seed": 0}
    check_scores(result["metrics"]["adapter"])
    assert result["metrics"]["zero_shot"] == base_only["metrics"]["zero_shot"]  # same points for both
    assert result["metrics"]["adapter"] != result["metrics"]["zero_shot"]


def test_evaluate_base_model_mismatch_is_a_clear_error(evaluate_script, assets, tmp_path):
    with pytest.raises(ValueError, match="(?i)base model"):
        run_evaluate(evaluate_script, assets, tmp_path, "--adapter", assets["adapter"],
                     "--base_model", assets["other_base"])


def test_evaluate_streamed_with_workers_sees_every_image(evaluate_script, assets, tmp_path):
    """A streamed split splits itself between data-loader workers: no image lost or counted twice."""
    streamed = run_evaluate(evaluate_script, assets, tmp_path, "--model_name_or_path", assets["base"],
                            "--streaming", "true", "--num_workers", "2")
    in_memory = run_evaluate(evaluate_script, assets, tmp_path, "--model_name_or_path", assets["base"])
    assert streamed["num_images"] == in_memory["num_images"] == len(SIZES)
    for key, value in in_memory["metrics"]["zero_shot"].items():
        assert streamed["metrics"]["zero_shot"][key] == pytest.approx(value, abs=1e-12)


def test_evaluate_segmentation_in_python_scores_as_the_script(evaluate_script, assets, tmp_path):
    """The library call a Python user makes gives the script's rows; a plain model gives the zero-shot row only."""
    from infosam_hf import load
    from infosam_hf.data import load_segmentation_dataset
    from infosam_hf.evaluation import evaluate_segmentation

    model, processor = load(assets["trained_adapter"])
    dataset = load_segmentation_dataset(assets["data"], split="test", streaming=False)
    result = evaluate_segmentation(model, processor, dataset, batch_size=2, disable_tqdm=True)
    script = run_evaluate(evaluate_script, assets, tmp_path, "--adapter", assets["trained_adapter"])
    assert result["metrics"] == script["metrics"] and result["improvement"] == script["improvement"]
    assert result["num_images"] == len(SIZES) and result["metrics"]["adapter"] != result["metrics"]["zero_shot"]
    adapter_only = evaluate_segmentation(model, processor, dataset, compare_base=False, max_samples=2)
    assert set(adapter_only["metrics"]) == {"adapter"} and adapter_only["num_images"] == 2
    base = evaluate_segmentation(SamModel.from_pretrained(assets["base"]).eval(), processor, dataset, batch_size=2)
    assert base["metrics"] == {"zero_shot": result["metrics"]["zero_shot"]} and "improvement" not in base


def write_dataset(folder, pairs):
    (folder / "images").mkdir(parents=True)
    rows = ["image,label"]
    for i, (image, mask) in enumerate(pairs):
        image.save(folder / "images" / f"{i}.png")
        mask.save(folder / "images" / f"{i}_gt.png")
        rows.append(f"images/{i}.png,images/{i}_gt.png")
    (folder / "test.csv").write_text("\n".join(rows) + "\n")
    return str(folder)


def test_evaluate_empty_ground_truth_has_a_defined_result(evaluate_script, assets, tmp_path):
    """An image without the object scores 1 if the prediction is empty too, else 0 (per threshold)."""
    image = PIL.Image.open(image_path(assets, 2)).convert("RGB")
    data = write_dataset(tmp_path / "empty", [(image, PIL.Image.new("L", image.size, 0))])
    result = evaluate_script.main(["--model_name_or_path", assets["base"], "--dataset_name", data,
                                   "--disable_tqdm", "true"])
    scores = result["metrics"]["zero_shot"]
    assert scores["iou@0.5"] in (0.0, 1.0) and scores["dice@0.5"] == scores["iou@0.5"]
    assert scores["iou"] * 5 == pytest.approx(round(scores["iou"] * 5))  # a share of the 5 thresholds


def test_evaluate_scores_are_means_over_images(evaluate_script, assets, tmp_path):
    """Scores on two images are the mean of each image's own scores (the paper averages per image, not per pixel)."""
    pairs = [(PIL.Image.open(image_path(assets, i)).convert("RGB"), PIL.Image.open(mask_path(assets, i)))
             for i in (0, 2)]

    def scores(name, chosen):
        data = write_dataset(tmp_path / name, chosen)
        result = evaluate_script.main(["--model_name_or_path", BUILTIN_MODEL_PATH, "--dataset_name", data,
                                       "--disable_tqdm", "true"])
        check_scores(result["metrics"]["zero_shot"])
        return result["metrics"]["zero_shot"]

    first, second, both = scores("first", pairs[:1]), scores("second", pairs[1:]), scores("both", pairs)
    assert first != second and min(first["iou@0.5"], second["iou@0.5"]) > 0  # two different, real scores
    for key, value in both.items():
        assert value == pytest.approx((first[key] + second[key]) / 2, abs=1e-9), key


def test_evaluate_mask_of_another_size_is_a_clear_error(evaluate_script, assets, tmp_path):
    image = PIL.Image.open(image_path(assets, 2)).convert("RGB")  # 80x80
    data = write_dataset(tmp_path / "bad", [(image, PIL.Image.new("L", (40, 40), 0))])
    with pytest.raises(ValueError, match="sizes differ"):
        evaluate_script.main(["--model_name_or_path", assets["base"], "--dataset_name", data,
                              "--disable_tqdm", "true"])


def test_evaluate_defaults_to_the_builtin_model(evaluate_script, assets, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)  # no outputs/infosam-builtin here: zero-shot only
    monkeypatch.setattr(infosam_hf.builtin, "builtin_dataset_path", lambda domain, max_objects=1: assets["data"])
    result = evaluate_script.main(["--disable_tqdm", "true"])
    assert result["models"] == {"zero_shot": BUILTIN_MODEL_PATH} and result["split"] == "test"
    check_scores(result["metrics"]["zero_shot"])
    # and the retention sets train.py scores by default (here the same images: the same numbers; then read as
    # instance ids, for prompt following)
    assert [s["instance_format"] for s in result["retention"]["sets"]] == [None, "ids"]
    retention = result["retention"]["metrics"]["zero_shot"]
    assert {k: retention[k] for k in METRIC_KEYS} == result["metrics"]["zero_shot"]
    assert {"object_iou", "confusion"} <= set(retention)
    # The built-in model was pre-trained on this domain: its box-prompted masks are far from chance.
    assert result["metrics"]["zero_shot"]["iou@0.5"] > 0.5
    adapter_dir = tmp_path / "outputs" / "infosam-builtin"
    adapter_dir.mkdir(parents=True)
    (adapter_dir / "adapter_config.json").write_text("{}")
    args = evaluate_script.EvaluationArguments()
    assert evaluate_script.resolve_models(args) == (os.path.join("outputs", "infosam-builtin"), BUILTIN_MODEL_PATH)


# ----------------------------------------------------------------------------------- predict.py


def image_path(assets, i):
    return os.path.join(assets["data"], "images", f"img{i}.png")


def mask_path(assets, i):
    return os.path.join(assets["data"], "images", f"img{i}_gt.png")


def test_predict_writes_binary_masks_at_the_original_size_and_overlays(predict_script, assets, tmp_path):
    out = tmp_path / "pred"
    # The built-in (trained) model gives real masks; a box around the object of image 0 and image 2.
    results = predict_script.main(
        ["--model_name_or_path", BUILTIN_MODEL_PATH, "--images", image_path(assets, 0), image_path(assets, 2),
         "--box", "2", "2", "38", "38", "--output_dir", str(out)]
    )
    assert len(results) == 2
    for i in (0, 2):
        image = PIL.Image.open(image_path(assets, i)).convert("RGB")
        mask = PIL.Image.open(out / f"img{i}_mask.png")
        overlay = PIL.Image.open(out / f"img{i}_overlay.png")
        assert mask.size == image.size == overlay.size
        values = np.asarray(mask)
        assert set(np.unique(values)) <= {0, 255}
        on = values == 255
        assert on.any(), "the built-in model should find something inside the box"
        changed = (np.asarray(overlay.convert("RGB")) != np.asarray(image)).any(axis=-1)
        assert changed[on].mean() > 0.99  # the mask is tinted everywhere
        far = ~on.copy()
        far[:40, :40] = False  # the box (and the mask) lie there
        assert not changed[far].any()  # and nothing is drawn far from mask and prompt


def test_predict_refuses_to_overwrite(predict_script, assets, tmp_path):
    out = tmp_path / "pred"
    argv = ["--model_name_or_path", assets["base"], "--images", image_path(assets, 1), "--points", "10,20",
            "--output_dir", str(out)]
    predict_script.main(argv)
    first = (out / "img1_mask.png").read_bytes()
    (out / "img1_overlay.png").write_bytes(b"keep me")
    with pytest.raises(FileExistsError, match="--overwrite"):
        predict_script.main(argv)
    assert (out / "img1_overlay.png").read_bytes() == b"keep me"
    predict_script.main(argv + ["--overwrite"])
    assert (out / "img1_mask.png").read_bytes() == first
    assert (out / "img1_overlay.png").read_bytes() != b"keep me"


@pytest.mark.parametrize(
    "prompt, message",
    [
        (["--box", "0", "0", "65", "10"], r"outside the image, which is 64x48"),  # image 0 is 64 wide
        (["--points", "10,49"], "outside the image"),
        (["--points=-1,5"], "outside the image"),  # negative values need the = form on the command line
        (["--box", "1", "2", "3"], "x1 y1 x2 y2"),
        (["--box", "30", "0", "10", "10"], "x1 <= x2"),
        (["--points", "10;20"], "x,y"),
        ([], "No prompt"),
    ],
)
def test_predict_bad_prompts_are_clear_errors(predict_script, assets, tmp_path, prompt, message):
    out = tmp_path / "pred"
    with pytest.raises(ValueError, match=message):
        predict_script.main(["--model_name_or_path", assets["base"], "--images", image_path(assets, 0),
                             "--output_dir", str(out), *prompt])
    assert not out.exists()  # checked before anything is written


def test_predict_prompt_file_and_adapter(predict_script, assets, tmp_path):
    prompts = {
        "images/img0.png": {"box": [5, 5, 40, 30]},
        "images/img4.png": {"points": [[10, 10], [20, 40]], "labels": [1, 0]},
    }
    prompt_file = os.path.join(assets["data"], f"prompts-{tmp_path.name}.json")
    with open(prompt_file, "w") as f:
        json.dump(prompts, f)
    try:
        out = tmp_path / "pred"
        results = predict_script.main(["--adapter", assets["trained_adapter"], "--prompts", prompt_file,
                                       "--output_dir", str(out)])
    finally:
        os.remove(prompt_file)
    assert [os.path.basename(r["image"]) for r in results] == ["img0.png", "img4.png"]
    assert PIL.Image.open(out / "img4_mask.png").size == (30, 50)
    assert os.path.isfile(out / "img4_overlay.png")

    with pytest.raises(ValueError, match="not both"):
        predict_script.main(["--prompts", prompt_file, "--box", "1", "1", "2", "2"])


def test_predict_maps_coordinates_as_sam_processor_does(assets):
    from infosam_hf.inference import to_model_frame

    image = PIL.Image.open(image_path(assets, 2)).convert("RGB")  # 80x80 -> 64x64
    processor = assets["processor"]
    box = [10.0, 20.0, 70.0, 75.0]
    expected = processor(images=image, input_boxes=[[box]], return_tensors="pt")["input_boxes"]
    ours = to_model_frame(box, (80, 80), (64, 64)).reshape(1, 1, 4)
    torch.testing.assert_close(ours, expected.float())
    image = PIL.Image.open(image_path(assets, 4)).convert("RGB")  # 30x50 (WxH) -> 38x64
    points = [[3.0, 7.0], [29.0, 49.0]]
    expected = processor(images=image, input_points=[[points]], return_tensors="pt")["input_points"]
    ours = to_model_frame(points, (50, 30), (64, 38)).reshape(1, 1, 2, 2)
    torch.testing.assert_close(ours, expected.float())


# ----------------------------------------------------------------------------------- callback


def test_eval_overlay_callback_writes_overlays_at_each_evaluation(assets, tmp_path):
    from infosam_hf.data import (
        PromptSampler,
        SamSegmentationCollator,
        SamSegmentationPreprocessor,
        load_segmentation_dataset,
        prepare_dataset,
    )

    raw = load_segmentation_dataset(assets["data"], split="test", streaming=False)
    preprocessor = SamSegmentationPreprocessor.from_processor(assets["processor"])
    prepared = prepare_dataset(raw, preprocessor)
    callback = EvalOverlayCallback(raw, num_samples=3)
    args = TrainingArguments(
        output_dir=str(tmp_path / "run"), max_steps=2, eval_strategy="steps", eval_steps=1,
        per_device_train_batch_size=2, per_device_eval_batch_size=5, learning_rate=1e-3, save_strategy="no",
        report_to="none", disable_tqdm=True, use_cpu=True, seed=0,
    )
    trainer = InfoSAMTrainer(
        model=SamModel.from_pretrained(assets["base"]),
        args=args,
        peft_config=PeftArguments(lora_r=2),
        train_dataset=prepared,
        eval_dataset=prepared,
        data_collator=SamSegmentationCollator(PromptSampler(seed=0)),
        eval_data_collator=SamSegmentationCollator(PromptSampler(box_noise=0.0), prompt_type="box"),
        processing_class=assets["processor"],
        callbacks=[callback],
    )
    trainer.evaluate(metric_key_prefix="zero_shot")
    trainer.train()
    folder = tmp_path / "run" / "eval_overlays"
    assert sorted(os.listdir(folder)) == ["step-0-zero_shot", "step-1", "step-2"]
    for step in os.listdir(folder):
        names = sorted(os.listdir(folder / step))
        assert names == ["grid.png", "sample-00.png", "sample-01.png", "sample-02.png", "scores.json"]
        for i in range(3):
            assert PIL.Image.open(folder / step / f"sample-{i:02d}.png").size == SIZES[i]
        scores = json.loads((folder / step / "scores.json").read_text())
        assert len(scores["samples"]) == 3 and all(0 <= s["iou@0.5"] <= 1 for s in scores["samples"])
    assert json.loads((folder / "step-2" / "scores.json").read_text())["global_step"] == 2
    assert "zero_shot_loss" in json.loads((folder / "step-0-zero_shot" / "scores.json").read_text())["metrics"]


def test_eval_overlay_callback_rejects_preprocessed_rows(assets):
    with pytest.raises(ValueError, match="raw dataset"):
        EvalOverlayCallback([{"pixel_values": np.zeros((3, 64, 64))}])


def test_predict_matches_sam_processor_end_to_end(predict_script, assets):
    """Our preprocessing + crop/resize gives exactly the mask of SamProcessor + post_process_masks."""
    from infosam_hf import Predictor
    from infosam_hf.data import SamSegmentationPreprocessor

    model = SamModel.from_pretrained(BUILTIN_MODEL_PATH).eval()
    processor = SamProcessor.from_pretrained(BUILTIN_MODEL_PATH)
    image = PIL.Image.open(image_path(assets, 0)).convert("RGB")  # 64x48: upscaled to 128x96, padded
    box = [2.0, 3.0, 40.0, 30.0]
    inputs = processor(images=image, input_boxes=[[box]], return_tensors="pt")
    with torch.no_grad():
        outputs = model(pixel_values=inputs["pixel_values"], input_boxes=inputs["input_boxes"], multimask_output=False)
    expected = processor.post_process_masks(
        outputs.pred_masks, inputs["original_sizes"], inputs["reshaped_input_sizes"], binarize=False
    )[0][0, 0].numpy() > 0
    predictor = Predictor(model, SamSegmentationPreprocessor.from_processor(processor))
    (ours,) = predict_script.predict_masks(predictor, image, [predict_script.Prompt(box=box)])
    assert ours.shape == (48, 64) and expected.any()
    assert (ours == expected).mean() > 0.999  # float32 vs float64 normalisation may flip a boundary pixel


def test_predict_logs_the_base_model_an_adapter_names(predict_script, assets, caplog):
    args = predict_script.PredictionArguments(adapter=assets["adapter"], images=["unused.png"], box=[1, 1, 9, 9])
    with caplog.at_level(logging.INFO, logger="infosam_hf.predict"):
        predict_script.load_model(args, torch.device("cpu"))
    assert f"adapter {assets['adapter']} on {assets['base']}" in caplog.text and "on None" not in caplog.text
