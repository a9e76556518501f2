"""Where a layer's cells sit in the input: geometry from the model's graph, placement, pooling,
and maps whose peak lands where their evidence is."""

from __future__ import annotations

from dataclasses import asdict

import nibabel as nib
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from ageatlas.age.model import AgeRegressor
from ageatlas.age.train_config import TrainConfig
from ageatlas.baseline.model import ProjectionRegressor
from ageatlas.explain.cells import CellGeometry, cell_geometry, place_cells, pool_to_cells
from ageatlas.explain.gradcam import cache_affine, cam_for_participant, grad_cam


def test_r3d_and_vgg_geometry_from_the_graph():
    model = AgeRegressor(hidden=4)
    expected = {"layer2": (2, 4, 4), "layer3": (4, 8, 8), "layer4": (8, 16, 16)}
    for name, stride in expected.items():
        geometry = cell_geometry(model, getattr(model.backbone, name), 3)
        assert geometry == CellGeometry(tuple(map(float, stride)), (0.0, 0.0, 0.0))
    baseline = ProjectionRegressor(hidden=8, pool=2)
    # The last VGG block before its pool: four 2 x 2 pools, cells at 16 j + 7.5.
    assert cell_geometry(baseline, baseline.feature_layer, 2) == CellGeometry(
        (16.0, 16.0), (7.5, 7.5)
    )
    with pytest.raises(ValueError, match="not a module"):
        cell_geometry(model, nn.ReLU(), 3)


def test_geometry_matches_the_gradient_centroid_of_a_cell():
    """The independent check: where d activation(cell) / d input has its centre of mass."""
    torch.manual_seed(0)
    model = AgeRegressor(hidden=4).eval()
    volume = torch.randn(1, 1, 32, 48, 48, requires_grad=True)
    captured = []
    handle = model.backbone.layer3.register_forward_hook(lambda m, i, o: captured.append(o))
    model(volume)
    handle.remove()
    cell = (4, 3, 3)
    (gradient,) = torch.autograd.grad(captured[0][0, :, cell[0], cell[1], cell[2]].sum(), volume)
    weight = gradient[0, 0].abs().numpy()
    grid = np.indices(weight.shape)
    centroid = [(g * weight).sum() / weight.sum() for g in grid]
    geometry = cell_geometry(model, model.backbone.layer3, 3)
    expected = [s * j + o for s, j, o in zip(geometry.stride, cell, geometry.offset)]
    assert np.allclose(centroid, expected, atol=0.5), (centroid, expected)
    m3dcam = CellGeometry.m3dcam(captured[0].shape[2:], volume.shape[2:])
    wrong = [s * j + o for s, j, o in zip(m3dcam.stride, cell, m3dcam.offset)]
    assert not np.allclose(centroid, wrong, atol=1.0)


def test_m3dcam_placement_is_interpolate_without_aligned_corners():
    cells = torch.rand(4, 3, 5, generator=torch.Generator().manual_seed(0))
    shape = (16, 24, 40)
    ours = place_cells(cells, CellGeometry.m3dcam(cells.shape, shape), shape)
    theirs = F.interpolate(cells[None, None], size=shape, mode="trilinear", align_corners=False)
    assert torch.allclose(ours, theirs[0, 0], atol=1e-6)


def test_placement_hits_cell_centres_and_holds_edges():
    cells = torch.tensor([1.0, 3.0, 2.0])
    placed = place_cells(cells, CellGeometry((4.0,), (1.0,)), (12,))
    assert placed[1] == 1.0 and placed[5] == 3.0 and placed[9] == 2.0  # centres at 1, 5, 9
    assert placed[3] == 2.0  # half-way between the first two
    assert placed[0] == 1.0 and placed[11] == 2.0  # beyond the outer centres: edge values


def test_pool_to_cells_averages_each_footprint():
    values = np.zeros((8, 8))
    values[:4, :4] = 1.0
    geometry = CellGeometry((4.0, 4.0), (1.5, 1.5))
    pooled = pool_to_cells(values, geometry, (2, 2))
    assert np.allclose(pooled, [[1.0, 0.0], [0.0, 0.0]])
    assert np.allclose(pool_to_cells(np.ones((9, 7)), geometry, (2, 2)), 1.0)


