"""The GPU's fast paths driven on the CPU (gpu_paths=True): bf16 autocast, channels_last_3d,
fused Adam, the pinned-memory loader flag, and DDP over gloo with all of them. On a machine with
CUDA the training tests run there too, on the default paths."""

from __future__ import annotations

import math
from dataclasses import replace
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import torch
from age_helpers import SHAPE, TinyConfig, volumes

from ageatlas.age.distributed import process_device
from ageatlas.age.model import build_model
from ageatlas.age.predict import predict
from ageatlas.age.train import _loader, train
from ageatlas.age.train_config import TrainConfig
from ageatlas.age.train_data import Shard
from ageatlas.baseline.model import BaselineConfig
from ageatlas.core.fast_paths import fast_paths

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
# torch drops pin_memory without an accelerator, with this warning: the flag's path still runs.
pytestmark = pytest.mark.filterwarnings("ignore:.*pin_memory.*:UserWarning")


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    folder = tmp_path_factory.mktemp("cache")
    return volumes(folder, 8, seed=1), volumes(folder, 4, seed=2)


# The training loop with the small model; starting at 0 years (no output bias at the mean age)
# makes the first epochs' fall certain.
FAST = TinyConfig(epochs=2, lr=1e-2, batch_size=2, accumulate=1, hidden=8, init_output_bias=False)


def gpu_paths_on(device: str) -> bool | None:
    """Forced on the CPU; CUDA's default (on) on a GPU."""
    return True if device == "cpu" else None


def test_the_paths_follow_the_device_unless_forced():
    cpu = torch.device("cpu")
    assert fast_paths(cpu) == fast_paths(cpu, gpu_paths=False)
    assert not any([fast_paths(cpu).bf16, fast_paths(cpu).fused_adam, fast_paths(cpu).pin_memory])
    forced = TrainConfig().fast_paths(cpu, gpu_paths=True)
    assert forced.bf16 and forced.fused_adam and forced.pin_memory and forced.warm_up
    assert forced.memory_format == torch.channels_last_3d
    assert BaselineConfig().fast_paths(cpu, True).memory_format == torch.channels_last
    wishes = TrainConfig(bf16=False, channels_last=False).fast_paths(cpu, True)
    assert not wishes.bf16 and wishes.memory_format == torch.contiguous_format
    assert fast_paths("cuda", gpu_paths=False) == fast_paths(
        "cuda", gpu_paths=False
    )  # no CUDA call
    assert forced.describe() == "bf16 autocast, channels_last, fused Adam"
    with forced.autocast():
        assert torch.get_autocast_dtype("cpu") == torch.bfloat16 and torch.is_autocast_enabled(
            "cpu"
        )


def test_channels_last_and_bf16_forward_agree_with_float32():
    torch.manual_seed(0)
    model = build_model(hidden=16).eval()
    x = torch.randn(2, 1, *SHAPE)
    with torch.no_grad():
        plain = model(x)
        paths = TrainConfig().fast_paths("cpu", gpu_paths=True)
        model.to(memory_format=paths.memory_format)
        last = model(x.contiguous(memory_format=paths.memory_format))
        with paths.autocast():
            half = model(x.contiguous(memory_format=paths.memory_format))
    assert half.dtype == torch.bfloat16
    torch.testing.assert_close(last, plain, rtol=1e-4, atol=1e-5)
    spread = float(plain.abs().max())
    torch.testing.assert_close(half.float(), plain, rtol=0.0, atol=0.05 * spread)


@pytest.mark.parametrize("device", DEVICES)
def test_an_r3d_training_step_on_the_gpu_paths_has_float32s_gradients(device):
    """The age model's own backward pass under bf16 autocast and channels_last_3d: finite, and
    pointing where float32's points (this is the check that finds the CPU's depth-2 bug). Eval
    mode: BatchNorm's statistics over a batch of 2 at layer4 (6 values) would amplify bf16's
    rounding far beyond what a real batch does (cosine 0.88 in train mode, 0.999 in eval)."""
    torch.manual_seed(0)
    model = build_model(hidden=16).to(device).eval()
    x, target = torch.randn(2, 1, *SHAPE, device=device), torch.tensor([50.0, 70.0], device=device)
    gradients = {}
    for on in (False, True):
        paths = TrainConfig().fast_paths(device, gpu_paths=on)
        model.to(memory_format=paths.memory_format)
        with paths.autocast():
            error = model(x.contiguous(memory_format=paths.memory_format)).float() - target
        model.zero_grad()
        error.abs().mean().backward()
        gradients[on] = torch.cat([p.grad.float().flatten() for p in model.parameters()])
    assert torch.isfinite(gradients[True]).all()
    cosine = torch.nn.functional.cosine_similarity(gradients[True], gradients[False], dim=0)
    assert float(cosine) > 0.99


def test_fused_foreach_and_loop_adam_take_the_same_steps():
    """The optimiser the GPU path builds (fused) steps as the CPU's default (a loop) does: to a
    tenth of a step, where near-zero gradients meet eps in another summation order."""
    x, target = torch.randn(2, 1, *SHAPE), torch.tensor([50.0, 70.0])
    start, weights = None, {}
    for name, options in {
        "loop": {"foreach": False},
        "foreach": {"foreach": True},
        "fused": {"fused": True},
    }.items():
        torch.manual_seed(0)
        model = torch.nn.Sequential(
            torch.nn.Conv3d(1, 8, 3), torch.nn.ReLU(), torch.nn.Flatten(), torch.nn.LazyLinear(1)
        )
        model(x)  # materialise the lazy layer
        start = torch.cat([p.detach().flatten() for p in model.parameters()])
        optimizer = torch.optim.Adam(model.parameters(), lr=1e-3, **options)
        for _ in range(3):
            (model(x).squeeze(1) - target).abs().mean().backward()
            optimizer.step()
            optimizer.zero_grad()
        weights[name] = torch.cat([p.detach().flatten() for p in model.parameters()])
    assert float((weights["loop"] - start).abs().max()) > 2e-3  # three steps of lr 1e-3 taken
    for name in ("foreach", "fused"):
        torch.testing.assert_close(weights[name], weights["loop"], rtol=0, atol=1e-4)


