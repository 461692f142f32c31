"""Training states (optimizer, scheduler, scaler, RNG) as safetensors + JSON, and the stock fallback."""

import os
import random

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from infosam_hf.training_state import UnsupportedStateError, load_state, save_state


def test_round_trip_keeps_types_that_json_would_flatten(tmp_path):
    state = {
        "state": {0: {"step": torch.tensor(3.0), "exp_avg": torch.randn(4, 2, dtype=torch.bfloat16)}, 7: {}},
        "param_groups": [{"lr": 1e-3, "betas": (0.9, 0.999), "params": [0, 7], "foreach": None, "max": float("inf")}],
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "cpu": torch.random.get_rng_state(),
        "flags": [True, "cosine", np.float64(0.5), np.int64(2)],
    }
    save_state(state, tmp_path / "s.safetensors")
    back = load_state(tmp_path / "s.safetensors")
    assert list(back["state"]) == [0, 7]  # integer keys stay integers
    assert torch.equal(back["state"][0]["exp_avg"], state["state"][0]["exp_avg"])
    assert back["state"][0]["exp_avg"].dtype == torch.bfloat16
    assert back["param_groups"][0]["betas"] == (0.9, 0.999) and back["param_groups"][0]["max"] == float("inf")
    assert back["python"] == state["python"]
    assert back["numpy"][0] == "MT19937" and back["numpy"][1].dtype == np.uint32
    assert np.array_equal(back["numpy"][1], state["numpy"][1]) and back["numpy"][2:] == state["numpy"][2:]
    assert torch.equal(back["cpu"], state["cpu"])
    assert back["flags"] == [True, "cosine", 0.5, 2]


def test_restored_rng_states_replay_the_same_draws(tmp_path):
    save_state({"python": random.getstate(), "numpy": np.random.get_state(), "cpu": torch.random.get_rng_state()},
               tmp_path / "rng.safetensors")
    expected = (random.random(), np.random.rand(), torch.rand(1).item())
    states = load_state(tmp_path / "rng.safetensors")
    random.setstate(states["python"])
    np.random.set_state(states["numpy"])
    torch.random.set_rng_state(states["cpu"])
    assert (random.random(), np.random.rand(), torch.rand(1).item()) == expected


def test_an_optimizer_resumes_exactly(tmp_path):
    def steps(opt, param, n):
        for _ in range(n):
            opt.zero_grad()
            (param ** 2).sum().backward()
            opt.step()

    torch.manual_seed(0)
    a = torch.nn.Parameter(torch.randn(5))
    b = torch.nn.Parameter(a.detach().clone())
    opt_a, opt_b = torch.optim.AdamW([a], lr=0.1), torch.optim.AdamW([b], lr=0.1)
    steps(opt_a, a, 3)
    steps(opt_b, b, 3)
    save_state(opt_a.state_dict(), tmp_path / "optimizer.safetensors")
    fresh = torch.optim.AdamW([b], lr=0.5)  # other hyper-parameters and no moments: all must come from the file
    fresh.load_state_dict(load_state(tmp_path / "optimizer.safetensors"))
    steps(opt_a, a, 2)
    steps(fresh, b, 2)
    assert torch.equal(a, b)


def test_what_cannot_be_stored_is_refused_before_writing(tmp_path):
    with pytest.raises(UnsupportedStateError, match="object"):
        save_state({"fn": object()}, tmp_path / "x.safetensors")
    assert not (tmp_path / "x.safetensors").exists()
    save_file({"w": torch.zeros(2)}, tmp_path / "weights.safetensors")
    with pytest.raises(ValueError, match=r"weights\.safetensors is not a training state written by infosam_hf"):
        load_state(tmp_path / "weights.safetensors")


class StatefulWarmup:
    """An lr lambda whose state (its __dict__, which LambdaLR saves) holds bytes: no JSON, but torch.load-able."""

    def __init__(self):
        self.tag = b"warmup"

    def __call__(self, step):
        return 1.0


def test_a_state_that_cannot_be_stored_falls_back_to_the_stock_format_and_still_resumes(tmp_path):
    from helpers import make_args, make_model

    from infosam_hf import InfoSAMTrainer
    from infosam_hf.testing import toy_segmentation_dataset

    def trainer(folder, max_steps):
        model = make_model()
        optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, StatefulWarmup())
        args = make_args(folder, max_steps=max_steps, save_strategy="steps", save_steps=1)
        return InfoSAMTrainer(model=model, args=args, train_dataset=toy_segmentation_dataset(4),
                              optimizers=(optimizer, scheduler))

    with pytest.warns(UserWarning, match="torch.save, as transformers does: cannot store a bytes"):
        trainer(tmp_path, max_steps=1).train()
    files = set(os.listdir(tmp_path / "run" / "checkpoint-1"))
    assert {"optimizer.pt", "scheduler.pt", "rng_state.safetensors"} <= files and "optimizer.safetensors" not in files
    resumed = trainer(tmp_path, max_steps=2)
    resumed.train(resume_from_checkpoint=str(tmp_path / "run" / "checkpoint-1"))
    assert resumed.state.global_step == 2 and resumed.optimizer.state  # the stock loader restored the moments
