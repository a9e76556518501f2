"""The 2.5D baseline: model shape, local weights, translations, a tiny training run that learns,
Grad-CAM 2D.

Training and prediction are the 3D model's (ageatlas.age.train, ageatlas.age.predict)
given a BaselineConfig; their resume, DDP and early stopping are tested in
age/test_train.py, the workflow's scripts in test_workflow.py.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from captum.attr import LayerAttribution, LayerGradCam
from torch import nn

from ageatlas.age import bias, evaluate
from ageatlas.age.predict import predict
from ageatlas.age.train import METRIC_COLUMNS, train
from ageatlas.baseline.model import (
    BaselineConfig,
    build_baseline,
    grad_cam_2d,
    gradcam_figure,
    load_baseline,
    random_shift,
)
from ageatlas.explain import gradcam

SIZE = 32  # VGG's five max-pools leave 1 x 1; the classifier's adaptive pool makes it pool x pool
REGION = (slice(4, 12), slice(8, 16))  # where age is written, in the water channel
# Langner's lr and batch-wise training; small batches so BatchNorm's running statistics settle in
# few epochs.
TINY = BaselineConfig(
    epochs=15,
    lr=1e-4,
    batch_size=8,
    max_shift=2,
    loss="l1",
    hidden=64,
    dropout=0.0,
    pool=2,
    plateau_patience=100,
    num_workers=0,
)


def write_projections(folder: Path, n: int, seed: int, size: int = SIZE) -> list[tuple[str, float]]:
    """(path, age) of float16 (2, size, size) images: a dim noisy body and a block whose brightness
    is age."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    ages = rng.uniform(45, 80, n)
    images = np.zeros((n, 2, size, size), np.float32)
    images[:, :, 1:-1, size // 8 : -size // 8] = 0.3
    images += rng.normal(0, 0.05, images.shape).astype(np.float32)
    images[(slice(None), 0, *REGION)] = (0.3 + 0.7 * (ages - 45) / 35)[:, None, None]
    paths = [folder / f"{1000000 + 100 * seed + i}.npy" for i in range(n)]
    for path, image in zip(paths, images):
        np.save(path, image.astype(np.float16))
    return [(str(path), float(age)) for path, age in zip(paths, ages)]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("projections")
    return {
        split: write_projections(root, n, seed)
        for split, n, seed in (("train", 48, 0), ("val", 16, 1), ("test", 16, 2))
    }


@pytest.fixture(scope="module")
def trained(data, tmp_path_factory):
    out = tmp_path_factory.mktemp("baseline")
    summary = train(data["train"], data["val"], out, TINY, device="cpu")
    return out, summary


def eids(items):
    return [Path(path).stem for path, _ in items]


def predict_items(items):
    return list(zip(eids(items), (path for path, _ in items)))


def test_model_takes_two_channels_and_returns_one_age():
    with torch.device("meta"):  # Langner's sizes, shapes only: no 165M weights to initialise
        model = build_baseline().eval()
        x = torch.zeros(1, 2, 256, 256)
        assert model.features(x).shape == (
            1,
            512,
            8,
            8,
        )  # so the 8 x 8 pool is the identity at 256 x 256
        assert model(x).shape == (1,)
    assert model.features[0].in_channels == 2
    assert model.classifier[0].in_features == 512 * 8 * 8 and model.classifier[-1].out_features == 1
    small = build_baseline(hidden=16, pool=2).eval()
    with torch.no_grad():
        assert small(torch.zeros(3, 2, SIZE, SIZE)).shape == (3,)


@pytest.fixture(scope="module")
def vgg_state() -> dict:
    """A torchvision vgg16_bn state_dict (RGB first convolution, as ImageNet's): features and the
    last layer."""
    from torchvision.models import vgg16_bn

    torch.manual_seed(0)
    state = vgg16_bn(weights=None).state_dict()
    return {
        k: v for k, v in state.items() if k.startswith("features.") or k.startswith("classifier.6.")
    }


def test_local_weights_load_by_name_and_rgb_is_averaged(tmp_path, vgg_state):
    state = vgg_state
    torch.save(state, tmp_path / "vgg16_bn.pth")
    model = build_baseline(tmp_path / "vgg16_bn.pth", hidden=16, pool=2)
    loaded = model.state_dict()
    rgb = state["features.0.weight"]
    assert torch.equal(loaded["features.0.weight"], rgb.mean(1, keepdim=True).repeat(1, 2, 1, 1))
    for key in ("features.0.bias", "features.1.running_var", "features.40.weight"):
        assert torch.equal(loaded[key], state[key]), key


def test_local_weights_mismatches_are_named(tmp_path, vgg_state):
    broken = dict(vgg_state)
    broken.pop("features.3.weight")
    broken["features.99.weight"] = torch.zeros(1)
    broken["features.7.weight"] = torch.zeros(5, 5, 3, 3)
    torch.save(broken, tmp_path / "broken.pth")
    with pytest.raises(ValueError) as error:
        build_baseline(tmp_path / "broken.pth", hidden=16, pool=2)
    message = str(error.value)
    assert "missing keys (1): features.3.weight" in message
    assert "unexpected keys (1): features.99.weight" in message
    assert "features.7.weight (5, 5, 3, 3) != (128, 64, 3, 3)" in message
    torch.save([1, 2], tmp_path / "list.pth")
    with pytest.raises(ValueError, match="state_dict"):
        build_baseline(tmp_path / "list.pth", hidden=16, pool=2)
    with pytest.raises(FileNotFoundError, match="nothing is downloaded"):
        build_baseline(tmp_path / "absent.pth", hidden=16, pool=2)


def test_random_shift_moves_content_and_fills_zeros():
    x = torch.zeros(4, 2, 9, 9)
    x[:, :, 4, 4] = 1
    generator = torch.Generator().manual_seed(0)
    shifts = torch.randint(-3, 4, (4, 2), generator=torch.Generator().manual_seed(0)).tolist()
    out = random_shift(x, 3, generator)
    assert out.shape == x.shape
    for image, (dy, dx) in zip(out, shifts):
        assert image[:, 4 + dy, 4 + dx].tolist() == [1, 1] and float(image.sum()) == 2
    assert random_shift(x, 0, generator) is x


def test_config_checks_loss_and_shift():
    assert (
        BaselineConfig().loss == "l1"
        and BaselineConfig().batch_size == 32
        and BaselineConfig().accumulate == 1
    )
    with pytest.raises(ValueError, match="loss"):
        BaselineConfig(loss="huber")
    with pytest.raises(ValueError, match="max_shift"):
        BaselineConfig(max_shift=-1)
    error = torch.tensor([-2.0, 3.0])
    assert BaselineConfig(loss="mse").sample_loss(error).tolist() == [4.0, 9.0]
    assert BaselineConfig(loss="l1").sample_loss(error).tolist() == [2.0, 3.0]
    saved = asdict(replace(TINY, loss="mse"))
    assert BaselineConfig.from_dict({**saved, "gpus": 1, "train_splits": ["train"]}) == replace(
        TINY, loss="mse"
    )


def test_tiny_training_beats_the_mean_predictor(data, trained, caplog):
    out, summary = trained
    assert summary["device"] == "cpu" and summary["epochs_run"] == TINY.epochs
    metrics = pd.read_csv(out / "metrics.tsv", sep="\t")
    assert list(metrics.columns) == list(METRIC_COLUMNS) and len(metrics) == TINY.epochs
    seconds = evaluate.read_epoch_seconds(out / "metrics.tsv")
    assert len(seconds) == TINY.epochs and min(seconds) > 0
    assert metrics["val_mae"].min() == pytest.approx(summary["best_val_mae"])

    with caplog.at_level(logging.INFO, logger="ageatlas.age.predict"):
        predicted, timing = predict(
            out / "checkpoint.pt",
            predict_items(data["test"]),
            batch_size=5,
            device="cpu",
            config_type=BaselineConfig,
        )
    assert "s per sample" in caplog.text
    assert list(predicted["eid"]) == eids(data["test"])
    assert timing["n"] == 16 and timing["seconds_per_sample"] > 0 and timing["device"] == "cpu"
    ages = np.array([age for _, age in data["test"]])
    mae = np.abs(predicted["predicted"].to_numpy() - ages).mean()
    mean_mae = np.abs(np.mean([age for _, age in data["train"]]) - ages).mean()
    assert mae < 0.7 * mean_mae, (
        mae,
        mean_mae,
    )  # 15 epochs of 48 images: better than the mean, not good


def test_predictions_feed_bias_correction_and_table1(data, trained):
    """The table the workflow's predict script writes works with ageatlas.age.bias and
    ageatlas.age.evaluate unchanged."""
    out, _ = trained
    rng = np.random.default_rng(0)
    rows = [
        (eid, split, age)
        for split in ("train", "val", "test")
        for eid, (_, age) in zip(eids(data[split]), data[split])
    ]
    cohort = pd.DataFrame(rows, columns=["eid", "split", "age"])
    cohort["sex"] = rng.choice(["F", "M"], len(cohort))
    cohort["bmi_group"] = rng.choice(["healthy", "overweight", "obese"], len(cohort))
    predicted, timing = predict(
        out / "checkpoint.pt",
        predict_items(data["val"] + data["test"]),
        device="cpu",
        config_type=BaselineConfig,
    )
    table = cohort[["eid", "split", "age"]].merge(predicted, on="eid", validate="one_to_one")
    corrected = bias.correct_table(table, bias.fit_table(table, "delta"))
    method = evaluate.MethodResult(
        "2.5D",
        corrected,
        training_samples=48,
        epoch_seconds=evaluate.read_epoch_seconds(out / "metrics.tsv"),
        inference_seconds_per_sample=timing["seconds_per_sample"],
        column="corrected",
    )
    t1 = evaluate.table1(cohort, [method])
    assert t1.loc[t1["Metric"] == evaluate.RUNTIME, "2.5D"].iloc[0] > 0
    assert evaluate.overall_mae(cohort, method)["mae"] < 4


def test_same_seed_same_numbers_and_the_loss_matters(data, tmp_path):
    config = replace(TINY, epochs=1)
    for name, loss in (("a", "l1"), ("b", "l1"), ("c", "mse")):
        train(
            data["train"][:16],
            data["val"][:8],
            tmp_path / name,
            replace(config, loss=loss),
            device="cpu",
        )
    a, b, c = (pd.read_csv(tmp_path / name / "metrics.tsv", sep="\t") for name in "abc")
    assert a[["train_mae", "val_mae"]].equals(b[["train_mae", "val_mae"]])
    weights = [load_baseline(tmp_path / name / "checkpoint.pt")[0].state_dict() for name in "abc"]
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])
    assert not all(
        torch.equal(weights[0][k], weights[2][k]) for k in weights[0]
    )  # MSE steps differently
    assert load_baseline(tmp_path / "c" / "checkpoint.pt")[1]["config"]["loss"] == "mse"


