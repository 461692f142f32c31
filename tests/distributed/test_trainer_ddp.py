"""DDP on the CPU: 2 gloo processes against one process on the same global batch.

The worker (`tests/distributed/distributed_worker.py`) trains a tiny SAM for 3 SGD steps and records,
per rank, the sample indices of each micro-batch, its local loss parts, the Trainer's
logged loss, every file it wrote and its final trainable weights. Three runs are
compared:

- `single`:    `python tests/distributed/distributed_worker.py`, per-device batch 4 (the global batch);
- `gather`:    `ACCELERATE_USE_CPU=true accelerate launch --multi_gpu --num_processes 2`,
               per-device batch 2, `InfoSAMTrainingArguments.gather_across_processes=True` (default);
- `no_gather`: the same with the option off.

Like with like: `loss_seg` is a per-sample mean, so the single-process value is the mean
of the ranks' local values (equal local batches). `loss_r` / `loss_d` are batch-level
(B x B Gram matrices): with gathering every rank computes them on the global batch, so
each rank's value must equal the single-process value. The Trainer logs the mean over
processes of the local total loss (`nested_gather(tr_loss).mean()`), which then equals
the single-process loss.

Why the weights can match at all under gathering: each rank's loss holds the global
InfoSAM terms, `torch.distributed.nn.functional.all_gather` sums the gradients of all
ranks' copies back to each slice in backward (W times the gradient of one copy), and DDP
divides the all-reduced gradients by W. A gather that returns only the local gradient
gives the InfoSAM terms 1/W of their weight; the weight comparison below then fails
(checked by hand: update difference 2.6e-2 relative, tolerance 1e-3).
"""

from __future__ import annotations

import collections
import json
import os

import pytest
import torch
from helpers import (  # tests/ is on sys.path (conftest.py)
    CONFIGS,
    GLOBAL_BATCH,
    PER_DEVICE_BATCH,
    STEPS,
    UPDATE_RTOL,
    WORLD_SIZE,
    launch,
    rel_close,
    update_mismatch,
)
from safetensors.torch import load_file


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("distributed")
    return {
        "single": launch(root, "single", distributed=False),
        "gather": launch(root, "gather", distributed=True, gather=True),
        "no_gather": launch(root, "no_gather", distributed=True, gather=False),
    }


# ---------------------------------------------------------------------------------- tests
def test_accelerate_configs_parse():
    from accelerate.commands.config.config_args import load_config_from_file

    expected = {"single_gpu": ("NO", 1, False), "multi_gpu": ("MULTI_GPU", 2, False), "cpu": ("MULTI_GPU", 2, True)}
    for name, (distributed_type, processes, use_cpu) in expected.items():
        config = load_config_from_file(str(CONFIGS / f"{name}.yaml"))
        assert (str(config.distributed_type.value), config.num_processes, config.use_cpu) == (
            distributed_type, processes, use_cpu), name
        assert config.mixed_precision == "no", "precision belongs to the Trainer flags (--bf16)"


@pytest.mark.slow
def test_launch_starts_two_gloo_processes(runs):
    for name in ("gather", "no_gather"):
        ranks = runs[name].ranks
        assert [r["rank"] for r in ranks] == [0, 1]
        assert len({r["pid"] for r in ranks}) == WORLD_SIZE, "two processes, not one"
        for r in ranks:
            assert (r["world_size"], r["torch_distributed_world_size"], r["backend"]) == (WORLD_SIZE, WORLD_SIZE, "gloo")
            assert r["distributed_type"].endswith("MULTI_CPU") and r["parallel_mode"].endswith("DISTRIBUTED")
    (single,) = runs["single"].ranks
    assert single["world_size"] == 1 and single["backend"] is None


@pytest.mark.slow
def test_each_rank_sees_different_samples_and_together_the_single_process_batch(runs):
    single = runs["single"].records(0)
    for name in ("gather", "no_gather"):
        run = runs[name]
        for step in range(STEPS):
            local = [run.records(rank)[step]["index"] for rank in range(WORLD_SIZE)]
            assert all(len(idx) == PER_DEVICE_BATCH for idx in local), local
            assert not set(local[0]) & set(local[1]), f"{name} step {step}: ranks share samples {local}"
            assert set(local[0]) | set(local[1]) == set(single[step]["index"]), (name, step, local, single[step])
    # the data order is the seeded shuffle: both epochs (8 samples, global batch 4) are covered
    assert sorted(single[0]["index"] + single[1]["index"]) == list(range(2 * GLOBAL_BATCH))


@pytest.mark.slow
def test_adapters_and_relation_module_stay_identical_on_every_rank(runs):
    for name in ("gather", "no_gather"):
        run = runs[name]
        rank0, rank1 = run.weights
        assert rank0.keys() == rank1.keys()
        assert any("lora_" in k for k in rank0) and any(k.startswith("relation_module.") for k in rank0)
        assert any("modules_to_save" in k for k in rank0)
        different = [k for k in rank0 if not torch.equal(rank0[k], rank1[k])]
        assert not different, f"{name}: ranks diverged in {different[:5]}"
        # ... and they did train: every group moved
        moved = [k for k in rank0 if not torch.equal(rank0[k], run.initial[0][k])]
        for group in ("lora_B", "relation_module.", "modules_to_save"):
            assert any(group in k for k in moved), f"{name}: no {group} weight changed"


