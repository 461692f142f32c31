"""Make PEFT know the bottleneck adapter, with a string `peft_type`.

Why not just `peft.register_peft_method`: in PEFT 0.21 it accepts only names already in
its closed `PeftType` enum, and extending a Python enum at run time is a hack. PEFT
itself reads a method only through three exported dicts keyed by `peft_type`
(config class, tuner class, state-dict prefix), and a plain string key works there and
round-trips through `adapter_config.json` (upstream made string types first-class in
peft#2634/#2635). So: use `register_peft_method` if a PEFT release accepts the name,
otherwise fill those dicts with the same uniqueness checks it makes.
`tests/test_adapter.py` ("registration with PEFT") fails loudly if a PEFT upgrade breaks this.
"""

from __future__ import annotations

from .config import PEFT_TYPE, PREFIX, BottleneckAdapterConfig
from .model import BottleneckAdapterModel


def register_bottleneck_adapter() -> None:
    """Idempotent; called when `infosam_hf` is imported."""
    from peft import mapping
    from peft.utils import PeftType

    registered = mapping.PEFT_TYPE_TO_CONFIG_MAPPING.get(PEFT_TYPE)
    if registered is BottleneckAdapterConfig:
        return
    if registered is not None:
        raise KeyError(f"PEFT already has a method called {PEFT_TYPE!r} ({registered.__name__}); cannot register ours.")
    if PEFT_TYPE in list(PeftType):  # a PEFT that knows the name: use its public API
        from peft.utils import register_peft_method

        register_peft_method(
            name=PEFT_TYPE.lower(), config_cls=BottleneckAdapterConfig, model_cls=BottleneckAdapterModel, prefix=PREFIX
        )
        return
    if PREFIX in mapping.PEFT_TYPE_TO_PREFIX_MAPPING.values():
        raise KeyError(f"PEFT already has a method with the parameter prefix {PREFIX!r}; cannot register ours.")
    mapping.PEFT_TYPE_TO_PREFIX_MAPPING[PEFT_TYPE] = PREFIX
    mapping.PEFT_TYPE_TO_CONFIG_MAPPING[PEFT_TYPE] = BottleneckAdapterConfig
    mapping.PEFT_TYPE_TO_TUNER_MAPPING[PEFT_TYPE] = BottleneckAdapterModel