def test_precise_bn_sets_running_statistics_from_the_training_set(data, tmp_path):
    """With precise_bn the saved BatchNorm means are those of the training images under the final
    weights (not a momentum average of older weights' batches), and eval mode follows them."""
    items = data["train"][:16]  # two batches of 8: the mean of batch means is the overall mean
    for name, precise in (("precise", True), ("momentum", False)):
        train(
            items,
            data["val"][:8],
            tmp_path / name,
            replace(TINY, epochs=2, lr=1e-3, precise_bn=precise),
            device="cpu",
        )
    x = torch.from_numpy(np.stack([np.load(path).astype(np.float32) for path, _ in items]))
    means = {}
    for name in ("precise", "momentum"):
        model, meta = load_baseline(tmp_path / name / "checkpoint.pt")
        with torch.no_grad():
            features = model.features[0](x)  # what the first BatchNorm sees
        means[name] = (features.mean(dim=(0, 2, 3)), model.features[1].running_mean)
    assert meta["config"]["precise_bn"] is False
    np.testing.assert_allclose(*means["precise"], rtol=1e-4, atol=1e-5)
    assert not torch.allclose(*means["momentum"], rtol=1e-2, atol=1e-3)


# ---- Grad-CAM ------------------------------------------------------------------


def _no_hooks(model) -> bool:
    return all(not m._forward_hooks and not m._backward_hooks for m in model.modules())


