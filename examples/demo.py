"""Try a fine-tuned SAM in the browser: zero-shot base and InfoSAM adapter side by side (Gradio).

    pip install -e ".[demo]"
    python examples/demo.py                                    # built-in SAM + outputs/infosam-builtin if trained
    python examples/demo.py --adapter you/sam-polyp-infosam    # any adapter folder or Hub id
    python examples/demo.py --adapter outputs/run --port 7861 --share

Pick an example image (the built-in "specialised" domain the adapter was trained for, or the
"general" domain of ordinary objects the base was pre-trained on, each with its ground truth)
or upload one, then click on it: foreground points, background points, or two box corners, as
the mode says. Both models segment the same prompt; each result shows the mask over the image,
SAM's predicted IoU and, for the example images, the IoU against the ground truth. The
prompt is also a JSON text field (`{"box": [x1, y1, x2, y2], "points": [[x, y]], "labels": [1]}`,
original image pixels) that can be typed, and what the `/segment` API endpoint takes.

Beside the results, the figures the adapter's model card publishes (its `model-index`): the
target set's metrics and, when the run scored one, the retention set's, the zero-shot base
beside the adapter, so a click on a general-domain image can be read against what the
adapter was measured to keep.

The base side is the adapter's own base with the adapter switched off
(`PeftModel.disable_adapter()`): one copy of SAM in memory, and exactly the weights the
adapter was trained on. As a Hugging Face Space: see `app.py` at the repository root.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import sys
import tempfile
from dataclasses import dataclass, field

import numpy as np
import torch

logger = logging.getLogger("infosam_hf.demo")

MODES = ("Foreground point", "Background point", "Box (click 2 corners)")
NO_ADAPTER = (
    "No adapter given and none at {path}: showing the zero-shot base only. Make one with "
    "`python examples/train.py` (a few minutes on CPU), or pass --adapter <folder or Hub id>."
)
EXAMPLE_SEEDS = (11, 12, 13, 14)
GENERAL_EXAMPLE_SEEDS = (21, 22, 23, 24)
# The gallery, one block per built-in domain: (domain, seeds, label).
GALLERY = (
    ("specialised", EXAMPLE_SEEDS, 'Built-in "specialised" domain: what the adapter was trained for (the box is the '
     "ground truth's)"),
    ("general", GENERAL_EXAMPLE_SEEDS, 'Built-in "general" domain: ordinary objects the base was pre-trained on; does '
     "the adapter still follow the prompt? (the box is the ground truth's)"),
)


@dataclass
class DemoArguments:
    adapter: str | None = field(default=None, metadata={"help": "InfoSAM adapter: a folder or a Hub id."})
    base_model: str | None = field(default=None, metadata={"help": "Base SAM (default: the one the adapter names)."})
    host: str = field(default="127.0.0.1", metadata={"help": "0.0.0.0 to serve the network (as a Space does)."})
    port: int = field(default=7860)
    share: bool = field(default=False, metadata={"help": "Gradio share link."})


class Segmenter:
    """Both models behind one call: (mask, predicted IoU) for the base and for the adapter."""

    def __init__(self, adapter: str | None = None, base_model: str | None = None, device: str | None = None):
        from infosam_hf import Predictor, builtin
        from infosam_hf.card_results import read_card_results
        from infosam_hf.loading import load_model_or_base

        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        explicit = adapter is not None or base_model is not None
        self.adapter, self.base = builtin.resolve_models(adapter, base_model)
        self.note = "" if self.adapter or explicit else NO_ADAPTER.format(path=builtin.DEFAULT_ADAPTER_DIR)
        self.model, processor = load_model_or_base(self.adapter, self.base, device=self.device)
        self.predictor = Predictor(self.model, processor)
        self.examples = example_images()
        self.card_folder = adapter_folder(self.adapter) if self.adapter else None
        self.card_results = read_card_results(self.card_folder) if self.card_folder else []
        if self.base is None:
            self.base = self.model.peft_config["default"].base_model_name_or_path

    @property
    def has_adapter(self) -> bool:
        return self.adapter is not None

    def _run(self, image, prompt: dict) -> tuple[np.ndarray, float]:
        """(mask, SAM's predicted IoU) with the adapter as currently enabled: the image is encoded in that state."""
        self.predictor.set_image(image)
        points = prompt.get("points") or None
        result = self.predictor.predict(
            boxes=prompt.get("box") or None, points=points, labels=prompt["labels"] if points else None
        )
        return result.masks[0], float(result.scores[0])

    def segment(self, image, prompt: dict) -> dict:
        """{"base": (mask, iou), "adapter": (mask, iou) or None}; prompt in original image pixels."""
        if not self.has_adapter:
            return {"base": self._run(image, prompt), "adapter": None}
        adapter = self._run(image, prompt)
        with self.model.disable_adapter():
            base = self._run(image, prompt)
        return {"base": base, "adapter": adapter}


def parse_prompt(text: str | None, width: int, height: int) -> dict:
    """The JSON prompt field -> {"box": [...] or None, "points": [...], "labels": [...]}, checked against the image."""
    try:
        data = json.loads(text) if text and text.strip() else {}
    except json.JSONDecodeError as err:
        raise ValueError(f"The prompt is not valid JSON ({err.msg}); write e.g. {{\"box\": [10, 10, 60, 60]}}.") from None
    if not isinstance(data, dict) or set(data) - {"box", "points", "labels"}:
        raise ValueError('The prompt is an object with "box", "points" and "labels" only.')
    box, points = data.get("box"), data.get("points") or []
    labels = data.get("labels") if data.get("labels") is not None else [1] * len(points)
    if box is None and not points:
        raise ValueError("No prompt yet: click on the image (points or two box corners), or type a box.")
    if box is not None:
        if len(box) != 4 or box[0] > box[2] or box[1] > box[3]:
            raise ValueError(f"A box is [x1, y1, x2, y2] with x1 <= x2 and y1 <= y2, got {box}.")
        points_to_check = [box[:2], box[2:]]
    else:
        points_to_check = []
    if len(labels) != len(points) or any(label not in (0, 1) for label in labels):
        raise ValueError(f"{len(points)} points need as many labels, each 1 (foreground) or 0 (background); got {labels}.")
    for x, y in points_to_check + list(points):
        if not (0 <= x <= width and 0 <= y <= height):
            raise ValueError(f"({x}, {y}) lies outside the {width}x{height} image.")
    return {"box": [float(v) for v in box] if box is not None else None, "points": [[float(x), float(y)] for x, y in points], "labels": [int(v) for v in labels]}


def add_click(text: str | None, mode: str, x: float, y: float) -> str:
    """The prompt JSON after one click: a point, or a box corner (the 2nd corner completes the box)."""
    try:
        data = json.loads(text) if text and text.strip() else {}
    except json.JSONDecodeError:
        data = {}
    data = data if isinstance(data, dict) else {}
    if mode == MODES[2]:
        corner = data.pop("_corner", None)
        if corner is None:
            data["_corner"] = [x, y]
        else:
            data["box"] = [min(corner[0], x), min(corner[1], y), max(corner[0], x), max(corner[1], y)]
    else:
        data.setdefault("points", []).append([x, y])
        data.setdefault("labels", []).append(1 if mode == MODES[0] else 0)
    return json.dumps(data)


def image_key(image) -> str:
    return hashlib.sha1(np.asarray(image.convert("RGB")).tobytes()).hexdigest()


def example_images(folder: str | None = None) -> dict[str, dict]:
    """Built-in "specialised" then "general" domain samples written as PNGs:
    {content hash: {"path", "mask", "box", "domain"}}."""
    from infosam_hf.builtin import BUILTIN_IMAGE_SIZE
    from infosam_hf.synthetic import make_synthetic_sample

    folder = folder or os.path.join(tempfile.gettempdir(), "infosam-demo-examples")
    os.makedirs(folder, exist_ok=True)
    examples = {}
    for domain, seeds, _ in GALLERY:
        for seed in seeds:
            image, mask = make_synthetic_sample(domain, BUILTIN_IMAGE_SIZE, np.random.default_rng(seed))
            path = os.path.join(folder, f"{domain}-{seed}.png")
            if not os.path.isfile(path):
                image.save(path)
            mask = np.asarray(mask) > 0
            ys, xs = np.nonzero(mask)
            box = [int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1]
            examples[image_key(image)] = {"path": path, "mask": mask, "box": box, "domain": domain}
    return examples


def adapter_folder(adapter: str) -> str:
    """The adapter's folder, where its model card is: the folder given, or the Hub repo's downloaded snapshot."""
    from infosam_hf.loading import resolve_folder

    return adapter if os.path.isdir(adapter) else resolve_folder(adapter)


def card_markdown(segmenter: Segmenter) -> str:
    """The card's figures as a table (set, metric, adapter, zero-shot base), or what is missing and why."""
    if not segmenter.has_adapter:
        return ""
    results = segmenter.card_results
    if not results:
        if not os.path.isfile(os.path.join(segmenter.card_folder, "README.md")):
            return f"No figures from the adapter's model card: `{segmenter.adapter}` has no model card (README.md)."
        return (f"No figures from the adapter's model card: the card of `{segmenter.adapter}` has no `model-index` "
                "metadata (infosam_hf writes it from a run's metrics: `examples/train.py`, `InfoSAMTrainer`).")
    lines = ["**From the adapter's model card** (`model-index`)", "",
             "| set | metric | adapter | zero-shot base |", "| --- | --- | --- | --- |"]
    for entry in results:
        name = f"{entry.dataset} (retention)" if entry.retention else entry.dataset
        for metric, adapter, base in entry.rows:
            lines.append(f"| {name} | {metric} | {_figure(adapter)} | {_figure(base)} |")
    if not any(entry.retention for entry in results):
        lines += ["", "The card has no retention figures: its run scored no retention set (`--retention_dataset`)."]
    return "\n".join(lines)


def _figure(value: float | None) -> str:
    return "–" if value is None else f"{value:.4f}"


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.logical_or(a, b).sum()
    return float(np.logical_and(a, b).sum() / union) if union else 1.0


def build_demo(segmenter: Segmenter):
    import gradio as gr
    from PIL import Image

    from infosam_hf.builtin import builtin_model_path
    from infosam_hf.visualization import mask_to_image, render_overlay

    def segment(image, prompt_text):
        if image is None:
            raise gr.Error("Pick an example or upload an image first.")
        image = Image.open(image).convert("RGB") if isinstance(image, str) else image.convert("RGB")
        try:
            prompt = parse_prompt(prompt_text, image.width, image.height)
        except ValueError as err:
            raise gr.Error(str(err)) from None
        results = segmenter.segment(image, prompt)
        truth = segmenter.examples.get(image_key(image))
        images, lines = [], ["| model | predicted IoU | IoU vs ground truth |", "| --- | --- | --- |"]
        for name, label in (("base", "zero-shot base"), ("adapter", "fine-tuned adapter")):
            if results[name] is None:
                images += [None, None]
                continue
            mask, score = results[name]
            overlay = render_overlay(image, mask, box=prompt["box"], points=prompt["points"] or None, labels=prompt["labels"] or None)
            images += [overlay, mask_to_image(mask)]
            true_iou = f"{_iou(mask, truth['mask']):.3f}" if truth is not None else "n/a (not an example image)"
            lines.append(f"| {label} | {score:.3f} | {true_iou} |")
        if segmenter.note:
            lines.append(f"\n{segmenter.note}")
        return images[0], images[2], "\n".join(lines), images[1], images[3]

    def on_click(image, prompt_text, mode, evt: gr.SelectData):
        text = add_click(prompt_text, mode, float(evt.index[0]), float(evt.index[1]))
        if "_corner" in json.loads(text) or image is None:
            return text, gr.skip(), gr.skip(), gr.skip(), gr.skip(), gr.skip()
        return (text, *segment(image, text))

    on_click.__annotations__["evt"] = gr.SelectData  # a real class: Gradio injects the event by annotation

    title = "InfoSAM: zero-shot SAM vs. the fine-tuned adapter"
    with gr.Blocks(title=title) as demo:
        base = "the built-in sam-tiny-general" if builtin_model_path(segmenter.base) else f"`{segmenter.base}`"
        source = f"adapter `{segmenter.adapter}` on {base}" if segmenter.has_adapter else base
        gr.Markdown(f"# {title}\nModel: {source}. Click on the image to prompt; both models segment the same prompt.")
        if segmenter.note:
            gr.Markdown(f"**{segmenter.note}**", elem_id="note")
        with gr.Row():
            with gr.Column():
                image_in = gr.Image(type="pil", label="Image (click to prompt)", sources=["upload"], elem_id="image-in", height=320)
                mode = gr.Radio(list(MODES), value=MODES[2], label="Click adds", elem_id="mode")
                prompt = gr.Textbox(label="Prompt (JSON, original image pixels)", value="", elem_id="prompt")
                with gr.Row():
                    run = gr.Button("Segment", variant="primary", elem_id="segment")
                    clear = gr.Button("Clear prompt", elem_id="clear")
            base_out = gr.Image(label="Zero-shot base", elem_id="base-out", interactive=False, format="png", height=320)
            tuned_out = gr.Image(label="Fine-tuned adapter", elem_id="tuned-out", interactive=False, format="png", height=320)
        scores = gr.Markdown(elem_id="scores")
        gr.Markdown(card_markdown(segmenter), elem_id="card-figures")
        with gr.Accordion("Binary masks", open=False):
            with gr.Row():
                base_mask = gr.Image(label="Base mask", interactive=False, format="png")
                tuned_mask = gr.Image(label="Adapter mask", interactive=False, format="png")
        outputs = [base_out, tuned_out, scores, base_mask, tuned_mask]
        for domain, _, label in GALLERY:
            gr.Examples(
                [[e["path"], json.dumps({"box": e["box"]})] for e in segmenter.examples.values() if e["domain"] == domain],
                inputs=[image_in, prompt],
                label=label,
            )
        run.click(segment, [image_in, prompt], outputs, api_name="segment")
        prompt.submit(segment, [image_in, prompt], outputs, api_name=False)
        image_in.select(on_click, [image_in, prompt, mode], [prompt, *outputs], api_name=False)
        image_in.upload(lambda: "", None, prompt, api_name=False)
        clear.click(lambda: ("", None, None, "", None, None), None, [prompt, *outputs], api_name=False)
    return demo


def main(argv: list[str] | None = None):
    from transformers import HfArgumentParser

    argv = sys.argv[1:] if argv is None else argv
    (args,) = HfArgumentParser(DemoArguments).parse_args_into_dataclasses(args=argv)
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    try:
        import gradio  # noqa: F401
    except ImportError:
        raise SystemExit('error: the demo needs Gradio: pip install -e ".[demo]" (or pip install gradio).') from None
    segmenter = Segmenter(args.adapter, args.base_model)
    if segmenter.note:
        print(segmenter.note, flush=True)
    build_demo(segmenter).launch(server_name=args.host, server_port=args.port, share=args.share)


if __name__ == "__main__":
    try:
        main()
    except (ValueError, FileNotFoundError, OSError) as error:
        raise SystemExit(f"error: {error}") from error
