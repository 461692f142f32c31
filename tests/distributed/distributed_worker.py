"""A few InfoSAMTrainer steps on a tiny SAM, recording what each process did (launched by test_trainer_ddp.py).

Runs alone (`python tests/distributed/distributed_worker.py ...`, the single-process reference) or
under `accelerate launch` / torchrun (one copy per rank). Every rank writes, into
`--result-dir`:

- `rank{R}.json`: world size, backend, the sample indices of every micro-batch it
  trained on, its local loss parts per step, the Trainer's logged loss per step, and
  every file it wrote under `--output-dir` (Python-level opens for writing, seen by an
  audit hook, plus safetensors and `torch.save` files, whose writes happen in native
  code, seen by wrapping `safetensors.torch.serialize_file` and
  `torch.serialization._open_zipfile_writer`);
- `weights_rank{R}.safetensors`: its trainable weights (adapter + relation module)
  after training, and `initial_rank{R}.safetensors` before.

Flags: `--gather/--no-gather` sets `InfoSAMTrainingArguments.gather_across_processes`.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import torch


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output-dir", required=True, help="The Trainer's output_dir (checkpoints).")
    parser.add_argument("--result-dir", required=True, help="Where each rank writes what it recorded.")
    parser.add_argument("--gather", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--per-device-batch-size", type=int, default=2)
    parser.add_argument("--max-steps", type=int, default=3)
    parser.add_argument("--num-samples", type=int, default=8)
    parser.add_argument("--learning-rate", type=float, default=0.05)
    return parser.parse_args(argv)


class WriteRecorder:
    """Every file a process writes under `root`: Python opens for writing and safetensors files."""

    def __init__(self, root: str):
        self.root = os.path.realpath(root)
        self.writes: list[str] = []
        self.active = True

    def _record(self, path) -> None:
        if not self.active:
            return
        # No try/except: a path this cannot decode fails the write loudly instead of going unrecorded.
        path = os.path.realpath(os.fsdecode(path))
        if path.startswith(self.root + os.sep):
            self.writes.append(os.path.relpath(path, self.root))

    def install(self) -> None:
        def audit(event, args):
            if event == "open" and args and isinstance(args[0], (str, bytes, os.PathLike)):
                mode, flags = args[1], args[2]
                writing = (mode is not None and any(c in mode for c in "wax+")) or (
                    mode is None and flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT)
                )
                if writing:
                    self._record(args[0])

        sys.addaudithook(audit)  # cannot be removed; `active` switches it off

        import safetensors.torch as st

        serialize_file = st.serialize_file

        def recording_serialize_file(tensors, filename, *args, **kwargs):
            self._record(filename)
            return serialize_file(tensors, filename, *args, **kwargs)

        st.serialize_file = recording_serialize_file  # looked up at call time by every save_file

        import torch.serialization as ts

        open_zipfile_writer = ts._open_zipfile_writer

        def recording_open_zipfile_writer(name_or_buffer, *args, **kwargs):
            if isinstance(name_or_buffer, (str, bytes, os.PathLike)):
                self._record(name_or_buffer)  # torch.save(obj, path) writes from C++, unseen by the audit hook
            return open_zipfile_writer(name_or_buffer, *args, **kwargs)

        ts._open_zipfile_writer = recording_open_zipfile_writer


def trainable_state(model) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone().contiguous() for n, p in model.named_parameters() if p.requires_grad}


def main(argv=None) -> None:
    args = parse_args(argv)
    torch.set_num_threads(1)
    recorder = WriteRecorder(args.output_dir)
    recorder.install()

    from safetensors.torch import save_file
    from transformers import SamModel

    from infosam_hf import InfoSAMConfig, InfoSAMModel, InfoSAMTrainer, InfoSAMTrainingArguments, build_student
    from infosam_hf.testing import tiny_sam_config, toy_segmentation_dataset
    from infosam_hf.trainer import LOSS_PARTS

    class RecordingTrainer(InfoSAMTrainer):
        """Records, per training micro-batch, the sample indices and this rank's loss parts."""

        records: list[dict] = []

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            result = super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
            if model.training:
                loss = result[0] if return_outputs else result
                record = {"step": self.state.global_step, "index": inputs["index"].tolist(), "loss": loss.item()}
                record.update({name: self._loss_parts["train"][name][-1] for name in LOSS_PARTS})
                self.records.append(record)
            return result

    torch.manual_seed(0)
    config = InfoSAMConfig()
    model = InfoSAMModel(build_student(SamModel(tiny_sam_config()), config), config)
    data = toy_segmentation_dataset(args.num_samples)
    data = data.add_column("index", list(range(len(data))))  # ignored by the model (**_unused)

    training_args = InfoSAMTrainingArguments(
        gather_across_processes=args.gather,
        output_dir=args.output_dir,
        use_cpu=True,
        # gloo whenever launched as several processes; in a plain single process accelerate 1.15 fails on
        # `use_cpu=True, ddp_backend="gloo"` (it calls get_world_size() with no process group).
        ddp_backend="gloo" if int(os.environ.get("WORLD_SIZE", "1")) > 1 else None,
        per_device_train_batch_size=args.per_device_batch_size,
        max_steps=args.max_steps,
        learning_rate=args.learning_rate,
        optim="sgd",
        lr_scheduler_type="constant",
        logging_steps=1,
        save_strategy="steps",
        save_steps=args.max_steps,
        report_to=[],
        seed=0,
        dataloader_num_workers=0,
        disable_tqdm=True,
    )
    trainer = RecordingTrainer(model=model, args=training_args, train_dataset=data)
    initial = trainable_state(model)
    trainer.train()
    recorder.active = False

    import torch.distributed as dist

    distributed = dist.is_available() and dist.is_initialized()
    rank = training_args.process_index
    result = {
        "rank": rank,
        "world_size": training_args.world_size,
        "torch_distributed_world_size": dist.get_world_size() if distributed else 1,
        "backend": dist.get_backend() if distributed else None,
        "distributed_type": str(trainer.accelerator.distributed_type),
        "parallel_mode": str(training_args.parallel_mode),
        "gather": args.gather,
        "per_device_batch_size": args.per_device_batch_size,
        "records": RecordingTrainer.records,
        "logged_loss": {e["step"]: e["loss"] for e in trainer.state.log_history if "loss" in e},
        "logged_parts": {
            e["step"]: {k: e[k] for k in LOSS_PARTS} for e in trainer.state.log_history if "loss_seg" in e
        },
        "writes": recorder.writes,
        "pid": os.getpid(),
    }
    os.makedirs(args.result_dir, exist_ok=True)
    save_file(initial, os.path.join(args.result_dir, f"initial_rank{rank}.safetensors"))
    save_file(trainable_state(model), os.path.join(args.result_dir, f"weights_rank{rank}.safetensors"))
    with open(os.path.join(args.result_dir, f"rank{rank}.json"), "w", encoding="utf-8") as f:
        json.dump(result, f, indent=1)


if __name__ == "__main__":
    main()
