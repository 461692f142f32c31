"""The Gradio demo, for real: a server on 127.0.0.1, called with gradio_client and driven in headless Chromium."""

import json
import os
import shutil
import socket
import subprocess
import sys
import time

import numpy as np
import pytest
from helpers import ROOT, fine_tuned
from PIL import Image
from transformers import SamProcessor

from infosam_hf.builtin import BUILTIN_MODEL_PATH

pytestmark = pytest.mark.extras  # .ci/run runs these again once every extra is installed
gradio = pytest.importorskip("gradio", reason='the demo extra is not installed: pip install -e ".[demo]"')

EXAMPLES = os.path.join(ROOT, "examples")
ARTIFACTS = os.environ.get("INFOSAM_TEST_ARTIFACTS", os.path.join(ROOT, "test-artifacts"))
sys.path.insert(0, EXAMPLES)
import demo  # noqa: E402

sys.path.remove(EXAMPLES)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def adapter_dir(tmp_path_factory):
    """The built-in SAM with a LoRA adapter moved away from its initial values (masks visibly differ)."""
    model = fine_tuned(0.05)
    folder = tmp_path_factory.mktemp("adapter")
    model.save_pretrained(folder, processor=SamProcessor.from_pretrained(BUILTIN_MODEL_PATH))
    return str(folder)


@pytest.fixture(scope="module")
def server(adapter_dir, tmp_path_factory):
    """`python examples/demo.py --adapter ...` on a free loopback port; its URL."""
    port = free_port()
    log = tmp_path_factory.mktemp("server") / "demo.log"
    env = dict(os.environ, GRADIO_ANALYTICS_ENABLED="False", PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    with open(log, "w") as out:
        process = subprocess.Popen(
            [sys.executable, os.path.join(EXAMPLES, "demo.py"), "--adapter", adapter_dir, "--port", str(port)],
            cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT,
        )
    url = f"http://127.0.0.1:{port}/"
    try:
        deadline = time.monotonic() + 300
        while "Running on local URL" not in log.read_text():
            if process.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"the demo server did not start:\n{log.read_text()[-3000:]}")
            time.sleep(1)
        yield url
    finally:
        process.terminate()
        process.wait(timeout=30)


def example_with_box():
    examples = demo.example_images()
    example = next(iter(examples.values()))
    return example["path"], example["box"]


def test_gradio_client_gets_two_masks_and_the_adapters_differs(server):
    from gradio_client import Client, handle_file

    path, box = example_with_box()
    client = Client(server, verbose=False)
    base_overlay, tuned_overlay, scores, base_mask, tuned_mask = client.predict(
        handle_file(path), json.dumps({"box": box}), api_name="/segment"
    )
    base = np.asarray(Image.open(base_mask).convert("L")) > 127
    tuned = np.asarray(Image.open(tuned_mask).convert("L")) > 127
    assert base.shape == tuned.shape == (128, 128)
    assert base.any() and tuned.any()
    assert (base != tuned).sum() > 0
    assert Image.open(base_overlay).size == Image.open(tuned_overlay).size == (128, 128)
    rows = [line for line in scores.splitlines() if line.startswith("| zero-shot") or line.startswith("| fine-tuned")]
    assert len(rows) == 2 and all("n/a" not in row for row in rows)  # an example image: IoU vs its ground truth

    with pytest.raises(Exception, match="outside the 128x128 image"):
        client.predict(handle_file(path), json.dumps({"box": [0, 0, 500, 20]}), api_name="/segment")


def test_prompt_field_and_clicks():
    text = demo.add_click("", demo.MODES[2], 10, 40)
    assert "box" not in json.loads(text)
    text = demo.add_click(text, demo.MODES[2], 5, 60)
    assert json.loads(text)["box"] == [5, 40, 10, 60]
    text = demo.add_click(text, demo.MODES[0], 7, 50)
    text = demo.add_click(text, demo.MODES[1], 1, 1)
    prompt = demo.parse_prompt(json.dumps({k: v for k, v in json.loads(text).items()}), 128, 128)
    assert prompt == {"box": [5.0, 40.0, 10.0, 60.0], "points": [[7.0, 50.0], [1.0, 1.0]], "labels": [1, 0]}
    with pytest.raises(ValueError, match="No prompt yet"):
        demo.parse_prompt("", 128, 128)
    with pytest.raises(ValueError, match="x1 <= x2"):
        demo.parse_prompt('{"box": [50, 0, 10, 10]}', 128, 128)
    with pytest.raises(ValueError, match="not valid JSON"):
        demo.parse_prompt("{box", 128, 128)


