"""Where a layer's cells sit in the model's input, and maps moved between the two grids.

A convolution or pooling with kernel k, stride s, padding p and dilation d
centres output cell j on input position s*j - p + d*(k - 1)/2. Composing the
modules from the input to a layer gives, per axis, ``position = stride * j +
offset``: the centre of the cell's receptive field. :func:`cell_geometry`
derives it from the model itself by tracing its graph (torch.fx), so it holds
for any layer of any network made of such modules: r3d_18's layer2 cells sit
at (2j, 4j, 4j), layer3 at (4j, 8j, 8j); the 2.5D model's last VGG block at
16j + 7.5.

M3d-CAM (which the paper used) upsamples with ``F.interpolate(...,
align_corners=False)``, which puts cell j at scale*j + (scale - 1)/2: right
for chains of 2 x 2 poolings, half a stride too high for strided convolutions
with symmetric padding. :meth:`CellGeometry.m3dcam` names that placement, so it
can be chosen deliberately (``gradcam.placement: m3dcam``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.fx as fx
from torch import nn

# Modules that move cells; everything else (normalisation, activations,
# dropout) keeps the geometry of its input.
_STRIDED = (nn.modules.conv._ConvNd, nn.modules.pooling._MaxPoolNd, nn.modules.pooling._AvgPoolNd)
# Modules whose cells cannot be placed on the input.
_UNPLACEABLE = (
    nn.modules.conv._ConvTransposeNd,
    nn.modules.pooling._AdaptiveAvgPoolNd,
    nn.modules.pooling._AdaptiveMaxPoolNd,
    nn.Upsample,
    nn.Linear,
    nn.Flatten,
)
PLACEMENTS = ("receptive_field", "m3dcam")


@dataclass(frozen=True)
class CellGeometry:
    """Per input axis: cell j of the layer is centred on input position stride * j + offset."""

    stride: tuple[float, ...]
    offset: tuple[float, ...]

    @classmethod
    def identity(cls, ndim: int) -> CellGeometry:
        return cls((1.0,) * ndim, (0.0,) * ndim)

    @classmethod
    def m3dcam(cls, cells_shape, input_shape) -> CellGeometry:
        """M3d-CAM's placement: trilinear upsampling with align_corners=False."""
        scale = tuple(n_in / n for n_in, n in zip(input_shape, cells_shape, strict=True))
        return cls(scale, tuple((s - 1) / 2 for s in scale))

    def then(self, module: nn.Module) -> CellGeometry:
        """The geometry after one convolution or pooling module."""
        ndim = len(self.stride)
        kernel, stride, padding, dilation = (
            _per_axis(getattr(module, name, 1), ndim)
            for name in ("kernel_size", "stride", "padding", "dilation")
        )
        return CellGeometry(
            tuple(a * s for a, s in zip(self.stride, stride, strict=True)),
            tuple(
                o + a * (-p + d * (k - 1) / 2)
                for o, a, k, p, d in zip(
                    self.offset, self.stride, kernel, padding, dilation, strict=True
                )
            ),
        )

    def centres(self, cells_shape) -> list[np.ndarray]:
        """Input coordinates of the cell centres, per axis."""
        return [s * np.arange(n) + o for s, o, n in zip(self.stride, self.offset, cells_shape)]


def _per_axis(value, ndim: int) -> tuple:
    if isinstance(value, str):
        raise ValueError(f"string padding {value!r} is not supported for cell placement")
    return tuple(value) if isinstance(value, tuple | list) else (value,) * ndim


class _Tracer(fx.Tracer):
    """Keeps convolutions, poolings and the layer of interest as single nodes."""

    def __init__(self, keep: nn.Module | None = None):
        super().__init__()
        self.keep = keep

    def is_leaf_module(self, module: nn.Module, name: str) -> bool:
        return (
            module is self.keep
            or isinstance(module, _STRIDED)
            or super().is_leaf_module(module, name)
        )


def cell_geometry(model: nn.Module, layer: nn.Module, ndim: int) -> CellGeometry:
    """Stride and offset, per input axis, of `layer`'s output cells in `model`'s input.

    Traces the model's forward graph; residual branches must agree (they do in
    ResNets: the 1x1 downsample and the 3x3 strided convolution share centres).
    Raises for layers behind modules that have no fixed placement.
    """
    if not any(module is layer for module in model.modules()):
        raise ValueError("the layer is not a module of the model")
    geometry = _propagate(model, ndim, stop=layer)
    if geometry is None:
        raise ValueError("the layer is never called in the model's forward pass")
    return geometry