def test_grad_cam_2d_shape_range_and_captum():
    torch.manual_seed(0)
    model = build_baseline(hidden=16, pool=2).eval()
    image = torch.rand(2, 64, 48, generator=torch.Generator().manual_seed(1))
    result = grad_cam_2d(model, image)
    assert result.map.shape == (64, 48) and result.layer_shape == (4, 3)
    assert float(result.map.min()) >= 0 and float(result.map.max()) == pytest.approx(1, abs=0.1)
    assert _no_hooks(model) and all(p.grad is None for p in model.parameters())
    theirs = (
        LayerGradCam(model, model.feature_layer)
        .attribute(image[None], relu_attributions=True)
        .detach()
    )
    assert torch.allclose(
        result.layer_map, theirs[0, 0], rtol=1e-4, atol=1e-6 * float(theirs.abs().max())
    )
    upsampled = LayerAttribution.interpolate(theirs, (64, 48), interpolate_mode="bilinear")[0, 0]
    raw = gradcam.grad_cam(model, image[None], model.feature_layer, normalise=False).map
    assert torch.allclose(raw, upsampled, rtol=1e-4, atol=1e-6 * float(upsampled.abs().max()))
    with torch.no_grad():
        assert result.predicted_age == pytest.approx(float(model(image[None])[0]), rel=1e-5)
    with pytest.raises(ValueError):
        grad_cam_2d(model, image[None])