def test_the_pinned_loader_reads_what_the_plain_one_reads(data):
    config = TinyConfig(batch_size=2)
    batches = {}
    for pin in (False, True):
        paths = config.fast_paths("cpu", gpu_paths=pin)
        job = SimpleNamespace(config=config, paths=paths, generator=torch.Generator())
        loader = _loader(job, config.dataset(data[0]), Shard(len(data[0]), 0, 1), 2)
        assert loader.pin_memory == pin
        batches[pin] = [x for x, _ in loader]
    assert all(torch.equal(a, b) for a, b in zip(batches[False], batches[True]))


@pytest.mark.parametrize("device", DEVICES)
def test_training_on_the_gpu_paths_learns_resumes_and_its_checkpoint_predicts_as_it_validated(
    tmp_path, data, device
):
    gpu_paths = gpu_paths_on(device)
    whole = train(*data, tmp_path / "whole", FAST, device=device, gpu_paths=gpu_paths)
    metrics = pd.read_csv(tmp_path / "whole" / "metrics.tsv", sep="\t")
    assert np.isfinite(metrics[["train_mae", "val_mae"]].to_numpy()).all()
    assert metrics["train_mae"].iloc[1] < metrics["train_mae"].iloc[0]

    # Fused Adam's state, the scheduler and the RNGs through state.pt: resuming is exact on the
    # CPU (cuDNN's autotuned kernels are not deterministic: close there).
    train(*data, tmp_path / "resumed", replace(FAST, epochs=1), device=device, gpu_paths=gpu_paths)
    resumed = train(*data, tmp_path / "resumed", FAST, device=device, gpu_paths=gpu_paths)
    assert resumed["resumed_after"] == 1
    load = lambda run: torch.load(tmp_path / run / "state.pt", weights_only=True)  # noqa: E731
    a, b = load("whole"), load("resumed")
    for key in a["model"]:
        if device == "cpu":
            assert torch.equal(a["model"][key], b["model"][key]), key
        else:
            torch.testing.assert_close(a["model"][key], b["model"][key], rtol=1e-2, atol=1e-3)
    assert a["optimizer"]["param_groups"][0]["fused"] is True

    # The checkpoint predicts the validation set as training validated it (same weights, paths,
    # noise and batches), and float32 prediction stays close to bf16's.
    val_paths = [(path, path) for path, _ in data[1]]
    ages = np.array([age for _, age in data[1]])
    checkpoint = tmp_path / "whole" / "checkpoint.pt"
    options = {"device": device, "config_type": TinyConfig}
    table, timing = predict(
        checkpoint, val_paths, batch_size=FAST.batch_size, gpu_paths=gpu_paths, **options
    )
    assert timing["precision"] == "bf16 autocast, channels_last, fused Adam"
    mae = float(np.abs(table["predicted"].to_numpy() - ages).mean())
    assert mae == pytest.approx(whole["best_val_mae"], rel=1e-5 if device == "cpu" else 1e-2)
    full, timing = predict(checkpoint, val_paths, gpu_paths=False, **options)
    assert timing["precision"] == "float32"
    spread = float(np.abs(full["predicted"]).max())
    np.testing.assert_allclose(table["predicted"], full["predicted"], atol=0.02 * spread)


def test_ddp_on_the_gpu_paths_over_two_gloo_processes(tmp_path, data):
    """The GPU's DDP path as far as the CPU goes: bf16, channels_last and fused Adam in each of
    two spawned gloo processes; their summed steps are one process's, to bf16 rounding."""
    config = replace(FAST, epochs=1, batch_size=1, accumulate=2)
    ddp = train(*data, tmp_path / "ddp", config, device="cpu", world_size=2, gpu_paths=True)
    train(*data, tmp_path / "single", config, device="cpu", gpu_paths=True)
    assert ddp["world_size"] == 2 and math.isfinite(ddp["best_val_mae"])
    ddp_mae = pd.read_csv(tmp_path / "ddp" / "metrics.tsv", sep="\t")["train_mae"]
    single_mae = pd.read_csv(tmp_path / "single" / "metrics.tsv", sep="\t")["train_mae"]
    np.testing.assert_allclose(ddp_mae, single_mae, rtol=1e-2)
    state = torch.load(tmp_path / "ddp" / "checkpoint.pt", weights_only=True)
    config.build_model().load_state_dict(state["model"])  # rank 0's, loads into a bare model


def test_the_cuda_choice_of_a_ddp_process():
    """What each spawned process takes, CUDA's answer included (no GPU is touched)."""
    assert process_device(torch.device("cuda"), 1) == (torch.device("cuda", 1), "nccl")
    assert process_device(torch.device("cpu"), 1) == (torch.device("cpu"), "gloo")


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="DDP over NCCL needs two GPUs")
def test_ddp_over_nccl_on_two_cuda_devices(tmp_path, data):
    """The multi-GPU path proper (one process per GPU, NCCL), where a machine has two GPUs."""
    config = replace(FAST, epochs=1, batch_size=1, accumulate=2)
    ddp = train(*data, tmp_path / "ddp", config, device="cuda", world_size=2)
    assert ddp["world_size"] == 2 and math.isfinite(ddp["best_val_mae"])
    assert ddp["device"] == "cuda"