@pytest.mark.slow
def test_checkpoint_is_written_once_by_rank_zero(runs):
    run = runs["gather"]
    assert sorted(os.listdir(run.output_dir)) == [f"checkpoint-{STEPS}"], "exactly one checkpoint folder"
    checkpoint = run.output_dir / f"checkpoint-{STEPS}"
    writes = [collections.Counter(r["writes"]) for r in run.ranks]
    # Rank 0 wrote each file once; the only file rank 1 writes is the Trainer's per-rank RNG state.
    assert all(count == 1 for count in writes[0].values()), f"rank 0 wrote some files twice: {writes[0]}"
    assert set(writes[1]) == {f"checkpoint-{STEPS}/rng_state_1.safetensors"}, f"rank 1 wrote {dict(writes[1])}"
    required = {"adapter_model.safetensors", "adapter_config.json", "relation_module.safetensors",
                "infosam_config.json", "training_args.json", "trainer_state.json", "optimizer.safetensors",
                "rng_state_0.safetensors"}
    assert {f"checkpoint-{STEPS}/{f}" for f in required} <= set(writes[0])
    # The recorder saw every file in the folder (so "rank 1 wrote nothing else" means something).
    assert {f"checkpoint-{STEPS}/{f}" for f in os.listdir(checkpoint)} == set(writes[0]) | set(writes[1])
    assert json.loads((checkpoint / "trainer_state.json").read_text())["global_step"] == STEPS
    saved = load_file(checkpoint / "relation_module.safetensors")
    for key, value in saved.items():
        assert torch.equal(value, run.weights[0][f"relation_module.{key}"]), key


@pytest.mark.slow
def test_gathered_loss_matches_the_single_process_run(runs):
    single, run = runs["single"], runs["gather"]
    for step in range(STEPS):
        ref = single.records(0)[step]
        local = [run.records(rank)[step] for rank in range(WORLD_SIZE)]
        for part in ("loss_r", "loss_d"):  # batch-level: every rank computes it on the global batch
            for rank, record in enumerate(local):
                assert rel_close(record[part], ref[part]), (step, rank, part, record[part], ref[part])
        for part in ("loss_seg", "loss"):  # per-sample means: the mean over ranks
            mean = sum(record[part] for record in local) / WORLD_SIZE
            assert rel_close(mean, ref[part]), (step, part, mean, ref[part])
        logged, ref_logged = run.ranks[0]["logged_loss"][str(step + 1)], single.ranks[0]["logged_loss"][str(step + 1)]
        assert rel_close(logged, ref_logged), (step, logged, ref_logged)


@pytest.mark.slow
def test_gathered_training_matches_the_single_process_weights(runs):
    single, run = runs["single"], runs["gather"]
    reference, initial = single.weights[0], single.initial[0]
    assert run.weights[0].keys() == reference.keys()
    for key in reference:
        assert torch.equal(run.initial[0][key], initial[key]), f"different initial weights: {key}"
        torch.testing.assert_close(run.weights[0][key], reference[key], rtol=1e-4, atol=1e-6, msg=key)
    assert update_mismatch(run.weights[0], reference, initial) < UPDATE_RTOL


@pytest.mark.slow
def test_without_gathering_the_relation_terms_see_only_the_local_batch(runs):
    single, run = runs["single"], runs["no_gather"]
    for step in range(STEPS):
        ref = single.records(0)[step]
        local = [run.records(rank)[step] for rank in range(WORLD_SIZE)]
        seg = sum(record["loss_seg"] for record in local) / WORLD_SIZE
        assert rel_close(seg, ref["loss_seg"], 1e-3)  # the segmentation loss does not care
        for rank, record in enumerate(local):
            # B = 2 Gram matrices: S(.) <= log2(2) = 1 bit, so L_d >= -1, where the global batch reaches ~ -1.9
            assert not rel_close(record["loss_d"], ref["loss_d"], 0.1), (step, rank, record["loss_d"], ref["loss_d"])
            assert record["loss_d"] >= -1.0 - 1e-4
            assert not rel_close(record["loss_r"], ref["loss_r"], 0.1), (step, rank, record["loss_r"], ref["loss_r"])
        assert local[0]["loss_d"] != local[1]["loss_d"], "each rank has its own local relation terms"
    mismatch = update_mismatch(run.weights[0], single.weights[0], single.initial[0])
    assert mismatch > 100 * UPDATE_RTOL, mismatch  # so the weight check above can tell the two apart


@pytest.mark.slow
def test_cpu_accelerate_config_runs_two_gloo_processes(runs, tmp_path):
    run = launch(tmp_path, "config_file", distributed=True, gather=True, config_file=CONFIGS / "cpu.yaml")
    assert [(r["world_size"], r["backend"]) for r in run.ranks] == [(WORLD_SIZE, "gloo")] * WORLD_SIZE
    assert len({r["pid"] for r in run.ranks}) == WORLD_SIZE
    reference = runs["gather"].weights[0]
    for key in reference:  # the same run as the command-line launch
        torch.testing.assert_close(run.weights[0][key], reference[key], rtol=1e-5, atol=1e-7, msg=key)
        assert torch.equal(run.weights[0][key], run.weights[1][key]), key
