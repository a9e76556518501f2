"""Training: exact resume after SIGKILL, fresh start on another config, DDP over gloo, and that it
learns."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import time
from dataclasses import asdict, replace
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import torch

from ageatlas.age import preprocess
from ageatlas.age.predict import predict
from ageatlas.age.train import (
    METRIC_COLUMNS,
    _finished,
    _train_loader,
    batchnorm_statistics,
    train,
)
from ageatlas.age.train_config import TrainConfig
from ageatlas.age.train_data import CacheDataset
from ageatlas.age.train_state import STALE_STATE, Progress

SHAPE = (16, 16, 32)  # the smallest grid whose layer4 map has > 1 voxel (BatchNorm with batch 1)
BACKGROUND = np.ones(SHAPE, bool)
BACKGROUND[2:-2, 2:-2, 2:-2] = False

# lr large enough and plateau patience 0 so that weights, Adam state and the
# scheduler all change from epoch to epoch; accumulate 4 over 6 samples
# makes the epoch's last step a short one.
TINY = TrainConfig(epochs=4, lr=1e-3, batch_size=1, accumulate=4, plateau_patience=0)

# Like a Snakemake script: code at the top level, no `if __name__ == "__main__"` guard.
RUN = """
import json, logging, sys
from ageatlas.age.train import train
from ageatlas.age.train_config import TrainConfig
logging.basicConfig(level=logging.INFO)
args = json.loads(sys.argv[1])
config = TrainConfig(**args["config"])
summary = train(
    args["train"], args["val"], args["out"], config, device="cpu", world_size=args["world_size"]
)
print(json.dumps(summary))
"""


def write_volumes(
    folder: Path,
    n: int,
    seed: int = 0,
    shape=SHAPE,
    signal_of_age: bool = False,
    background: bool = True,
):
    """(path, age) items of random float16 volumes as the cache holds them: the outer 2 voxels
    of each axis are background (NaN, drawn at every read); with signal_of_age a block brightens
    with age."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    items = []
    for i in range(n):
        age = float(rng.uniform(46, 81))
        volume = rng.normal(0, 1, shape).astype(np.float32)
        if signal_of_age:
            volume[4:12, 4:12, 8:24] += 3 * (age - 46) / 35
        if background:
            volume[BACKGROUND] = np.nan
        path = folder / f"{1000000 + 100 * seed + i}.npy"  # named by eid, as the cache is
        np.save(path, volume.astype(np.float16))
        items.append((str(path), age))
    return items


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    items = write_volumes(tmp_path_factory.mktemp("cache"), 8)
    return items[:6], items[6:]


@pytest.fixture
def script(tmp_path):
    path = tmp_path / "run.py"
    path.write_text(RUN)
    return path


