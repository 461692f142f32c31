"""The evaluation overlays in the experiment tracker a run reports to (`--report_to tensorboard`, or trackio).

The Trainer's tracker integrations log numbers: the loss parts and both metric families (`eval/iou`,
`eval/retention_iou`, ...). A drop of retention IoU says *that* the adapter forgets; the overlay grid of
`EvalOverlayCallback` shows *how* (a mask that no longer follows the box on an ordinary object). So that a user
watches both in the tool they already use, the callback hands its grid to the tracker the Trainer reports to, as
an image at the evaluation's step:

* TensorBoard: through the `SummaryWriter` of the Trainer's own `TensorBoardCallback` (one event file, the same
  steps as the scalars), tag `<metric prefix>/overlays` (`eval/overlays`, `eval_retention/overlays`,
  `zero_shot/overlays`, `zero_shot_retention/overlays`);
* trackio: `trackio.log({tag: trackio.Image(grid)})` once transformers' `TrackioCallback` has started its run.

A callback reaches the Trainer's trackers through its callback handler: `InfoSAMTrainer` links every callback
that asks (`link_trackers`) when it is added; with a plain `Trainer`, call `callback.link_trackers(trainer)`.
Only the main process writes (the integrations hold a writer there only).
"""

from __future__ import annotations

import os
from typing import Any

__all__ = ["TrackerLinkMixin", "log_image", "overlay_tag", "point_tensorboard_at_output_dir"]


def overlay_tag(metric_prefix: str) -> str:
    """The image's tag for an evaluation logged under `metric_prefix` ("eval" -> "eval/overlays")."""
    return f"{metric_prefix}/overlays"


def _integration(callbacks, name: str):
    """The callback of transformers' tracker integration `name` among `callbacks`, or None."""
    from transformers.integrations import integration_utils

    cls = getattr(integration_utils, name, None)  # None: a transformers without this integration
    return next((c for c in callbacks if cls is not None and isinstance(c, cls)), None)


def log_image(callbacks, state, tag: str, image) -> list[str]:
    """Logs a PIL image to the trackers among `callbacks` (a Trainer's `callback_handler.callbacks`); returns the
    names of those it reached. Call it from the main process, after the evaluation's `on_log` (which opens
    TensorBoard's writer)."""
    import numpy as np

    reached = []
    tensorboard = _integration(callbacks, "TensorBoardCallback")
    if tensorboard is not None and tensorboard.tb_writer is not None:  # opened by the evaluation's on_log
        tensorboard.tb_writer.add_image(tag, np.asarray(image.convert("RGB")), state.global_step, dataformats="HWC")
        tensorboard.tb_writer.flush()
        reached.append("tensorboard")
    tracker = _integration(callbacks, "TrackioCallback")
    if tracker is not None and getattr(tracker, "_initialized", True):  # started by the evaluation's on_log
        import trackio

        # transformers logs trackio's scalars with the Trainer's step as "train/global_step"; the image likewise
        trackio.log({tag: trackio.Image(image.convert("RGB")), "train/global_step": state.global_step})
        reached.append("trackio")
    return reached


def point_tensorboard_at_output_dir(callbacks, args) -> None:
    """Sets the `TensorBoardCallback`'s folder to `<output_dir>/runs/<date>_<host>` at once.

    transformers chooses that folder in `on_train_begin`; an evaluation before `train()` (examples/train.py's
    zero-shot one) opens the writer first, with no folder, and PyTorch then writes to `./runs/` in the working
    directory: the zero-shot scalars and images, and every training step's after them, would land outside the run.
    `TENSORBOARD_LOGGING_DIR`, when set, is kept.
    """
    tensorboard = _integration(callbacks, "TensorBoardCallback")
    if tensorboard is not None and tensorboard.logging_dir is None and tensorboard.tb_writer is None:
        from transformers.integrations.integration_utils import default_logdir

        tensorboard.logging_dir = os.path.join(args.output_dir, default_logdir())


class TrackerLinkMixin:
    """For a Trainer: hands its callback handler to each callback with a `link_trackers` method, when it is added
    (in the constructor or by `add_callback`), and points TensorBoard at the run's folder before any evaluation."""

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        point_tensorboard_at_output_dir(self.callback_handler.callbacks, self.args)
        self._link_tracker_callbacks()

    def add_callback(self, callback) -> None:
        super().add_callback(callback)
        self._link_tracker_callbacks()

    def _link_tracker_callbacks(self) -> None:
        for callback in self.callback_handler.callbacks:
            if hasattr(callback, "link_trackers"):
                callback.link_trackers(self)