def _module_geometry(module: nn.Module, ndim: int) -> CellGeometry:
    """The geometry of a composite module's output relative to its own input."""
    if isinstance(module, _STRIDED):
        return CellGeometry.identity(ndim).then(module)
    if isinstance(module, _UNPLACEABLE):
        raise ValueError(f"{type(module).__name__} has no fixed cell placement")
    if not list(module.children()):
        return CellGeometry.identity(ndim)
    geometry = _propagate(module, ndim, stop=None)
    return CellGeometry.identity(ndim) if geometry is None else geometry


def _propagate(root: nn.Module, ndim: int, stop: nn.Module | None) -> CellGeometry | None:
    """Walk root's traced graph from its first input; return the geometry at `stop`'s output
    (or at the graph's output when `stop` is None)."""
    graph = _Tracer(stop).trace(root)
    geometry: dict[fx.Node, CellGeometry] = {}
    first_input = next(n for n in graph.nodes if n.op == "placeholder")  # fx's name for inputs
    geometry[first_input] = CellGeometry.identity(ndim)
    for node in graph.nodes:
        inputs = {geometry[n] for n in node.all_input_nodes if n in geometry}
        if node.op == "output":
            return inputs.pop() if len(inputs) == 1 else None
        if not inputs:
            continue
        if len(inputs) > 1:
            raise ValueError(f"{node.name}: branches with different cell placements are joined")
        (incoming,) = inputs
        if node.op == "call_module":
            module = root.get_submodule(node.target)
            step = _module_geometry(module, ndim)
            result = CellGeometry(
                tuple(a * s for a, s in zip(incoming.stride, step.stride, strict=True)),
                tuple(
                    o + a * so
                    for o, a, so in zip(incoming.offset, incoming.stride, step.offset, strict=True)
                ),
            )
            if module is stop:
                return result
            geometry[node] = result
        else:
            geometry[node] = incoming
    return None


def place_cells(cells: torch.Tensor, geometry: CellGeometry, input_shape) -> torch.Tensor:
    """A layer map (cells) on the input grid: linear interpolation between cell centres.

    Input voxels beyond the outermost centres take the edge cell's value (as
    ``F.interpolate`` does), so with :meth:`CellGeometry.m3dcam` this equals
    M3d-CAM's upsampling.
    """
    out = cells
    for axis, (n_in, stride, offset) in enumerate(
        zip(input_shape, geometry.stride, geometry.offset, strict=True)
    ):
        n_cells = out.shape[axis]
        u = (torch.arange(n_in, dtype=torch.float64) - offset) / stride
        u = u.clamp(0, n_cells - 1)
        low = u.floor().long().clamp(max=n_cells - 1)
        high = (low + 1).clamp(max=n_cells - 1)
        weight = (u - low).to(out.dtype).to(out.device)
        shape = [1] * out.ndim
        shape[axis] = n_in
        weight = weight.reshape(shape)
        out = (
            out.index_select(axis, low.to(out.device)) * (1 - weight)
            + out.index_select(axis, high.to(out.device)) * weight
        )
    return out


def pool_to_cells(values: np.ndarray, geometry: CellGeometry, cells_shape) -> np.ndarray:
    """Mean of an input-grid array over each cell's footprint (the voxels nearest its centre).

    The resolution ceiling: a mask pooled to the layer's cells and placed back
    with :func:`place_cells` is the best any map of that layer can do.
    """
    values = np.asarray(values, dtype=np.float64)
    index = np.zeros(values.shape, dtype=np.int64)
    for axis, (n_in, n_cells, stride, offset) in enumerate(
        zip(values.shape, cells_shape, geometry.stride, geometry.offset, strict=True)
    ):
        nearest = np.clip(np.rint((np.arange(n_in) - offset) / stride), 0, n_cells - 1)
        shape = [1] * values.ndim
        shape[axis] = n_in
        index = index * n_cells + nearest.astype(np.int64).reshape(shape)
    size = int(np.prod(cells_shape))
    sums = np.bincount(index.ravel(), weights=values.ravel(), minlength=size)
    counts = np.bincount(index.ravel(), minlength=size)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(counts > 0, sums / np.maximum(counts, 1), 0.0).reshape(cells_shape)
