"""Batched layer maps: the same maps as one participant at a time, and a broken participant ends
as its own error entry."""

from __future__ import annotations

from dataclasses import asdict

import nibabel as nib
import numpy as np
import pytest
import torch

from ageatlas.age.model import build_model
from ageatlas.age.preprocess import downsample
from ageatlas.age.train_config import TrainConfig
from ageatlas.explain import gradcam_batch
from ageatlas.explain.gradcam import cam_for_participant
from ageatlas.explain.gradcam_batch import cams_for_participants

GRID = (33, 32, 65)  # odd sizes: downsampling by 2 drops voxels; cache 16 x 16 x 32
DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    """Three participants (stitched water, cache by 2) and a checkpoint; items as the function
    takes them, each with its own output path."""
    folder = tmp_path_factory.mktemp("cohort")
    torch.manual_seed(0)
    model = build_model(hidden=16).eval()
    affine = np.array([[-2.2, 0, 0, 100], [0, 2.2, 0, -50], [0, 0, 3.0, -400], [0, 0, 0, 1]])
    rng = np.random.default_rng(0)
    items = []
    for eid in ("1000001", "1000002", "1000003"):
        water = rng.random(GRID).astype(np.float32)
        nib.save(nib.Nifti1Image(water, affine), folder / f"{eid}_W.nii.gz")
        np.save(folder / f"{eid}.npy", downsample(water, 2).astype(np.float16))
        items.append((eid, folder / f"{eid}.npy", folder / f"{eid}_W.nii.gz"))
    torch.save(
        {
            "model": model.state_dict(),
            "config": asdict(TrainConfig(hidden=16)),
            "input_shape": list(np.load(items[0][1]).shape),
        },
        folder / "checkpoint.pt",
    )
    return folder / "checkpoint.pt", items


def with_outputs(items, folder):
    return [(eid, cache, water, folder / f"{eid}.nii.gz") for eid, cache, water in items]


def saved(path) -> np.ndarray:
    return np.asarray(nib.load(path).dataobj)


def compare_maps(folder_a, folder_b, eids, device):
    tolerance = {"rtol": 1e-4, "atol": 1e-5} if device == "cpu" else {"rtol": 1e-2, "atol": 1e-3}
    for eid in eids:
        a, b = saved(folder_a / f"{eid}.nii.gz"), saved(folder_b / f"{eid}.nii.gz")
        assert b.shape == GRID and np.abs(a).max() > 0
        np.testing.assert_allclose(b, a, **tolerance, err_msg=eid)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("method", ["gradcam", "gradcam_signed", "hirescam"])
def test_batched_maps_are_the_one_at_a_time_maps(tmp_path, cohort, method, device):
    checkpoint, items = cohort
    items = items[:2]
    ones = {}
    for eid, cache, water, out in with_outputs(items, tmp_path / "one"):
        ones[eid] = cam_for_participant(checkpoint, cache, water, out, method=method, device="cpu")
    batched = cams_for_participants(
        checkpoint,
        with_outputs(items, tmp_path / "batch"),
        batch_size=2,
        method=method,
        device=device,
    )
    assert [info["eid"] for info in batched] == [eid for eid, *_ in items]
    assert all(
        info["status"] == "ok" and info["method"] == method and info["batch"] == 2
        for info in batched
    )
    for info in batched:
        assert info["predicted_age"] == pytest.approx(ones[info["eid"]]["predicted_age"], rel=1e-4)
    compare_maps(tmp_path / "one", tmp_path / "batch", ones, device)


