"""Grad-CAM: agreement with captum, M3d-CAM normalisation, hook hygiene, and the stitched-grid
geometry."""

from __future__ import annotations

from dataclasses import asdict

import nibabel as nib
import numpy as np
import pytest
import torch
from captum.attr import LayerAttribution, LayerGradCam

from ageatlas.age.model import build_model
from ageatlas.age.preprocess import downsample
from ageatlas.age.train_config import TrainConfig
from ageatlas.explain import gradcam
from ageatlas.explain.gradcam import cache_affine, cam_for_participant, grad_cam, to_stitched_grid

SHAPE = (16, 32, 32)


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)  # a seed whose layer3 map is partly zero, partly not
    return build_model(hidden=16).eval()


@pytest.fixture(scope="module")
def volume():
    return torch.randn((1, 1) + SHAPE, generator=torch.Generator().manual_seed(1))


def _no_hooks(model) -> bool:
    return all(
        not m._forward_hooks
        and not m._forward_pre_hooks
        and not m._backward_hooks
        and not getattr(m, "_backward_pre_hooks", {})
        for m in model.modules()
    )


def test_agrees_with_captum(model, volume):
    ours = grad_cam(model, volume, normalise=False, placement="m3dcam")
    theirs = (
        LayerGradCam(model, model.feature_layer).attribute(volume, relu_attributions=True).detach()
    )
    positive = float((ours.layer_map > 0).float().mean())
    assert 0 < positive < 1, "the seed should give a map that ReLU clips in part"
    assert ours.layer_shape == tuple(theirs.shape[2:])
    r = np.corrcoef(ours.layer_map.flatten().numpy(), theirs.flatten().numpy())[0, 1]
    assert r > 0.99
    # Upsampled the same way (M3d-CAM's placement), the un-normalised maps agree too.
    upsampled = LayerAttribution.interpolate(theirs, SHAPE, interpolate_mode="trilinear")[0, 0]
    assert torch.allclose(ours.map, upsampled, rtol=1e-4, atol=1e-6 * float(upsampled.abs().max()))
    with torch.no_grad():
        assert ours.predicted_age == pytest.approx(float(model(volume)[0]), rel=1e-5)


