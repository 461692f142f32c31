"""Issue 30, point 6: with `--report_to tensorboard` (or trackio) the overlay grid of every evaluation, of the target
set and of the retention set, is logged as an image beside the loss parts and both metric families, so that a user
watches forgetting happen in the tracker they already use. Read back from TensorBoard's event files (and trackio's
local store). A 2-step examples/train.py run of the built-in SAM on a few synthetic images, evaluated at each step."""

import io
import json
import os
import subprocess
import sys

import numpy as np
import pytest
from helpers import ROOT, load_example, write_target_and_retention
from PIL import Image

from infosam_hf.callbacks import EvalOverlayCallback, RetentionOverlayCallback, _metric_prefix

# each image tag and the eval_overlays/ folder of each of its steps (the final evaluation repeats step 2)
FOLDERS = {
    "zero_shot/overlays": {0: "step-0-zero_shot"},
    "zero_shot_retention/overlays": {0: "step-0-zero_shot_retention"},
    "eval/overlays": {1: "step-1", 2: "step-2"},
    "eval_retention/overlays": {1: "step-1-retention", 2: "step-2-retention"},
}
TRAIN_FLAGS = ["--max_steps", "2", "--eval_strategy", "steps", "--eval_steps", "1", "--logging_steps", "1",
               "--per_device_train_batch_size", "4", "--learning_rate", "1e-2", "--warmup_steps", "0", "--lora_r",
               "2", "--eval_overlays", "2", "--disable_tqdm", "true"]
STEPS = {"zero_shot/overlays": [0], "zero_shot_retention/overlays": [0], "eval/overlays": [1, 2, 2],
         "eval_retention/overlays": [1, 2, 2]}


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return write_target_and_retention(tmp_path_factory.mktemp("tracking-data"))


def _train(data, out, *flags):
    return load_example("train").main(
        ["--dataset_name", data["target"], "--retention_dataset", data["retention"], "--output_dir", str(out),
         *TRAIN_FLAGS, *flags]
    )


def _decoded(png: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(png)).convert("RGB"))


def _grid(out, folder) -> np.ndarray:
    return np.asarray(Image.open(out / "eval_overlays" / folder / "grid.png").convert("RGB"))


def test_tensorboard_logs_every_evaluations_overlays_beside_the_loss_parts_and_both_metric_families(
    data, tmp_path, monkeypatch
):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    monkeypatch.chdir(tmp_path)
    out = tmp_path / "run"
    summary = _train(data, out, "--report_to", "tensorboard")
    # The zero-shot evaluation runs before train(): its writer opens in the run's folder, not in ./runs
    assert sorted(os.listdir(tmp_path)) == ["run"]
    (logdir,) = (out / "runs").iterdir()
    events = EventAccumulator(str(logdir), size_guidance={"images": 0, "scalars": 0})
    events.Reload()

    images = {tag: events.Images(tag) for tag in events.Tags()["images"]}
    assert {tag: [e.step for e in logged] for tag, logged in images.items()} == STEPS
    for tag, logged in images.items():
        for event in logged:  # the grid saved at that step, pixel for pixel, at a grid's size (2 images + legend)
            saved = _grid(out, FOLDERS[tag][event.step])
            assert (event.height, event.width) == saved.shape[:2] and event.width > 2 * 128 > event.height / 2
            np.testing.assert_array_equal(_decoded(event.encoded_image_string), saved)
    assert not np.array_equal(_grid(out, "step-2"), _grid(out, "step-2-retention"))  # two sets, two pictures
    assert not np.array_equal(_grid(out, "step-0-zero_shot_retention"), _grid(out, "step-2-retention"))  # it trained

    scalars = {tag: [(e.step, e.value) for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]}
    for part in ("loss_seg", "loss_r", "loss_d"):
        assert [step for step, _ in scalars[f"train/{part}"]] == [1, 2]
        assert [step for step, _ in scalars[f"eval/{part}"]] == [1, 2, 2]
    for name in ("iou", "dice"):  # both families, at the steps of the images
        assert [step for step, _ in scalars[f"eval/{name}"]] == [step for step, _ in scalars[f"eval/retention_{name}"]]
        assert scalars[f"eval/{name}"][-1][1] == pytest.approx(summary[name])
        assert scalars[f"eval/retention_{name}"][-1][1] == pytest.approx(summary[f"retention_{name}"])
        assert scalars[f"train/zero_shot_{name}"] == [(0, pytest.approx(summary[f"zero_shot_{name}"]))]
        assert scalars[f"train/zero_shot_retention_{name}"] == [
            (0, pytest.approx(summary[f"zero_shot_retention_{name}"]))
        ]


