"""Guard for how the bottleneck adapter is registered with PEFT (infosam_hf/tuners/bottleneck_adapter/register.py).

PEFT 0.21 refuses `register_peft_method` for names outside its `PeftType` enum, so the
method is entered in PEFT's exported type->config/tuner/prefix dicts under a string type.
If a PEFT upgrade moves or renames those dicts, or stops resolving a string type when
saving or loading, these tests fail and say so.
"""

import json
import subprocess
import sys

import peft
import pytest
import torch
from peft import PeftConfig, PeftModel, get_peft_model
from transformers import SamModel

import infosam_hf  # noqa: F401  (registers the method)
from infosam_hf.testing import tiny_sam_config
from infosam_hf.tuners.bottleneck_adapter import (
    PEFT_TYPE,
    PREFIX,
    BottleneckAdapterConfig,
    BottleneckAdapterModel,
    register_bottleneck_adapter,
)

UPGRADE_HINT = (
    f"PEFT {peft.__version__} no longer takes the bottleneck adapter the way register.py enters it; see "
    "infosam_hf/tuners/bottleneck_adapter/register.py (use register_peft_method if it accepts the name now)."
)


def test_peft_maps_the_string_type_to_our_classes():
    from peft import mapping

    assert mapping.PEFT_TYPE_TO_CONFIG_MAPPING.get(PEFT_TYPE) is BottleneckAdapterConfig, UPGRADE_HINT
    assert mapping.PEFT_TYPE_TO_TUNER_MAPPING.get(PEFT_TYPE) is BottleneckAdapterModel, UPGRADE_HINT
    assert mapping.PEFT_TYPE_TO_PREFIX_MAPPING.get(PEFT_TYPE) == PREFIX, UPGRADE_HINT
    # peft's own modules read these very dicts (not copies taken at import)
    from peft import peft_model
    from peft.utils import save_and_load

    assert peft_model.PEFT_TYPE_TO_TUNER_MAPPING is mapping.PEFT_TYPE_TO_TUNER_MAPPING, UPGRADE_HINT
    assert save_and_load.PEFT_TYPE_TO_TUNER_MAPPING is mapping.PEFT_TYPE_TO_TUNER_MAPPING, UPGRADE_HINT
    register_bottleneck_adapter()  # idempotent
    assert mapping.PEFT_TYPE_TO_CONFIG_MAPPING.get(PEFT_TYPE) is BottleneckAdapterConfig


def test_the_public_registration_still_refuses_the_name():
    # Documents why register.py fills the dicts itself. When this starts failing, PEFT accepts custom names:
    # register.py then takes the public route on its own (it tries register_peft_method first) -- delete this test.
    from peft.utils import register_peft_method

    with pytest.raises(ValueError, match="Unknown PEFT type"):
        register_peft_method(name="infosam_other_adapter", config_cls=BottleneckAdapterConfig, model_cls=BottleneckAdapterModel)


def test_the_string_type_round_trips_through_adapter_config_json(tmp_path):
    torch.manual_seed(0)
    model = get_peft_model(SamModel(tiny_sam_config()), BottleneckAdapterConfig(modules_to_save=["mask_decoder"]))
    assert type(model.base_model) is BottleneckAdapterModel
    model.save_pretrained(tmp_path)
    assert json.loads((tmp_path / "adapter_config.json").read_text())["peft_type"] == PEFT_TYPE, UPGRADE_HINT
    config = PeftConfig.from_pretrained(tmp_path)
    assert isinstance(config, BottleneckAdapterConfig) and config.peft_type == PEFT_TYPE, UPGRADE_HINT
    loaded = PeftModel.from_pretrained(SamModel(tiny_sam_config()), tmp_path)
    assert type(loaded.base_model) is BottleneckAdapterModel, UPGRADE_HINT


@pytest.mark.slow
def test_without_import_infosam_hf_peft_names_what_is_missing(tmp_path):
    torch.manual_seed(0)
    SamModel(tiny_sam_config()).save_pretrained(tmp_path / "base")
    model = get_peft_model(SamModel.from_pretrained(tmp_path / "base"), BottleneckAdapterConfig())
    model.save_pretrained(tmp_path / "adapter")
    code = (
        "from peft import PeftModel; from transformers import SamModel; "
        f"PeftModel.from_pretrained(SamModel.from_pretrained({str(tmp_path / 'base')!r}), {str(tmp_path / 'adapter')!r})"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert result.returncode != 0 and "KeyError: 'INFOSAM_BOTTLENECK_ADAPTER'" in result.stderr, result.stderr[-2000:]