def _constant_weights(model: nn.Module) -> nn.Module:
    """Every convolution and linear layer averages its inputs; batch norms are the identity.

    With a non-negative input the response to a point is then symmetric around the cell whose
    receptive field is centred on it, so that cell is where a map must peak.
    """
    for module in model.modules():
        if isinstance(module, nn.modules.conv._ConvNd | nn.Linear):
            nn.init.constant_(module.weight, 1.0 / module.weight[0].numel())
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.modules.batchnorm._BatchNorm):
            module.reset_running_stats()
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)
    return model.eval()


def _peak_offset_mm(tmp_path, model, layer_name, method, placement) -> np.ndarray:
    """|world position of the saved map's peak - world position of the one voxel the model sees|.

    The cache grid (26, 52, 52) gives odd layer grids (13^3 at layer2, 7^3 at layer3) whose centre
    cell is centred on cache voxel (12, 24, 24), so every method's map is symmetric around it.
    """
    cache_shape, factor, evidence = (26, 52, 52), 2, (12, 24, 24)
    cache = np.zeros(cache_shape, dtype=np.float32)
    cache[evidence] = 1.0
    np.save(tmp_path / "cache.npy", cache)
    affine = np.array([[-2.0, 0, 0, 90], [0, 2.0, 0, -40], [0, 0, 3.0, -300], [0, 0, 0, 1]])
    stitched = np.zeros(tuple(factor * n for n in cache_shape), dtype=np.float32)
    nib.save(nib.Nifti1Image(stitched, affine), tmp_path / "water.nii.gz")
    torch.save(
        {"model": model.state_dict(), "config": asdict(TrainConfig(hidden=4))},
        tmp_path / "checkpoint.pt",
    )
    cam_for_participant(
        tmp_path / "checkpoint.pt",
        tmp_path / "cache.npy",
        tmp_path / "water.nii.gz",
        tmp_path / "map.nii.gz",
        layer_name=layer_name,
        method=method,
        placement=placement,
        device="cpu",
    )
    saved = nib.load(tmp_path / "map.nii.gz")
    data = saved.get_fdata()
    peak_world = saved.affine @ np.append(np.unravel_index(np.argmax(data), data.shape), 1)
    evidence_world = cache_affine(affine, factor) @ np.append(evidence, 1)
    cache_voxel_mm = np.abs(np.diag(affine)[:3]) * factor
    return np.abs(peak_world - evidence_world)[:3] / cache_voxel_mm


@pytest.fixture(scope="module")
def point_model():
    return _constant_weights(AgeRegressor(hidden=4))


@pytest.mark.parametrize("layer_name", ["layer2", "layer3"])
@pytest.mark.parametrize("method", ["gradcam", "hirescam"])
def test_map_peaks_on_its_evidence_in_world_coordinates(tmp_path, point_model, layer_name, method):
    """A model that sees only one cache voxel: the saved map peaks within one cache voxel of it."""
    offset = _peak_offset_mm(tmp_path, point_model, layer_name, method, "receptive_field")
    assert np.all(offset <= 1.0), offset


def test_m3dcam_placement_misses_the_evidence(tmp_path, point_model):
    """The named M3d-CAM option keeps the paper's half-stride shift (the bug this placement
    fixes)."""
    offset = _peak_offset_mm(tmp_path, point_model, "layer3", "gradcam", "m3dcam")
    assert offset[1] > 1.0 and offset[2] > 1.0, offset


def test_map_of_the_2d_baseline_peaks_on_its_evidence():
    model = _constant_weights(ProjectionRegressor(hidden=8, pool=2))
    image = torch.zeros(1, 2, 64, 64)
    image[:, :, 39:41, 39:41] = 1.0  # cell (2, 2) of the last block sits at 16 * 2 + 7.5
    for placement in ("receptive_field", "m3dcam"):  # 2 x 2 pools: both placements agree
        cam = grad_cam(model, image, model.feature_layer, placement=placement).map
        peak = np.unravel_index(int(cam.argmax()), tuple(cam.shape))
        assert all(39 <= p <= 40 for p in peak), (placement, peak)