@pytest.mark.slow  # two processes and trackio's store: ~25 s alone, more on shared cores
@pytest.mark.extras  # the trackio extra: pip install -e ".[trackio]"
def test_trackio_logs_the_overlays_at_the_trainer_steps(data, tmp_path):
    """In processes of their own: trackio reads its local store's folder (TRACKIO_DIR) once, at import."""
    pytest.importorskip("trackio", reason='the trackio extra is not installed: pip install -e ".[trackio]"')
    store, out = tmp_path / "trackio", tmp_path / "run"
    env = dict(os.environ, TRACKIO_DIR=str(store), PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    flags = ["--dataset_name", data["target"], "--retention_dataset", data["retention"], "--output_dir", str(out),
             *TRAIN_FLAGS, "--report_to", "trackio", "--project", "infosam-test", "--run_name", "overlays"]
    subprocess.run([sys.executable, str(ROOT / "examples" / "train.py"), *flags], env=env, cwd=tmp_path, check=True,
                   capture_output=True)
    read = ("import json; from trackio.sqlite_storage import SQLiteStorage; "
            "print(json.dumps(SQLiteStorage.get_logs('infosam-test', 'overlays')))")
    entries = json.loads(subprocess.run([sys.executable, "-c", read], env=env, check=True, capture_output=True,
                                        text=True).stdout.splitlines()[-1])
    steps = {}
    for entry in entries:
        for tag in [key for key in entry if key.endswith("/overlays")]:
            step = entry["train/global_step"]  # the Trainer's step, as transformers logs trackio's scalars
            steps.setdefault(tag, []).append(step)
            image = Image.open(store / "media" / entry[tag]["file_path"]).convert("RGB")
            np.testing.assert_array_equal(np.asarray(image), _grid(out, FOLDERS[tag][step]))
    assert steps == STEPS


def test_overlay_callbacks_draw_the_set_each_evaluation_scored():
    """The metric prefix is the evaluation's, not the retention set's (whose `_runtime` key comes first), and the
    retention callback skips an evaluation that did not score its set."""
    both = {"eval_iou": 0.9, "eval_retention_iou": 0.8, "eval_retention_runtime": 0.1, "eval_runtime": 0.3}
    zero_shot = {"zero_shot_retention_runtime": 0.1, "zero_shot_runtime": 0.3}
    assert _metric_prefix(both) == "eval" and _metric_prefix(zero_shot) == "zero_shot"
    rows = [{"image": np.zeros((8, 8, 3), np.uint8), "mask": np.eye(8, dtype=np.uint8)}]
    target, retention = EvalOverlayCallback(rows), RetentionOverlayCallback(rows)
    assert target._evaluated_prefix(both) == "eval" and retention._evaluated_prefix(both) == "eval_retention"
    assert retention._evaluated_prefix(zero_shot) == "zero_shot_retention"
    only_target = {"check_iou": 0.9, "check_runtime": 0.3}  # trainer.evaluate(eval_dataset=..., metric_key_prefix=)
    assert target._evaluated_prefix(only_target) == "check" and retention._evaluated_prefix(only_target) is None