class _Negated(torch.nn.Module):
    """The model with its output negated: captum's Grad-CAM of -age."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, x):
        return -self.model(x)


def test_deviation_target_follows_the_side_of_the_reference(model, volume):
    age = grad_cam(model, volume, normalise=False).predicted_age
    above = grad_cam(model, volume, normalise=False, target="deviation", reference_age=age - 1.0)
    below = grad_cam(model, volume, normalise=False, target="deviation", reference_age=age + 1.0)
    # Predicted above the reference: the age's own map. Below: the map of -age, checked with captum.
    assert torch.equal(above.layer_map, grad_cam(model, volume, normalise=False).layer_map)
    theirs = LayerGradCam(_Negated(model), model.feature_layer).attribute(
        volume, relu_attributions=True
    )
    r = np.corrcoef(below.layer_map.flatten().numpy(), theirs.detach().flatten().numpy())[0, 1]
    assert r > 0.99 and not torch.equal(below.layer_map, above.layer_map)


@pytest.mark.parametrize(
    "target, reference", [("deviation", None), ("deviation", float("nan")), ("gap", 60.0)]
)
def test_bad_target_or_reference_is_refused_before_the_forward_pass(
    model, volume, target, reference
):
    with pytest.raises(ValueError, match="target"):
        grad_cam(model, volume, target=target, reference_age=reference)


def test_normalised_map_shape_range_and_cleanliness(model, volume):
    model.train()
    result = grad_cam(model, volume)
    assert model.training, "the caller's mode is restored"
    model.eval()
    assert (
        result.map.shape == SHAPE
        and result.map.dtype == torch.float32
        and result.map.device.type == "cpu"
    )
    assert float(result.map.min()) >= 0 and float(result.map.max()) <= 1
    assert (
        float(result.map.max()) > 0.9
    )  # min-max reaches 1 at the peak (trilinear may smooth slightly)
    assert _no_hooks(model)
    assert all(p.grad is None for p in model.parameters())


def test_other_layer_and_frozen_weights(model, volume):
    for p in model.parameters():
        p.requires_grad_(False)
    try:
        with torch.no_grad():  # gradients come from the hooked activation, not the weights
            result = grad_cam(model, volume, model.backbone.layer2)
    finally:
        for p in model.parameters():
            p.requires_grad_(True)
    assert result.map.shape == SHAPE
    assert result.layer_shape == (8, 8, 8)  # r3d: stem stride (1, 2, 2), layer2 halves again


def test_constant_map_becomes_zeros(monkeypatch, model, volume):
    monkeypatch.setattr(
        gradcam, "_layer_map", lambda method, act, grad: torch.full(act.shape[2:], 2.5)
    )
    assert torch.equal(grad_cam(model, volume).map, torch.zeros(SHAPE))
    assert torch.equal(grad_cam(model, volume, normalise=False).map, torch.full(SHAPE, 2.5))


def test_hooks_removed_on_error(model):
    with pytest.raises(RuntimeError):
        grad_cam(
            model, torch.zeros(1, 2, *SHAPE)
        )  # two channels: the adapter conv fails mid-forward
    assert _no_hooks(model)
    with pytest.raises(ValueError):
        grad_cam(model, torch.zeros(2, 1, *SHAPE))


def test_cache_affine_is_block_centre():
    affine = np.array([[0, -2.0, 0, 10], [1.5, 0, 0, -4], [0, 0, 3.0, 7], [0, 0, 0, 1]])
    grid = np.stack(np.meshgrid(*(np.arange(n) for n in (6, 6, 6)), indexing="ij"), -1).reshape(
        -1, 3
    )
    world = grid @ affine[:3, :3].T + affine[:3, 3]
    # World position of each voxel, block-averaged exactly as the cache is.
    centres = np.stack([downsample(world[:, a].reshape(6, 6, 6), 3) for a in range(3)], -1)
    expected = (cache_affine(affine, 3) @ np.array([1, 0, 1, 1.0]))[:3]
    assert np.allclose(centres[1, 0, 1], expected, atol=1e-4)


@pytest.fixture
def participant(tmp_path, model):
    """A stitched NIfTI (odd sizes, so downsampling drops voxels), its cache by 2 and a
    checkpoint."""
    grid = (33, 32, 65)
    affine = np.array([[-2.2, 0.1, 0, 100], [0, 2.2, 0.2, -50], [0, 0, 3.0, -400], [0, 0, 0, 1]])
    water = np.random.default_rng(0).random(grid).astype(np.float32)
    stitched = nib.Nifti1Image(water, affine)
    stitched.set_sform(
        affine, code=1
    )  # with shear; the qform, which cannot hold it, is a rigid one
    stitched.set_qform(
        np.diag([-2.2, 2.2, 3.0, 1])
        + np.array([[0, 0, 0, 100], [0, 0, 0, -50], [0, 0, 0, -400], [0, 0, 0, 0]]),
        code=1,
    )
    nib.save(stitched, tmp_path / "water.nii.gz")
    stitched = nib.load(tmp_path / "water.nii.gz")  # the affine as stored (float32)
    cache = downsample(water, 2).astype(np.float16)
    np.save(tmp_path / "cache.npy", cache)
    torch.save(
        {
            "model": model.state_dict(),
            "epoch": 1,
            "val_mae": 5.0,
            "config": asdict(TrainConfig(hidden=16)),
            "input_shape": list(cache.shape),
        },
        tmp_path / "checkpoint.pt",
    )
    return tmp_path, stitched


def test_cam_for_participant_writes_stitched_grid(participant, caplog):
    path, stitched = participant
    out = path / "cam" / "cam.nii.gz"
    with caplog.at_level("WARNING", logger="ageatlas.explain.gradcam"):
        info = cam_for_participant(
            path / "checkpoint.pt", path / "cache.npy", path / "water.nii.gz", out
        )
    assert info["device"] == ("cuda" if torch.cuda.is_available() else "cpu")
    assert np.isfinite(info["predicted_age"]) and info["seconds"] >= 0
    if not torch.cuda.is_available():
        assert "CPU" in caplog.text
    saved = nib.load(out)
    assert saved.shape == stitched.shape
    assert saved.get_data_dtype() == np.float32
    assert np.array_equal(saved.affine, stitched.affine)
    assert np.array_equal(saved.header.get_sform(), stitched.header.get_sform())
    assert np.allclose(saved.header.get_qform(), stitched.header.get_qform(), atol=1e-5)
    assert saved.header["sform_code"] == 1 and saved.header["qform_code"] == 1
    data = saved.get_fdata()
    assert data.min() >= 0 and data.max() <= 1 + 1e-6 and data.max() > 0.5


def test_peak_lands_at_block_centre_in_world(participant, monkeypatch):
    """A CAM high in one cache voxel must centre on that voxel's block of stitched voxels in world
    space."""
    path, stitched = participant
    peak = (5, 9, 20)

    def fake_cam(model, volume, layer=None, *, normalise=True, **options):
        cam = torch.zeros(volume.shape[2:])
        cam[peak] = 1.0
        return gradcam.CamResult(cam, 60.0, cam)

    monkeypatch.setattr(gradcam, "grad_cam", fake_cam)
    out = path / "peak.nii.gz"
    cam_for_participant(
        path / "checkpoint.pt", path / "cache.npy", path / "water.nii.gz", out, device="cpu"
    )
    data = nib.load(out).get_fdata()
    voxels = np.argwhere(data > 0)
    weights = data[data > 0]
    centre_voxel = (voxels * weights[:, None]).sum(0) / weights.sum()
    world = stitched.affine @ np.append(centre_voxel, 1)
    block = np.array(peak) * 2 + 0.5  # stitched voxels 2i and 2i + 1
    assert np.allclose(world, stitched.affine @ np.append(block, 1), atol=1e-4)
    assert data.max() == pytest.approx(
        0.75**3
    )  # each stitched voxel is a quarter cache voxel off centre


def test_factor_inference_and_identity():
    cam = np.random.default_rng(0).random((4, 5, 6)).astype(np.float32)
    assert to_stitched_grid(cam, (4, 5, 6), 1) is cam
    assert gradcam._check_or_infer_factor((9, 10, 13), (4, 5, 6), None) == 2
    with pytest.raises(ValueError):
        gradcam._check_or_infer_factor((9, 10, 13), (4, 5, 6), 3)
    with pytest.raises(ValueError, match="ambiguous"):
        gradcam._check_or_infer_factor((5, 5, 5), (1, 1, 1), None)
