"""Optimizer, scheduler, scaler and RNG states as safetensors + JSON instead of `torch.save` pickles.

Why: the stock Trainer writes `optimizer.pt`, `scheduler.pt`, `scaler.pt` and
`rng_state*.pth` with `torch.save`. Those are pickles: they cannot be published under our
"safetensors only" rule, so a checkpoint pushed to the Hub (`hub_strategy="checkpoint"`)
would resume without its optimizer state. Written this way, a checkpoint holds no pickle
at all and resumes completely from a local folder or a Hub snapshot.

A state is any nesting of dicts, lists, tuples, tensors, numpy arrays and JSON scalars
(what `Optimizer.state_dict()`, `LRScheduler.state_dict()`, `GradScaler.state_dict()`,
`random.getstate()` and `np.random.get_state()` return). Tensors and arrays go into the
safetensors body; the structure, with references to them, goes into its JSON metadata, so
types that JSON flattens (tuples, integer dict keys, array dtypes) come back as they were.
"""

from __future__ import annotations

import json
import os
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file

STRUCTURE_KEY = "infosam_state"


class UnsupportedStateError(TypeError):
    """A value that neither safetensors nor JSON can hold (the caller falls back to the stock format)."""


def _flatten(value: Any, tensors: dict[str, torch.Tensor]) -> Any:
    if isinstance(value, torch.Tensor):
        key = f"t{len(tensors)}"
        tensors[key] = value.detach().cpu().contiguous()
        return {"__tensor__": key}
    if isinstance(value, np.ndarray):
        key = f"t{len(tensors)}"
        tensors[key] = torch.from_numpy(value.astype(np.int64) if value.dtype.kind in "iu" else value.copy())
        return {"__ndarray__": key, "dtype": value.dtype.str}
    if isinstance(value, dict):
        return {"__dict__": [[_flatten(k, tensors), _flatten(v, tensors)] for k, v in value.items()]}
    if isinstance(value, tuple):
        return {"__tuple__": [_flatten(v, tensors) for v in value]}
    if isinstance(value, list):
        return [_flatten(v, tensors) for v in value]
    if isinstance(value, float) and not np.isfinite(value):
        return {"__float__": repr(value)}  # inf / nan, which JSON cannot spell
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, (np.integer, np.floating, np.bool_)):
        return _flatten(value.item(), tensors)
    raise UnsupportedStateError(f"cannot store a {type(value).__name__} ({value!r:.80}) as safetensors/JSON")


def _unflatten(value: Any, tensors: dict[str, torch.Tensor]) -> Any:
    if isinstance(value, list):
        return [_unflatten(v, tensors) for v in value]
    if not isinstance(value, dict):
        return value
    if "__tensor__" in value:
        return tensors[value["__tensor__"]]
    if "__ndarray__" in value:
        return tensors[value["__ndarray__"]].numpy().astype(np.dtype(value["dtype"]))
    if "__dict__" in value:
        return {_unflatten(k, tensors): _unflatten(v, tensors) for k, v in value["__dict__"]}
    if "__tuple__" in value:
        return tuple(_unflatten(v, tensors) for v in value["__tuple__"])
    if "__float__" in value:
        return float(value["__float__"])
    raise ValueError(f"Unknown entry in a saved training state: {sorted(value)}")


def encode_state(state: Any) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """(tensors, metadata) for `save_file`; raises UnsupportedStateError for what neither can hold."""
    tensors: dict[str, torch.Tensor] = {}
    structure = _flatten(state, tensors)
    return tensors, {STRUCTURE_KEY: json.dumps(structure), "format": "pt"}


def save_state(state: Any, path: str | os.PathLike) -> None:
    """Write `state` to `path` (a .safetensors file). Raises UnsupportedStateError before writing anything."""
    tensors, metadata = encode_state(state)
    save_file(tensors, os.fspath(path), metadata=metadata)