def run_training(
    script: Path, tiny, out: Path, config: TrainConfig = TINY, world_size=None
) -> subprocess.Popen:
    args = {
        "train": tiny[0],
        "val": tiny[1],
        "out": str(out),
        "config": asdict(config),
        "world_size": world_size,
    }
    return subprocess.Popen(
        [sys.executable, str(script), json.dumps(args)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def finish(process: subprocess.Popen) -> dict:
    stdout, stderr = process.communicate(timeout=300)
    assert process.returncode == 0, stderr[-3000:]
    return json.loads(stdout.strip().splitlines()[-1])


def epochs_done(out: Path) -> int:
    try:
        return len(pd.read_csv(out / "metrics.tsv", sep="\t"))
    except (FileNotFoundError, pd.errors.EmptyDataError):
        return 0


def assert_same_weights(a: dict, b: dict):
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


def test_dataset_reads_a_cache(tiny):
    path, true_age = tiny[0][2]
    volume, age = CacheDataset(tiny[0], seed=42)[2]
    assert volume.shape == (1, *SHAPE) and volume.dtype == torch.float32
    expected = preprocess.model_input(np.load(path), path, 42)  # evaluation: fixed noise
    assert torch.equal(volume[0], torch.from_numpy(expected))
    assert age.item() == pytest.approx(true_age)
    # Without a seed the input is read as stored (the 2.5D projections have no background).
    np.testing.assert_array_equal(CacheDataset(tiny[0])[2][0][0].numpy(), np.load(path))


def test_training_reads_draw_fresh_background_noise_every_epoch(tiny):
    """The authors drew the N(0, 1) background at every read: each epoch its own noise, from
    (seed, eid, epoch) alone, so a resumed run reads what an uninterrupted one reads."""
    dataset = CacheDataset(tiny[0], seed=42)
    path = tiny[0][3][0]
    foreground = torch.from_numpy(np.load(path).astype(np.float32))[~torch.from_numpy(BACKGROUND)]
    reads = {epoch: dataset[(epoch, 3)][0][0] for epoch in (1, 2, 3)}
    reads["eval"] = dataset[3][0][0]
    background = torch.from_numpy(BACKGROUND)
    for read in reads.values():
        assert torch.isfinite(read).all() and torch.equal(read[~background], foreground)
    names = list(reads)
    for i, a in enumerate(names):
        for b in names[i + 1 :]:
            assert not torch.equal(reads[a][background], reads[b][background]), (a, b)
    assert torch.equal(dataset[(2, 3)][0][0], reads[2])  # the same epoch reads the same noise
    assert torch.equal(CacheDataset(tiny[0], seed=42)[(2, 3)][0][0], reads[2])
    assert not torch.equal(CacheDataset(tiny[0], seed=7)[(2, 3)][0][0], reads[2])


def test_the_training_loader_tells_the_dataset_its_epoch(tiny):
    """Through the trainer's loader (workers too): every epoch other noise, the same per epoch."""
    config = TrainConfig(batch_size=2, num_workers=1)
    cpu = torch.device("cpu")
    job = SimpleNamespace(config=config, world=1, rank=0, device=cpu, paths=config.fast_paths(cpu))
    job.generator = torch.Generator().manual_seed(0)
    loader, sampler = _train_loader(job, tiny[0])
    assert len(loader.sampler) == len(tiny[0])

    def epoch(e):
        sampler.set_epoch(e)
        batches = list(loader)
        order = [i for _, i in sampler]
        return torch.cat([x for x, _ in batches]), order

    one, order = epoch(1)
    two, order_two = epoch(2)
    again, _ = epoch(1)
    assert torch.equal(one, again)
    dataset = CacheDataset(tiny[0], seed=config.seed)
    for row, index in enumerate(order):
        assert torch.equal(one[row], dataset[(1, index)][0])
    for row, index in enumerate(order_two):
        assert torch.equal(two[row], dataset[(2, index)][0])


def test_sigkill_and_resume_ends_with_the_same_weights(tmp_path, tiny, script):
    whole = finish(run_training(script, tiny, tmp_path / "whole"))
    assert whole["resumed_after"] == 0 and whole["epochs_run"] == 4

    killed = run_training(script, tiny, tmp_path / "killed")
    deadline = time.monotonic() + 240
    while epochs_done(tmp_path / "killed") < 2:  # epoch 2's state is written before its metrics row
        assert killed.poll() is None and time.monotonic() < deadline, (
            "training ended before the kill"
        )
        time.sleep(0.02)
    os.kill(killed.pid, signal.SIGKILL)
    killed.communicate()
    assert killed.returncode == -signal.SIGKILL
    assert not (tmp_path / "killed" / "checkpoint.pt").exists()

    resumed = finish(run_training(script, tiny, tmp_path / "killed"))
    assert resumed["resumed_after"] in (2, 3), resumed  # resumed, not started afresh
    assert not list((tmp_path / "killed").glob(".*.tmp"))  # the write cut off by the kill is gone

    load = lambda name: torch.load(name, map_location="cpu", weights_only=True)  # noqa: E731
    for file in ("checkpoint.pt", "state.pt"):
        a, b = load(tmp_path / "whole" / file), load(tmp_path / "killed" / file)
        assert_same_weights(a["model"], b["model"])
    a, b = load(tmp_path / "whole" / "state.pt"), load(tmp_path / "killed" / "state.pt")
    for name, state in a["optimizer"]["state"].items():
        for key in state:
            assert torch.equal(state[key], b["optimizer"]["state"][name][key]), (name, key)
    assert a["scheduler"] == b["scheduler"] and a["scheduler"]["_last_lr"] != [
        TINY.lr
    ]  # the LR did drop

    numbers = ["epoch", "train_mae", "val_mae", "lr"]
    whole_metrics = pd.read_csv(tmp_path / "whole" / "metrics.tsv", sep="\t")
    pd.testing.assert_frame_equal(
        whole_metrics[numbers], pd.read_csv(tmp_path / "killed" / "metrics.tsv", sep="\t")[numbers]
    )
    assert list(whole_metrics.columns) == list(METRIC_COLUMNS) and len(whole_metrics) == 4

    checkpoint = load(tmp_path / "whole" / "checkpoint.pt")
    best = whole_metrics.loc[whole_metrics["val_mae"].idxmin()]
    assert checkpoint["epoch"] == best["epoch"] and checkpoint["val_mae"] == pytest.approx(
        best["val_mae"]
    )
    assert (
        checkpoint["input_shape"] == list(SHAPE) and checkpoint["config"]["hidden"] == TINY.hidden
    )

    again = finish(
        run_training(script, tiny, tmp_path / "whole")
    )  # a finished run does no more epochs
    assert again["resumed_after"] == 4
    assert_same_weights(load(tmp_path / "whole" / "checkpoint.pt")["model"], checkpoint["model"])


def test_more_epochs_resume_and_other_config_or_data_start_afresh(tmp_path, tiny, caplog):
    caplog.set_level(logging.INFO, logger="ageatlas.age.train")
    one = TrainConfig(epochs=1, batch_size=1, accumulate=2)
    assert train(*tiny, tmp_path, one, device="cpu")["resumed_after"] == 0
    longer = train(*tiny, tmp_path, TrainConfig(epochs=2, batch_size=1, accumulate=2), device="cpu")
    assert (
        longer["resumed_after"] == 1 and len(pd.read_csv(tmp_path / "metrics.tsv", sep="\t")) == 2
    )
    assert "resuming from" in caplog.text

    other = train(
        *tiny, tmp_path, TrainConfig(epochs=1, lr=3e-4, batch_size=1, accumulate=2), device="cpu"
    )
    assert other["resumed_after"] == 0 and (tmp_path / STALE_STATE).exists()
    assert "another config" in caplog.text
    assert len(pd.read_csv(tmp_path / "metrics.tsv", sep="\t")) == 1

    cache = Path(tiny[0][0][0])
    os.utime(
        cache, ns=(cache.stat().st_atime_ns, cache.stat().st_mtime_ns + 10**9)
    )  # a re-made cache
    remade = TrainConfig(epochs=2, lr=3e-4, batch_size=1, accumulate=2)
    assert train(*tiny, tmp_path, remade, device="cpu")["resumed_after"] == 0
    assert "another data" in caplog.text


def test_cosine_schedule_falls_to_zero_and_longer_runs_start_afresh(tmp_path, tiny, caplog):
    caplog.set_level(logging.INFO, logger="ageatlas.age.train")
    cosine = TrainConfig(epochs=4, lr=1e-3, batch_size=1, accumulate=2, lr_schedule="cosine")
    train(*tiny, tmp_path, cosine, device="cpu")
    lrs = pd.read_csv(tmp_path / "metrics.tsv", sep="\t")["lr"].tolist()
    # the lr an epoch ran at: half a cosine from lr towards 0 over the 4 epochs
    assert lrs == pytest.approx([1e-3 * (1 + np.cos(np.pi * e / 4)) / 2 for e in range(4)])
    # with cosine the number of epochs sets every epoch's lr: 5 epochs is another run
    longer = replace(cosine, epochs=5)
    assert train(*tiny, tmp_path, longer, device="cpu")["resumed_after"] == 0
    assert "another config" in caplog.text
    with pytest.raises(ValueError, match="lr_schedule"):
        train(*tiny, tmp_path / "bad", replace(cosine, lr_schedule="step"), device="cpu")


def test_early_stopping_rule():
    config = TrainConfig(epochs=10, early_stopping=2)
    assert not _finished(Progress(epoch=3, bad_epochs=1), config)
    assert _finished(Progress(epoch=3, bad_epochs=2), config)
    assert _finished(Progress(epoch=10), config)
    assert not _finished(Progress(epoch=3, bad_epochs=5), TrainConfig(epochs=10))


def test_ddp_over_two_gloo_processes(tmp_path, tiny, script):
    """Spawned from an unguarded script, as the workflow does; accumulate 2 over 2 processes is
    one sample per process and step, so the steps are those of one process."""
    config = TrainConfig(epochs=2, batch_size=1, accumulate=2)
    ddp = finish(run_training(script, tiny, tmp_path / "ddp", config, world_size=2))
    assert ddp["world_size"] == 2 and ddp["epochs_run"] == 2
    assert (tmp_path / "ddp" / "checkpoint.pt").exists()
    single = train(*tiny, tmp_path / "single", config, device="cpu")
    ddp_metrics = pd.read_csv(tmp_path / "ddp" / "metrics.tsv", sep="\t")
    single_metrics = pd.read_csv(tmp_path / "single" / "metrics.tsv", sep="\t")
    assert len(ddp_metrics) == 2
    # Training steps agree up to summation order: within 1e-4 over the first epoch. Adam scales
    # every update to about lr whatever the gradient's size, so rounding differences in near-zero
    # gradients become lr-sized steps and grow (1.1e-3 after the second epoch, torch 2.14.1 on
    # CPU). Validation differs a little, since DDP keeps rank 0's BatchNorm running statistics.
    np.testing.assert_allclose(
        ddp_metrics["train_mae"][0], single_metrics["train_mae"][0], rtol=1e-4
    )
    np.testing.assert_allclose(ddp_metrics["train_mae"], single_metrics["train_mae"], rtol=1e-2)
    np.testing.assert_allclose(ddp["best_val_mae"], single["best_val_mae"], rtol=0.05)


def test_ddp_precise_bn_averages_the_processes_statistics(tmp_path, tiny, script):
    """One sample per process and step: the statistics averaged over two processes' shards are
    those of one process over all samples, so validation agrees too (rank 0's alone would not)."""
    config = TrainConfig(epochs=2, batch_size=1, accumulate=2, precise_bn=True)
    ddp = finish(run_training(script, tiny, tmp_path / "ddp", config, world_size=2))
    single = train(*tiny, tmp_path / "single", config, device="cpu")
    np.testing.assert_allclose(ddp["best_val_mae"], single["best_val_mae"], rtol=1e-3)


def test_a_tiny_run_learns(tmp_path):
    folder = tmp_path / "cache"
    train_items = write_volumes(folder, 24, seed=1, signal_of_age=True)
    val_items = write_volumes(folder, 8, seed=2, signal_of_age=True)
    test_items = write_volumes(folder, 16, seed=3, signal_of_age=True)
    # The authors' lr; batches of 4 for speed; patience 1 so the LR drops within 8 epochs.
    config = TrainConfig(epochs=8, lr=1e-4, batch_size=4, accumulate=1, plateau_patience=1)
    train(train_items, val_items, tmp_path / "model", config, device="cpu")
    table, _ = predict(
        tmp_path / "model" / "checkpoint.pt", [(p, p) for p, _ in test_items], device="cpu"
    )
    ages = np.array([age for _, age in test_items])
    baseline = np.abs(ages - np.mean([age for _, age in train_items])).mean()
    mae = np.abs(table["predicted"].to_numpy() - ages).mean()
    assert mae < 0.6 * baseline, (
        mae,
        baseline,
    )  # a model that learns nothing predicts the mean: ~1 x


def test_batchnorm_statistics_average_every_batch_under_the_current_weights():
    """Precise BN: the running mean and variance are the average of the batches' own (not a
    momentum mix with the old ones), dropout draws nothing, momentum is restored and the model
    is left in eval mode."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Dropout(0.9), torch.nn.BatchNorm1d(3))
    norm = model[1]
    norm.running_mean.fill_(100.0)
    batches = [torch.randn(4, 3) * 2 + 5, torch.randn(4, 3) - 1]
    assert batchnorm_statistics(model, iter(batches)) == [norm]
    expected_mean = torch.stack([b.mean(0) for b in batches]).mean(0)
    expected_var = torch.stack([b.var(0) for b in batches]).mean(0)
    torch.testing.assert_close(norm.running_mean, expected_mean)
    torch.testing.assert_close(norm.running_var, expected_var)
    assert norm.momentum == 0.1 and not model.training and not norm.training
