"""train.ema_decay: the moving average of the weights is what validation scores, what the
checkpoint keeps and what a resumed run carries on averaging."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pandas as pd
import pytest
import torch
from age_helpers import TinyConfig, volumes

from ageatlas.age.predict import predict
from ageatlas.age.train import train


def load(path):
    return torch.load(path, map_location="cpu", weights_only=True)


def averaged_module(state: dict) -> dict:
    """The averaged model's own weights and buffers in a state.pt's ``average``."""
    return {k.removeprefix("module."): v for k, v in state["average"].items() if k != "n_averaged"}


@pytest.fixture(scope="module")
def items(tmp_path_factory):
    cached = volumes(tmp_path_factory.mktemp("cache"), 8, seed=3)
    return cached[:6], cached[6:]


def test_the_checkpoint_is_the_validated_moving_average(tmp_path, items):
    train_items, val_items = items
    config = TinyConfig(epochs=1, batch_size=1, accumulate=2, ema_decay=0.9)
    train(train_items, val_items, tmp_path, config, device="cpu")
    checkpoint, state = load(tmp_path / "checkpoint.pt"), load(tmp_path / "state.pt")

    kept = averaged_module(state)
    assert checkpoint["model"].keys() == kept.keys()
    for key, value in checkpoint["model"].items():
        assert torch.equal(value, kept[key]), key
    # The live weights went on without it: 3 optimizer steps, each averaged in at 0.1.
    live = state["model"]
    assert any(not torch.equal(live[k], kept[k]) for k, v in live.items() if v.is_floating_point())

    # Validation scored the kept weights, as prediction reads them.
    table, _ = predict(
        tmp_path / "checkpoint.pt",
        [(path, path) for path, _ in val_items],
        device="cpu",
        config_type=TinyConfig,
    )
    ages = np.array([age for _, age in val_items])
    mae = np.abs(table["predicted"].to_numpy() - ages).mean()
    metrics = pd.read_csv(tmp_path / "metrics.tsv", sep="\t")
    assert mae == pytest.approx(metrics["val_mae"].iloc[-1], rel=1e-5)


def test_a_resumed_run_carries_on_the_same_average(tmp_path, items):
    """Two epochs in one go and one epoch then one more give the same average: the state saves
    it (restarted from the live weights, it would differ)."""
    whole = TinyConfig(epochs=2, batch_size=1, accumulate=2, ema_decay=0.9)
    train(*items, tmp_path / "whole", whole, device="cpu")
    train(*items, tmp_path / "split", replace(whole, epochs=1), device="cpu")
    assert train(*items, tmp_path / "split", whole, device="cpu")["resumed_after"] == 1

    a, b = load(tmp_path / "whole" / "state.pt"), load(tmp_path / "split" / "state.pt")
    assert a["average"].keys() == b["average"].keys()
    for key in a["average"]:
        assert torch.equal(a["average"][key], b["average"][key]), key
    assert int(a["average"]["n_averaged"]) == 6  # 6 training volumes, 2 a step, 2 epochs


def test_without_a_decay_there_is_no_average(tmp_path, items):
    train(*items, tmp_path, TinyConfig(epochs=1, batch_size=1, accumulate=2), device="cpu")
    state, checkpoint = load(tmp_path / "state.pt"), load(tmp_path / "checkpoint.pt")
    assert state["average"] is None
    for key, value in checkpoint["model"].items():  # one epoch: the kept weights are the live ones
        assert torch.equal(value, state["model"][key]), key
