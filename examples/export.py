"""Merge an InfoSAM adapter into its base SAM and save a standalone model folder (optionally push it).

    python examples/export.py                                  # outputs/infosam-builtin -> outputs/infosam-builtin-merged
    python examples/export.py --adapter you/sam-polyp-infosam --output_dir sam-polyp-merged
    python examples/export.py --adapter outputs/run --output_dir merged --push_to_hub --hub_model_id you/sam-polyp-merged

The folder holds `config.json`, `model.safetensors`, the processor config and a README.md (with --onnx also
`onnx/encoder.onnx` and `onnx/prompt_encoder_mask_decoder.onnx`, for one image and one box; SAM only); it
loads with `SamModel.from_pretrained` / `SamProcessor.from_pretrained` alone (no peft, no
infosam_hf) and runs `transformers.pipeline("mask-generation", model=<folder>)`. Adapters of the other
families export the same way to their own class (`SamHQModel`, `Sam2Model`, `Sam3TrackerModel`,
`EdgeTamModel`). A non-empty --output_dir is refused unless --overwrite. Adapters that are not a weight delta (e.g. a
bottleneck adapter) cannot be merged: the script says so and how to use them unmerged.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field

from transformers import HfArgumentParser

from infosam_hf.builtin import DEFAULT_ADAPTER_DIR


@dataclass
class ExportArguments:
    adapter: str = field(
        default=DEFAULT_ADAPTER_DIR, metadata={"help": "InfoSAM/PEFT adapter: a folder or a Hub id (default: the main job's)."}
    )
    output_dir: str | None = field(default=None, metadata={"help": "Default: <adapter folder>-merged."})
    base_model: str | None = field(
        default=None, metadata={"help": "Merge into this base instead of the one in adapter_config.json."}
    )
    overwrite: bool = field(default=False, metadata={"help": "Write into a non-empty --output_dir."})
    push_to_hub: bool = field(default=False, metadata={"help": "Upload the exported folder to --hub_model_id."})
    hub_model_id: str | None = field(default=None, metadata={"help": "owner/name of the Hub repo to push to."})
    hub_private_repo: bool | None = field(default=None, metadata={"help": "Create the Hub repo as private."})
    revision: str | None = field(default=None, metadata={"help": "Revision of a Hub adapter."})
    onnx: bool = field(
        default=False,
        metadata={"help": "Also write <output_dir>/onnx/: encoder + prompt-encoder/mask-decoder, checked against PyTorch (pip install -e '.[onnx]')."},
    )


def main(argv: list[str] | None = None) -> str:
    argv = sys.argv[1:] if argv is None else argv
    (args,) = HfArgumentParser(ExportArguments).parse_args_into_dataclasses(args=argv)
    from infosam_hf.export import export

    if args.adapter == DEFAULT_ADAPTER_DIR and not os.path.isdir(DEFAULT_ADAPTER_DIR):
        raise FileNotFoundError(
            f"No adapter at {DEFAULT_ADAPTER_DIR}: run `python examples/train.py` first, or pass --adapter <folder or Hub id>."
        )
    output_dir = args.output_dir or os.path.basename(os.path.normpath(args.adapter)) + "-merged"
    if args.output_dir is None and os.path.isdir(args.adapter):
        output_dir = os.path.normpath(args.adapter) + "-merged"
    merged = export(
        args.adapter,
        output_dir,
        base_model=args.base_model,
        overwrite=args.overwrite,
        push_to_hub=args.push_to_hub,
        repo_id=args.hub_model_id,
        private=args.hub_private_repo,
        revision=args.revision,
    )
    print(f"Standalone model written to {output_dir}: {type(merged).__name__}.from_pretrained({output_dir!r})")
    if args.onnx:
        from infosam_hf.export import CannotExportOnnxError, export_onnx

        try:
            report = export_onnx(merged, os.path.join(output_dir, "onnx"))
        except CannotExportOnnxError as error:
            raise SystemExit(f"error: {error} (the merged model is in {output_dir}; no ONNX files were written)") from None
        for name, values in report.items():
            print(f"ONNX {name}: max |onnxruntime - torch| = {values['max_abs_diff']:.3g} (values up to {values['max_abs']:.3g})")
    if args.push_to_hub:
        print(f"Pushed to {args.hub_model_id}")
    return output_dir


if __name__ == "__main__":
    from infosam_hf.export import CannotMergeError

    try:
        main()
    except (ValueError, FileNotFoundError, FileExistsError, CannotMergeError) as error:
        raise SystemExit(f"error: {error}") from error