class _SmallCNN(nn.Module):
    """Receptive field 5 x 5: unlike VGG's last block on a toy image, its map can localise."""

    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(2, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1), nn.ReLU()
        )
        self.head = nn.Linear(8, 1)

    @property
    def feature_layer(self) -> nn.Module:
        return self.features

    def forward(self, x):
        return self.head(self.features(x).mean(dim=(2, 3))).squeeze(1)


def test_grad_cam_2d_highlights_the_informative_region(tmp_path):
    """A non-square toy whose age is in one block only: the map peaks there, and is low
    elsewhere."""
    torch.manual_seed(0)
    items = write_projections(tmp_path, 32, seed=3, size=SIZE)
    images = torch.stack(
        [torch.from_numpy(np.load(p).astype(np.float32))[:, :, 4:28] for p, _ in items]
    )
    ages = torch.tensor([age for _, age in items])
    model = _SmallCNN()
    model.head.bias.data.fill_(float(ages.mean()))
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(100):
        optimizer.zero_grad()
        (model(images) - ages).abs().mean().backward()
        optimizer.step()
    oldest = int(ages.argmax())
    cam = grad_cam_2d(model, images[oldest]).map
    assert cam.shape == (SIZE, 24)
    region = (
        REGION[0],
        slice(REGION[1].start - 4, REGION[1].stop - 4),
    )  # the crop moved it 4 columns left
    inside = torch.zeros_like(cam, dtype=torch.bool)
    inside[region] = True
    peak = np.unravel_index(int(cam.argmax()), cam.shape)
    assert inside[peak], peak
    assert float(cam[inside].mean()) > 3 * float(cam[~inside].mean())


def test_gradcam_figure(data, trained, tmp_path):
    out, _ = trained
    items = predict_items(data["test"])[:2]
    ages = dict(zip(eids(data["test"]), (a for _, a in data["test"])))
    rows = gradcam_figure(
        out / "checkpoint.pt", items, tmp_path / "figure9.png", ages=ages, device="cpu"
    )
    predicted, _ = predict(out / "checkpoint.pt", items, device="cpu", config_type=BaselineConfig)
    assert [r["eid"] for r in rows] == [eid for eid, _ in items]
    assert np.allclose([r["predicted"] for r in rows], predicted["predicted"], atol=1e-3)
    assert (tmp_path / "figure9.png").stat().st_size > 0
    with pytest.raises(ValueError):
        gradcam_figure(out / "checkpoint.pt", [], tmp_path / "empty.png")