def test_without_an_adapter_it_serves_the_base_and_says_how_to_make_one(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # no outputs/infosam-builtin here
    segmenter = demo.Segmenter()
    assert not segmenter.has_adapter and "python examples/train.py" in segmenter.note
    path, box = example_with_box()
    result = segmenter.segment(Image.open(path).convert("RGB"), {"box": box, "points": [], "labels": []})
    assert result["adapter"] is None and result["base"][0].shape == (128, 128) and result["base"][0].any()


def _card_adapter(folder, retention=True):
    """An adapter folder with the card our model_card.py writes for a run: the target set's metrics and, with
    `retention`, the retention set's beside the zero-shot base's."""
    from infosam_hf.model_card import write_model_card

    model = fine_tuned(0.05)
    model.save_pretrained(folder, processor=SamProcessor.from_pretrained(BUILTIN_MODEL_PATH))
    metrics = {"eval_iou": 0.8123, "eval_dice": 0.8654}
    baseline = {"zero_shot_iou": 0.7011, "zero_shot_dice": 0.7712}
    if retention:
        metrics |= {"eval_retention_iou": 0.9412, "eval_retention_dice": 0.9671}
        baseline |= {"zero_shot_retention_iou": 0.9688, "zero_shot_retention_dice": 0.9841}
    write_model_card(None, output_dir=folder, model=model, overwrite=True, metrics=metrics, baseline_metrics=baseline,
                     dataset="the built-in synthetic 'specialised' domain",
                     **({"retention_dataset": "the built-in synthetic 'general' domain"} if retention else {}))
    return str(folder)


def _shown(segmenter, elem_id):
    """The value of the demo's component `elem_id`, as the page shows it."""
    blocks = demo.build_demo(segmenter)
    (block,) = [b for b in blocks.blocks.values() if getattr(b, "elem_id", None) == elem_id]
    return block.value


def test_the_demo_shows_the_target_and_retention_figures_of_the_adapters_card(tmp_path):
    folder = _card_adapter(tmp_path / "adapter")
    shown = _shown(demo.Segmenter(folder), "card-figures")
    assert "| the built-in synthetic 'specialised' domain | iou | 0.8123 | 0.7011 |" in shown  # zero-shot beside it
    assert "| the built-in synthetic 'general' domain (retention) | iou | 0.9412 | 0.9688 |" in shown
    assert "| the built-in synthetic 'general' domain (retention) | dice | 0.9671 | 0.9841 |" in shown
    assert "no retention figures" not in shown
    # a value changed on the card is what the demo shows
    card = tmp_path / "adapter" / "README.md"
    card.write_text(card.read_text().replace("value: 0.9412", "value: 0.5011"))
    shown = _shown(demo.Segmenter(folder), "card-figures")
    assert "| the built-in synthetic 'general' domain (retention) | iou | 0.5011 | 0.9688 |" in shown
    assert "0.9412" not in shown


def test_an_adapter_without_retention_figures_or_without_a_card_shows_what_it_has(tmp_path):
    folder = _card_adapter(tmp_path / "adapter", retention=False)
    shown = _shown(demo.Segmenter(folder), "card-figures")
    assert "| iou | 0.8123 |" in shown and "(retention)" not in shown
    assert "The card has no retention figures" in shown
    model_level = tmp_path / "saved"  # save_pretrained's card: the model's values, no run's metrics
    fine_tuned(0.05).save_pretrained(model_level, processor=SamProcessor.from_pretrained(BUILTIN_MODEL_PATH))
    shown = _shown(demo.Segmenter(str(model_level)), "card-figures")
    assert "the card of" in shown and "has no `model-index`" in shown and "|" not in shown
    os.remove(os.path.join(folder, "README.md"))
    shown = _shown(demo.Segmenter(folder), "card-figures")
    assert "has no model card (README.md)" in shown and "|" not in shown


def test_the_gallery_holds_general_domain_images_beside_the_specialised_ones():
    import gradio as gr

    examples = demo.example_images()
    domains = [e["domain"] for e in examples.values()]
    assert domains == ["specialised"] * len(demo.EXAMPLE_SEEDS) + ["general"] * len(demo.GENERAL_EXAMPLE_SEEDS)
    general = [e for e in examples.values() if e["domain"] == "general"]
    assert all(e["mask"].any() and os.path.basename(e["path"]).startswith("general-") for e in general)
    blocks = demo.build_demo(demo.Segmenter(base_model=BUILTIN_MODEL_PATH))
    galleries = {b.label: [os.path.basename(s[0]["orig_name"]) for s in b.samples]
                 for b in blocks.blocks.values() if isinstance(b, gr.Dataset)}
    (label,) = [label for label in galleries if '"general" domain' in label]
    assert galleries[label] == [os.path.basename(e["path"]) for e in general]  # labelled, and only general images
    assert any('"specialised" domain' in label for label in galleries)
    # a general example is scored against its ground truth like a specialised one
    segmenter = demo.Segmenter(base_model=BUILTIN_MODEL_PATH)
    image = Image.open(general[0]["path"]).convert("RGB")
    assert demo.image_key(image) in segmenter.examples
    mask, _ = segmenter.segment(image, {"box": general[0]["box"], "points": [], "labels": []})["base"]
    assert demo._iou(mask, general[0]["mask"]) > 0.5  # the base segments the general domain it was trained on


def _browser():
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver")
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        chromium = None
    if not (chromium and driver):
        message = "headless browser test needs Debian's chromium + chromium-driver and selenium (see .ci/run)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    options = webdriver.ChromeOptions()
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1400,1100"):
        options.add_argument(arg)
    options.binary_location = chromium
    return webdriver.Chrome(service=Service(driver), options=options)


def _wait(predicate, timeout=120, what="condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.5)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.mark.slow
def test_browser_upload_click_a_box_and_see_both_results(server):
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By

    path, box = example_with_box()
    browser = _browser()
    try:
        browser.get(server)
        _wait(lambda: browser.find_elements(By.CSS_SELECTOR, "#image-in input[type=file]"), what="the upload field")
        browser.find_element(By.CSS_SELECTOR, "#image-in input[type=file]").send_keys(path)
        image = _wait(lambda: browser.find_elements(By.CSS_SELECTOR, "#image-in img"), what="the uploaded image")[0]
        _wait(lambda: image.size["width"] > 0, what="the image to be laid out")
        # Two clicks in box mode (the default) on the box's corners. The <img> box is centred on the picture, which is
        # drawn at `scale` (object-fit: scale-down or contain), so image pixel x lies (x - width/2) * scale off centre.
        natural, fit = browser.execute_script("return [arguments[0].naturalWidth, getComputedStyle(arguments[0]).objectFit]", image)
        scale = min(image.size["width"] / natural, image.size["height"] / natural)
        scale = min(scale, 1.0) if fit == "scale-down" else scale
        for x, y in ((box[0] - 2, box[1] - 2), (box[2] + 2, box[3] + 2)):
            dx, dy = (x - natural / 2) * scale, (y - natural / 2) * scale
            ActionChains(browser).move_to_element_with_offset(image, int(dx), int(dy)).click().perform()
            time.sleep(1)
        prompt = browser.find_element(By.CSS_SELECTOR, "#prompt textarea, #prompt input")
        _wait(lambda: "box" in (prompt.get_attribute("value") or ""), what="the box in the prompt field")
        clicked = json.loads(prompt.get_attribute("value"))["box"]
        assert all(abs(a - b) <= 4 for a, b in zip(clicked, [box[0] - 2, box[1] - 2, box[2] + 2, box[3] + 2]))
        for elem in ("#base-out img", "#tuned-out img"):
            _wait(lambda elem=elem: browser.find_elements(By.CSS_SELECTOR, elem), what=f"the result image {elem}")
        scores = _wait(lambda: browser.find_element(By.CSS_SELECTOR, "#scores").text.strip(), what="the scores")
        assert "zero-shot base" in scores and "fine-tuned adapter" in scores
        os.makedirs(ARTIFACTS, exist_ok=True)
        shot = os.path.join(ARTIFACTS, "demo-browser.png")
        browser.save_screenshot(shot)
        assert os.path.getsize(shot) > 0
    finally:
        browser.quit()


def test_the_space_entry_builds_the_demo_and_its_requirements_match_the_package(monkeypatch, tmp_path):
    import runpy

    import tomllib

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("INFOSAM_ADAPTER", raising=False)
    namespace = runpy.run_path(os.path.join(ROOT, "app.py"), run_name="space")
    assert isinstance(namespace["demo"], gradio.Blocks)
    with open(os.path.join(ROOT, "pyproject.toml"), "rb") as f:
        project = tomllib.load(f)["project"]
    with open(os.path.join(ROOT, "space", "requirements.txt")) as f:
        requirements = {line.strip() for line in f if line.strip() and not line.startswith("#")}
    assert requirements == set(project["dependencies"]) | set(project["optional-dependencies"]["demo"])
