"""`BottleneckAdapterConfig`: the paper's bottleneck Adapter as a PEFT config.

The adapter (Houlsby et al. 2019; SAM-Adapter / Medical SAM Adapter for SAM) is what the
InfoSAM paper's best rows use: in each chosen ViT block, the MLP's output (sequential) or
input (parallel) goes through ``down (d -> ratio * d) -> GELU -> up (-> d)`` and is added,
scaled, to the MLP's output. ``up`` starts at zero, so the adapted model starts exactly
equal to the base. It is nonlinear, hence never merged into the base weights.

Which modules are adapted is data, not code, so a SAM family only has to supply its
MLP (and LayerNorm) module patterns: ``target_modules``/``layernorm_modules`` here, or a
default per ``model_type`` in its family's spec (`infosam_hf.models`, `SamFamily.adapter_targets`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from peft.config import PeftConfig

# PEFT 0.21 has a closed `PeftType` enum; a string type works in every code path that reads the
# mappings (see `register.py`). The name says where the method comes from, because it is all PEFT
# shows (KeyError) when someone loads such an adapter without `import infosam_hf`.
PEFT_TYPE = "INFOSAM_BOTTLENECK_ADAPTER"
PREFIX = "bottleneck_"
PLACEMENTS = ("sequential", "parallel")


@dataclass
class BottleneckAdapterConfig(PeftConfig):
    """Bottleneck adapters on a ViT's MLP blocks, optionally trainable LayerNorm copies.

    Args:
        target_modules: the MLP modules that get an adapter: a list of names (exact or
            trailing, as in LoRA) or one regex matched against the whole module name.
            `None`: the default of the model's `model_type` (SAM / SAM-HQ:
            `vision_encoder.layers.<i>.mlp`).
        layers_to_transform: block indices that get an adapter (the paper: all but the
            first two blocks of ViT-B, i.e. 2..11). `None`: every matched block.
        layers_pattern: the name of the module list holding the blocks (`layers` in SAM,
            `blocks` in SAM 2's Hiera); `None`: the first numbered part of the module name.
        ratio: bottleneck width as a fraction of the hidden size (0.25 in the paper).
        bottleneck_dim: an explicit bottleneck width, overriding `ratio`.
        activation: a `transformers.activations.ACT2FN` name (paper: GELU).
        placement: `sequential` (adapter on the MLP's output, added to it) or `parallel`
            (adapter on the MLP's input, added to its output).
        scaling: factor on the adapter's output.
        adapter_dropout: dropout on the adapter's input.
        train_layernorms: also train the encoder's LayerNorms, as trainable copies that
            `disable_adapter()` switches off (so the base, and the shared teacher, stay exact).
        layernorm_modules: the LayerNorms trained with `train_layernorms` (names or one
            regex); `None`: the model type's default (SAM: every encoder and neck LayerNorm).
        modules_to_save: modules trained in full and saved (InfoSAM: `mask_decoder`).
    """

    target_modules: list[str] | str | None = field(
        default=None, metadata={"help": "MLP modules to adapt (names or one regex); None: the model type's default."}
    )
    layers_to_transform: list[int] | int | None = field(
        default=None, metadata={"help": "Block indices to adapt; None: every matched block."}
    )
    layers_pattern: list[str] | str | None = field(
        default=None,
        metadata={"help": "Name of the module list holding the blocks (SAM: layers, SAM 2: blocks); None: the first "
                  "numbered part of the module name."},
    )
    ratio: float = field(default=0.25, metadata={"help": "Bottleneck width / hidden size."})
    bottleneck_dim: int | None = field(default=None, metadata={"help": "Explicit bottleneck width (overrides ratio)."})
    activation: str = field(default="gelu", metadata={"help": "Activation between the projections (ACT2FN name)."})
    placement: str = field(default="sequential", metadata={"help": f"One of {PLACEMENTS}."})
    scaling: float = field(default=1.0, metadata={"help": "Factor on the adapter's output."})
    adapter_dropout: float = field(default=0.0, metadata={"help": "Dropout on the adapter's input."})
    train_layernorms: bool = field(default=False, metadata={"help": "Also train the encoder's LayerNorms (as copies)."})
    layernorm_modules: list[str] | str | None = field(
        default=None, metadata={"help": "LayerNorms trained with train_layernorms; None: the model type's default."}
    )
    modules_to_save: list[str] | None = field(
        default=None, metadata={"help": "Modules trained in full and saved with the adapter (e.g. mask_decoder)."}
    )

    def __post_init__(self):
        # PEFT >= 0.22 refuses `layers_to_transform` beside a regex `target_modules`, because its
        # own tuners would ignore it. This tuner honours it (`model.target_kind` reads the block
        # index from the matched name, and SAM's default targets are regexes), so the check is
        # held off for the parent's validation and the value restored after it.
        layers, self.layers_to_transform = self.layers_to_transform, None
        try:
            super().__post_init__()
        finally:
            self.layers_to_transform = layers
        self.peft_type = PEFT_TYPE
        if isinstance(self.target_modules, (list, tuple, set)):
            self.target_modules = list(self.target_modules)
        if isinstance(self.layers_to_transform, (tuple, set)):
            self.layers_to_transform = sorted(self.layers_to_transform)
        if self.placement not in PLACEMENTS:
            raise ValueError(f"BottleneckAdapterConfig.placement must be one of {PLACEMENTS}, got {self.placement!r}.")
        if self.bottleneck_dim is None and not 0 < self.ratio <= 1:
            raise ValueError(f"BottleneckAdapterConfig.ratio must lie in (0, 1], got {self.ratio}.")
        if self.bottleneck_dim is not None and self.bottleneck_dim < 1:
            raise ValueError(f"BottleneckAdapterConfig.bottleneck_dim must be at least 1, got {self.bottleneck_dim}.")
        if not 0.0 <= self.adapter_dropout < 1.0:
            raise ValueError(f"BottleneckAdapterConfig.adapter_dropout must lie in [0, 1), got {self.adapter_dropout}.")
        from transformers.activations import ACT2FN

        if self.activation not in ACT2FN:
            raise ValueError(
                f"BottleneckAdapterConfig.activation={self.activation!r} is not a transformers activation; use one of "
                f"{', '.join(sorted(ACT2FN))}."
            )

    def width(self, hidden: int) -> int:
        """Bottleneck width for a block of `hidden` features (at least 1)."""
        return self.bottleneck_dim or max(1, int(hidden * self.ratio))
