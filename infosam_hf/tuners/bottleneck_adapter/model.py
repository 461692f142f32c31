"""`BottleneckAdapterModel`: the PEFT tuner that places bottleneck adapters (and LayerNorm copies).

Matching is by module name only, so a new SAM family needs no code here: its spec in
`infosam_hf.models` names its `adapter_targets` (MLP pattern, LayerNorm pattern), or the
config passes `target_modules`/`layernorm_modules`.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

from peft.tuners.tuners_utils import BaseTuner
from torch import nn

from ...models import adapter_default_targets, family_for_model_type
from .config import PREFIX, BottleneckAdapterConfig
from .layer import NOT_MERGEABLE, BottleneckAdaptedLayerNorm, BottleneckAdapterLayer, BottleneckAdapterMLP


class _DefaultTargets(Mapping):
    """model_type -> (MLP modules, LayerNorm modules): a read-only view of the family registry
    (`infosam_hf.models`, each spec's `adapter_targets`), read at every lookup; kept under its old name."""

    def __getitem__(self, model_type: str) -> tuple[str, str]:
        return adapter_default_targets()[model_type]

    def __iter__(self):
        return iter(adapter_default_targets())

    def __len__(self) -> int:
        return len(adapter_default_targets())

    def __repr__(self) -> str:
        return f"DEFAULT_TARGETS({adapter_default_targets()!r})"


DEFAULT_TARGETS: Mapping[str, tuple[str, str]] = _DefaultTargets()


def _matches(patterns, key: str) -> bool:
    if not patterns:
        return False
    if isinstance(patterns, str):
        return re.fullmatch(patterns, key) is not None
    return any(key == p or key.endswith(f".{p}") for p in patterns)


def _layer_index(key: str, layers_pattern) -> int | None:
    patterns = [layers_pattern] if isinstance(layers_pattern, str) else list(layers_pattern or [r"[^.]+"])
    for pattern in patterns:
        match = re.match(rf"(?:^|.*?\.){pattern}\.(\d+)(?:\.|$)", key)
        if match:
            return int(match.group(1))
    return None


def _under(modules, key: str) -> bool:
    return any(re.match(rf"(^|.*\.){re.escape(m)}($|\..*)", key) for m in modules or ())


def target_kind(config: BottleneckAdapterConfig, key: str) -> str | None:
    """'mlp', 'layernorm' or None: what the module called `key` receives under `config`."""
    if _under(config.modules_to_save, key):  # a module trained in full is never also adapted (PEFT's rule)
        return None
    if _matches(config.target_modules, key):
        layers = config.layers_to_transform
        if layers is None or (isinstance(layers, list) and not layers):
            return "mlp"
        index = _layer_index(key, config.layers_pattern)
        wanted = [layers] if isinstance(layers, int) else layers
        return "mlp" if index is not None and index in wanted else None
    if config.train_layernorms and _matches(config.layernorm_modules, key):
        return "layernorm"
    return None


class BottleneckAdapterModel(BaseTuner):
    """Bottleneck adapters on a transformer's MLP blocks; see `BottleneckAdapterConfig`.

    Built by `peft.get_peft_model(model, BottleneckAdapterConfig(...))` once `infosam_hf` is
    imported (which registers the method with PEFT).
    """

    prefix: str = PREFIX
    tuner_layer_cls = BottleneckAdapterLayer

    @property
    def target_module_mapping(self) -> dict[str, str]:  # PEFT's name for the defaults; ours also hold LayerNorms
        return {model_type: mlp for model_type, (mlp, _) in DEFAULT_TARGETS.items()}

    def _prepare_adapter_config(self, peft_config: BottleneckAdapterConfig, model_config: dict):
        model_type = model_config.get("model_type")
        family = family_for_model_type(model_type)
        defaults = family.adapter_targets if family is not None else None
        missing = [
            field
            for field, needed in (("target_modules", True), ("layernorm_modules", peft_config.train_layernorms))
            if needed and getattr(peft_config, field) is None
        ]
        if missing and family is not None and family.adapter_unsupported:
            raise ValueError(
                f"The bottleneck Adapter cannot adapt {family.adapter_unsupported}: use LoRA instead "
                "(--peft_method lora, PeftArguments(peft_method='lora')), which targets its attention projections."
            )
        if missing and defaults is None:
            raise ValueError(
                f"BottleneckAdapterConfig has no default {' and '.join(missing)} for model_type {model_type!r} (known: "
                f"{', '.join(sorted(DEFAULT_TARGETS))}). Name the MLP blocks with a regex over the module names "
                r"(examples/train.py --adapter_target_modules 'vision_encoder\.layers\.\d+\.mlp'; in Python "
                f"{missing[0]}=...), or use LoRA (--peft_method lora)."
            )
        if peft_config.target_modules is None:
            peft_config.target_modules = defaults[0]
        if peft_config.train_layernorms and peft_config.layernorm_modules is None:
            peft_config.layernorm_modules = defaults[1]
        return peft_config

    @staticmethod
    def _check_target_module_exists(peft_config: BottleneckAdapterConfig, key: str) -> bool:
        return target_kind(peft_config, key) is not None

    def _create_and_replace(
        self,
        peft_config: BottleneckAdapterConfig,
        adapter_name: str,
        target: nn.Module,
        target_name: str,
        parent: nn.Module,
        current_key: str,
        **kwargs,
    ) -> None:
        if isinstance(target, BottleneckAdapterLayer):
            target.update_layer(adapter_name, peft_config)
            return
        layer_cls = BottleneckAdapterMLP if target_kind(peft_config, current_key) == "mlp" else BottleneckAdaptedLayerNorm
        new_module = layer_cls(target, adapter_name, peft_config)
        if adapter_name not in self.active_adapters:
            new_module.requires_grad_(False)
        self._replace_module(parent, target_name, new_module, target)

    def _replace_module(self, parent: nn.Module, child_name: str, new_module: nn.Module, child: nn.Module) -> None:
        # PEFT's version assumes a module with `.weight` (a Linear); an MLP block has none. Wrapping keeps the
        # base module as `base_layer` (already on its device, the adapter follows it); unloading puts it back.
        setattr(parent, child_name, new_module)

    def _check_merge_allowed(self):
        raise ValueError(NOT_MERGEABLE)