def test_the_deviation_target_keeps_each_participants_side_in_a_batch(tmp_path, cohort):
    """Grad-CAM of |age - reference| with the reference between the participants' ages: in one
    batch, those below it get the map of -age (ReLU keeps other evidence), those above of age."""
    checkpoint, items = cohort
    ages = sorted(
        cam_for_participant(checkpoint, cache, water, out, device="cpu")["predicted_age"]
        for _, cache, water, out in with_outputs(items, tmp_path / "age")
    )
    options = {"target": "deviation", "reference_age": float(np.mean(ages[:2]))}
    for _, cache, water, out in with_outputs(items, tmp_path / "one"):
        cam_for_participant(checkpoint, cache, water, out, device="cpu", **options)
    infos = cams_for_participants(
        checkpoint, with_outputs(items, tmp_path / "batch"), batch_size=3, device="cpu", **options
    )
    assert [info["batch"] for info in infos] == [3, 3, 3]
    eids = [eid for eid, *_ in items]
    compare_maps(tmp_path / "one", tmp_path / "batch", eids, "cpu")
    below = [
        not np.array_equal(
            saved(tmp_path / "age" / f"{e}.nii.gz"), saved(tmp_path / "one" / f"{e}.nii.gz")
        )
        for e in eids
    ]
    assert sum(below) == 1  # the youngest: its map is another one than its age map


def test_a_broken_participant_is_its_own_error_entry(tmp_path, cohort):
    checkpoint, items = cohort
    garbled = tmp_path / "garbled.npy"
    garbled.write_bytes(b"not a numpy file")
    small = tmp_path / "small.npy"
    np.save(small, np.zeros((8, 8, 8), np.float16))  # not the stitched grid downsampled
    broken = [
        ("missing", tmp_path / "missing.npy", items[0][2]),
        ("garbled", garbled, items[0][2]),
        ("off-grid", small, items[0][2]),
    ]
    mixed = [items[0], broken[0], items[1], broken[1], broken[2], items[2]]
    infos = cams_for_participants(
        checkpoint, with_outputs(mixed, tmp_path / "maps"), batch_size=2, device="cpu"
    )
    assert [info["eid"] for info in infos] == [eid for eid, *_ in mixed]
    status = {info["eid"]: info["status"] for info in infos}
    assert status == {
        "1000001": "ok",
        "missing": "error",
        "1000002": "ok",
        "garbled": "error",
        "off-grid": "error",
        "1000003": "ok",
    }
    errors = {info["eid"]: info["error"] for info in infos if info["status"] == "error"}
    assert "FileNotFoundError" in errors["missing"] and "downsampl" in errors["off-grid"]
    written = sorted(p.name for p in (tmp_path / "maps").iterdir())
    assert written == ["1000001.nii.gz", "1000002.nii.gz", "1000003.nii.gz"]
    assert [info["batch"] for info in infos if info["status"] == "ok"] == [2, 2, 1]


def test_a_failed_batch_is_run_again_one_participant_at_a_time(tmp_path, cohort, monkeypatch):
    """E.g. a batch too large for the GPU: nobody's map is lost."""
    checkpoint, items = cohort
    real = gradcam_batch.layer_cams

    def small_only(model, volumes, layer, **options):
        if volumes.shape[0] > 1:
            raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
        return real(model, volumes, layer, **options)

    monkeypatch.setattr(gradcam_batch, "layer_cams", small_only)
    infos = cams_for_participants(
        checkpoint, with_outputs(items[:2], tmp_path / "maps"), batch_size=2, device="cpu"
    )
    assert [(info["status"], info["batch"]) for info in infos] == [("ok", 1)] * 2


@pytest.mark.parametrize(
    "options, match",
    [
        ({"method": "occlusion"}, "layer method"),
        ({"layer_name": "fc"}, "layer_name"),
        ({"target": "deviation"}, "reference_age"),
        ({"batch_size": 0}, "batch_size"),
    ],
)
def test_wrong_options_raise_before_any_participant(tmp_path, cohort, options, match):
    checkpoint, items = cohort
    with pytest.raises(ValueError, match=match):
        cams_for_participants(checkpoint, with_outputs(items, tmp_path), device="cpu", **options)
    assert not list(tmp_path.glob("*.nii.gz"))