def load_state(path: str | os.PathLike, device: str | torch.device = "cpu") -> Any:
    from safetensors import safe_open

    path = os.fspath(path)
    with safe_open(path, framework="pt") as f:
        metadata = f.metadata() or {}
    if STRUCTURE_KEY not in metadata:
        raise ValueError(f"{path} is not a training state written by infosam_hf (no {STRUCTURE_KEY!r} metadata).")
    return _unflatten(json.loads(metadata[STRUCTURE_KEY]), load_file(path, device=str(device)))


OPTIMIZER_STATE_NAME = "optimizer.safetensors"
SCHEDULER_STATE_NAME = "scheduler.safetensors"
SCALER_STATE_NAME = "scaler.safetensors"


def rng_state_name(world_size: int, process_index: int) -> str:
    return "rng_state.safetensors" if world_size <= 1 else f"rng_state_{process_index}.safetensors"


def collator_state_name(world_size: int, process_index: int) -> str:
    return "data_collator_state.json" if world_size <= 1 else f"data_collator_state_{process_index}.json"


class SafetensorsTrainingStateMixin:
    """`transformers.Trainer` checkpoints without pickles: put before `Trainer` in the bases.

    Covers single-process and DDP training on CPU/CUDA. DeepSpeed, FSDP, XLA, SageMaker MP
    and the other accelerators' RNGs keep the stock format (they have their own savers),
    as does any state that holds something safetensors/JSON cannot (with a warning).
    Checkpoints in the stock format still resume.
    """

    def _plain_training_state(self) -> bool:
        from transformers.utils import (
            is_sagemaker_mp_enabled,
            is_torch_hpu_available,
            is_torch_mlu_available,
            is_torch_musa_available,
            is_torch_npu_available,
            is_torch_xla_available,
        )

        return not (
            self.is_deepspeed_enabled
            or self.is_fsdp_enabled
            or is_sagemaker_mp_enabled()
            or is_torch_xla_available()
            or is_torch_npu_available()
            or is_torch_hpu_available()
            or is_torch_mlu_available()
            or is_torch_musa_available()
        )

    def _save_states_or_fallback(self, states: dict[str, Any], output_dir: str, stock_saver) -> None:
        """Write every (file name -> state) as safetensors, or all with the stock saver if one cannot be."""
        try:
            encoded = {name: encode_state(state) for name, state in states.items()}
        except UnsupportedStateError as err:
            import warnings

            warnings.warn(f"Saving this training state with torch.save, as transformers does: {err}.", stacklevel=3)
            return stock_saver(output_dir)
        os.makedirs(output_dir, exist_ok=True)  # a rank may get here before rank 0 made the folder
        for name, (tensors, metadata) in encoded.items():
            save_file(tensors, os.path.join(output_dir, name), metadata=metadata)

    # ------------------------------------------------------------------ optimizer + scheduler
    def _save_optimizer_and_scheduler(self, output_dir: str) -> None:
        if not self._plain_training_state():
            return super()._save_optimizer_and_scheduler(output_dir)
        if not self.args.should_save:
            return
        states = {OPTIMIZER_STATE_NAME: self.optimizer.state_dict()}
        if self.lr_scheduler is not None:
            states[SCHEDULER_STATE_NAME] = self.lr_scheduler.state_dict()
        self._save_states_or_fallback(states, output_dir, super()._save_optimizer_and_scheduler)

    def _load_optimizer_and_scheduler(self, checkpoint: str | None) -> None:
        path = None if checkpoint is None else os.path.join(checkpoint, OPTIMIZER_STATE_NAME)
        if path is None or not self._plain_training_state() or not os.path.isfile(path):
            return super()._load_optimizer_and_scheduler(checkpoint)
        args = self.args
        # As the stock Trainer: on CPU with one process, straight onto the parameters' devices otherwise.
        device = args.device if args.world_size > 1 and args.device.type != "cpu" else "cpu"
        self.optimizer.load_state_dict(load_state(path, device))
        scheduler = os.path.join(checkpoint, SCHEDULER_STATE_NAME)
        if self.lr_scheduler is not None and os.path.isfile(scheduler):
            self.lr_scheduler.load_state_dict(load_state(scheduler))

    # ------------------------------------------------------------------ gradient scaler (fp16)
    def _save_scaler(self, output_dir: str) -> None:
        scaler = getattr(self.accelerator, "scaler", None)
        if scaler is None or not self._plain_training_state():
            return super()._save_scaler(output_dir)
        if self.args.should_save:
            self._save_states_or_fallback({SCALER_STATE_NAME: scaler.state_dict()}, output_dir, super()._save_scaler)

    def _load_scaler(self, checkpoint: str | None) -> None:
        path = None if checkpoint is None else os.path.join(checkpoint, SCALER_STATE_NAME)
        scaler = getattr(self.accelerator, "scaler", None)
        if path is None or scaler is None or not os.path.isfile(path):
            return super()._load_scaler(checkpoint)
        scaler.load_state_dict(load_state(path))

    # ------------------------------------------------------------------ the collator's random prompts
    def _save_collator_state(self, output_dir: str) -> None:
        """The training collator's own random state (its prompt sampler), one JSON file per process.

        Kept apart from the RNG file: it is restored before the resumed run collates its first batch
        (`_load_collator_state`), where the Trainer restores the global RNGs only after that batch.
        """
        state_dict = getattr(self.data_collator, "state_dict", None)
        if not callable(state_dict):
            return
        consumed = getattr(self, "_train_batches_consumed", None)  # the data loader collates ahead of training
        try:
            state = state_dict(batches_consumed=consumed)
        except TypeError:  # a collator of the user's with a plain state_dict()
            state = state_dict()
        os.makedirs(output_dir, exist_ok=True)  # every rank writes its own, maybe before rank 0 made the folder
        path = os.path.join(output_dir, collator_state_name(self.args.world_size, self.args.process_index))
        with open(path, "w", encoding="utf-8") as f:
            json.dump(state, f)

    def _load_collator_state(self, checkpoint: str) -> None:
        load_state_dict = getattr(self.data_collator, "load_state_dict", None)
        path = os.path.join(checkpoint, collator_state_name(self.args.world_size, self.args.process_index))
        if callable(load_state_dict) and os.path.isfile(path):
            with open(path, encoding="utf-8") as f:
                load_state_dict(json.load(f))
            self._train_batches_consumed = 0  # counted again from the restored state

    # ------------------------------------------------------------------ RNG
    def _save_rng_state(self, output_dir: str) -> None:
        import random

        from transformers.training_args import ParallelMode

        self._save_collator_state(output_dir)
        if not self._plain_training_state():
            return super()._save_rng_state(output_dir)
        states = {"python": random.getstate(), "numpy": np.random.get_state(), "cpu": torch.random.get_rng_state()}
        if torch.cuda.is_available():
            distributed = self.args.parallel_mode == ParallelMode.DISTRIBUTED
            states["cuda"] = torch.cuda.random.get_rng_state_all() if distributed else torch.cuda.random.get_rng_state()
        name = rng_state_name(self.args.world_size, self.args.process_index)
        self._save_states_or_fallback({name: states}, output_dir, super()._save_rng_state)

    def _load_rng_state(self, checkpoint: str | None) -> None:
        import random

        from transformers.trainer_pt_utils import set_rng_state_for_device
        from transformers.training_args import ParallelMode

        path = None
        if checkpoint is not None:
            path = os.path.join(checkpoint, rng_state_name(self.args.world_size, self.args.process_index))
        if path is None or not self._plain_training_state() or not os.path.isfile(path):
            return super()._load_rng_state(checkpoint)
        states = load_state(path)
        random.setstate(states["python"])
        np.random.set_state(states["numpy"])
        torch.random.set_rng_state(states["cpu"])
        if torch.cuda.is_available() and "cuda" in states:
            distributed = self.args.parallel_mode == ParallelMode.DISTRIBUTED
            set_rng_state_for_device("CUDA", torch.cuda, states, distributed)
