"""The built-in default: a tiny SAM pre-trained on a synthetic domain, and the data to fine-tune it on.

Real SAM weights and the benchmark sets cannot be downloaded everywhere (CI, air-gapped
machines), so infosam-hf ships a small, honest stand-in that exercises the same code:
`sam-tiny-general` (made by examples/pretrain_builtin_sam.py, committed) segments the
synthetic "general" domain from box prompts; fine-tuning adapts it to the shifted
"specialised" domain. `configs.py` holds the two models' architectures.
"""

from __future__ import annotations

import os

from .configs import builtin_sam2_config, builtin_sam_config  # noqa: F401  (the shipped models' architectures)

BUILTIN_MODEL_PATH = os.path.join(os.path.dirname(__file__), "sam-tiny-general")
# The same stand-in for SAM 2 (examples/pretrain_builtin_sam2.py): `examples/train.py --builtin_model sam2`.
BUILTIN_SAM2_PATH = os.path.join(os.path.dirname(__file__), "sam2-tiny-general")
BUILTIN_MODELS = {"sam": BUILTIN_MODEL_PATH, "sam2": BUILTIN_SAM2_PATH}
BUILTIN_IMAGE_SIZE = 128
BUILTIN_TRAIN_SAMPLES = 2000
BUILTIN_TEST_SAMPLES = 200


# examples/train.py's default --output_dir: where the evaluation and prediction scripts look for an adapter.
DEFAULT_ADAPTER_DIR = os.path.join("outputs", "infosam-builtin")


def resolve_models(
    adapter: str | None, base_model: str | None = None, model_name_or_path: str | None = None
) -> tuple[str | None, str | None]:
    """(adapter, base) a script should load, given its flags; no model flag at all = the built-in default.

    `model_name_or_path` is the transformers-style alias of `base_model` (both accepted, they
    must agree). The default is the built-in SAM with the adapter `examples/train.py` wrote
    to `DEFAULT_ADAPTER_DIR`, if there is one, else the built-in SAM zero-shot.
    """
    if model_name_or_path and base_model and model_name_or_path != base_model:
        raise ValueError(
            f"--model_name_or_path {model_name_or_path!r} and --base_model {base_model!r} name different base "
            "models; pass one of them."
        )
    base = base_model or model_name_or_path
    if adapter is None and base is None:
        base = BUILTIN_MODEL_PATH
        if os.path.isfile(os.path.join(DEFAULT_ADAPTER_DIR, "adapter_config.json")):
            adapter = DEFAULT_ADAPTER_DIR
    return adapter, base


def builtin_model_path(recorded: str | os.PathLike | None) -> str | None:
    """This install's copy of a built-in model recorded under another install's path, else None.

    An adapter trained on the built-in model records the absolute path of the
    infosam_hf that trained it (PEFT's `base_model_name_or_path`); on any other machine
    or virtual environment that path does not exist, but the same weights ship here.
    """
    if not recorded:
        return None
    parts = os.path.normpath(os.fspath(recorded)).replace("\\", "/").split("/")
    if len(parts) >= 3 and parts[-3:-1] == ["infosam_hf", "builtin"]:
        for path in BUILTIN_MODELS.values():
            if parts[-1] == os.path.basename(path):
                return path
    return None


def builtin_dataset_path(domain: str = "specialised", seed: int = 0, max_objects: int = 1) -> str:
    """Writes the synthetic domain's parquet shards once (in the cache dir) and returns the folder.

    `max_objects` > 1: the multi-object variant (instance-id masks, read with `instance_format="ids"`)."""
    from ..synthetic import ensure_synthetic_dataset

    return str(
        ensure_synthetic_dataset(
            domain,
            num_train=BUILTIN_TRAIN_SAMPLES,
            num_test=BUILTIN_TEST_SAMPLES,
            image_size=BUILTIN_IMAGE_SIZE,
            seed=seed,
            max_objects=max_objects,
        )
    )
