"""Attribution maps of a trained model point where age was planted (SYNTHETIC phantoms, no DICOM
round trip).

The phantoms are the synthetic cohort's anatomy (ageatlas.synthetic, planted age
effects x3 as ``synthetic.age_effect_scale: 3``) on the
demo's stitched grid, with noise, normalised and block-averaged as the
workflow's cache is. A model trained on them for a few epochs must beat the
mean predictor, and its maps (HiResCAM at layer2 of the predicted age, the
workflow's default; Grad-CAM only with the deviation target) must put
clearly more importance in the age regions than their share of the body:
enrichment 1 is no preference. Stitching, registration and the
population maps are covered by the workflow test and the demo's truth check.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ageatlas.age.model import load_trained
from ageatlas.age.preprocess import downsample, normalise
from ageatlas.age.train import train
from ageatlas.age.train_config import TrainConfig
from ageatlas.explain.gradcam import grad_cam, to_stitched_grid
from ageatlas.explain.truth import enrichment
from ageatlas.ingest.grid import Grid, grid_affine
from ageatlas.synthetic.participants import make_cohort
from ageatlas.synthetic.phantom import AGE_LABELS, region_labels, tissue_signal

GRID = Grid(shape=(56, 44, 92), spacing=(8.928, 8.928, 12.0))  # the demo's 1/4 grid
FACTOR = 2  # the demo's downsample: 28 x 22 x 46 model input
N, N_TRAIN, N_VAL, N_TEST = 120, 80, 16, 16


def _lps_axes(affine: np.ndarray, shape) -> tuple[np.ndarray, ...]:
    """LPS voxel-centre coordinates of an axis-aligned RAS grid."""
    ras = [affine[a, a] * np.arange(n) + affine[a, 3] for a, n in enumerate(shape)]
    return -ras[0], -ras[1], ras[2]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    out = tmp_path_factory.mktemp("phantoms")
    axes = _lps_axes(grid_affine(GRID, (4.46, 4.45), 105.0), GRID.shape)
    rng = np.random.default_rng(0)
    participants = make_cohort(N, seed=42, offset_sd=2.0, age_effect_scale=3.0)
    items, labels = [], {}
    for p in participants:
        water = tissue_signal(p, *axes)[0]
        regions = region_labels(p, *axes)
        image = np.where(regions > 0, np.abs(water + rng.normal(0, 0.02, water.shape)), 0.0)
        path = out / f"{p.eid}.npy"
        np.save(path, downsample(normalise(image.astype(np.float32), rng=rng), FACTOR))
        items.append((str(path), p.age))
        labels[p.eid] = regions
    torch.manual_seed(0)
    config = TrainConfig(epochs=8, lr=1e-4, batch_size=8, accumulate=1, seed=42)
    train(items[:N_TRAIN], items[N_TRAIN : N_TRAIN + N_VAL], out / "model", config, device="cpu")
    model, _ = load_trained(out / "model" / "checkpoint.pt")
    train_mean = float(np.mean([age for _, age in items[:N_TRAIN]]))
    return model, participants[-N_TEST:], items[-N_TEST:], labels, train_mean


def test_model_learns_the_planted_ageing(trained):
    model, test, items, _, train_mean = trained
    volumes = torch.stack([torch.from_numpy(np.load(path))[None] for path, _ in items])
    with torch.no_grad():
        predicted = model(volumes).numpy()
    ages = np.array([age for _, age in items])
    assert np.abs(predicted - ages).mean() < 0.6 * np.abs(train_mean - ages).mean()


@pytest.mark.parametrize(
    "method, layer, target, floor",
    [
        ("hirescam", "layer2", "age", 2.0),  # the workflow's default, the paper's target
        ("gradcam", "layer3", "deviation", 1.4),  # Grad-CAM needs the deviation target
    ],
)
def test_maps_light_up_where_age_was_planted(trained, method, layer, target, floor):
    model, test, items, labels, train_mean = trained
    scores = []
    for p, (path, _) in zip(test, items):
        volume = torch.from_numpy(np.load(path))[None, None]
        cam = grad_cam(
            model,
            volume,
            getattr(model.backbone, layer),
            method=method,
            normalise=False,
            target=target,
            reference_age=train_mean,
        ).map.numpy()
        scores.append(
            enrichment(to_stitched_grid(cam, GRID.shape, FACTOR), labels[p.eid], AGE_LABELS)
        )
    scores = np.array(scores)
    message = f"enrichment per participant: {np.round(scores, 2)}"
    print(method, layer, target, message)
    assert np.nanmedian(scores) > floor, message
    assert np.mean(scores > 1) >= 0.6, message  # NaN (an all-zero map) counts as a miss
