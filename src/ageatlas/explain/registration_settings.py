"""Registration settings: the authors' defaults, sizes in millimetres, and the config's section.

Sizes are given in millimetres so that they mean the same on any voxel grid
and at any pyramid level (:class:`RegistrationSettings`); ``stride_for`` and
``lncc_kernel_for`` turn them into voxels for one level. Kept apart from
:mod:`ageatlas.explain.register` so that reading settings needs neither
torch nor deepali.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# The authors' choices at UK Biobank's full grid (2.232 x 2.232 x 3 mm, fitted at
# full resolution): B-spline stride (4, 4, 8) voxels and a 7-voxel LNCC window.
AUTHORS_CONTROL_POINT_SPACING_MM = (8.928, 8.928, 24.0)
AUTHORS_LNCC_WINDOW_MM = (15.624, 15.624, 21.0)
# Stitched contrasts a registration can use (ageatlas.core.paths.stitched_path).
CONTRASTS = {"W", "F", "in", "opp"}
# Image axes, in deepali's order (voxel axes i j k of the NIfTI).
AXES = ("x", "y", "z")
# A pyramid level coarser than this along any axis has nothing left to align.
MIN_LEVEL_SIZE = 4


@dataclass(frozen=True)
class RegistrationSettings:
    """Registration parameters; the defaults are the authors'.

    Sizes are in millimetres, so that they mean the same on any voxel grid
    and at any pyramid level: ``control_point_spacing_mm`` is the SVFFD's
    control-point spacing at ``finest_level`` (each coarser level has twice
    the spacing of the next finer one: control points are subdivided between
    levels), ``lncc_window_mm`` the LNCC window at every level. Both are
    (x, y, z) in the image's voxel axes. ``stride`` and ``lncc_kernel`` are
    the older settings in voxels (of the finest level, of every level); when
    given they are used instead of the millimetre ones.
    """

    affine_iterations: int = 200
    affine_lr: float = 0.01
    control_point_spacing_mm: tuple[float, float, float] = AUTHORS_CONTROL_POINT_SPACING_MM
    lncc_window_mm: tuple[float, float, float] = AUTHORS_LNCC_WINDOW_MM
    levels: int = 3
    # Pyramid level the last deformable level runs at: 0 is full resolution,
    # 1 half. Transforms live in cube coordinates, so they still warp
    # full-resolution images.
    finest_level: int = 0
    # Pyramid level the affine fit runs at; None: finest_level. The authors fit
    # it at full resolution (0); its 12 parameters cost little there.
    affine_level: int | None = None
    # Image axes each coarser pyramid level halves. ("x", "y") keeps the slice axis,
    # already the coarsest (3 mm against 2.2 in UK Biobank), at full resolution on
    # every level, so that thin structures across slices (discs) stay visible.
    pyramid_axes: tuple[str, ...] = ("x", "y", "z")
    bending_weight: float = 0.01
    deformable_lr: float = 1e-3
    max_steps: int = 1000
    # Stop a pyramid level once the loss has not fallen by more than min_delta
    # (relative) below its best for `patience` steps: "stops falling".
    min_delta: float = 1e-4
    patience: int = 20
    # Steps over which a level's learning rate rises linearly to deformable_lr
    # (the authors: none).
    warmup_steps: int = 0
    scaling_squaring_steps: int = 5
    clip: float = 0.6
    stride: tuple[int, int, int] | None = None
    lncc_kernel: int | None = None
    # Stitched contrasts registered together, the similarity averaged over them (the authors:
    # water alone). The first is the one the atlas's figures show.
    channels: tuple[str, ...] = ("W",)

    def __post_init__(self) -> None:
        if self.levels < 1:
            raise ValueError(f"registration levels must be at least 1, got {self.levels}")
        if not 0 <= self.finest_level < self.levels:
            raise ValueError(
                f"registration finest_level must be in [0, levels - 1] = "
                f"[0, {self.levels - 1}] (levels {self.levels}), got {self.finest_level}"
            )
        if self.affine_level is not None and not 0 <= self.affine_level < self.levels:
            raise ValueError(
                f"registration affine_level must be in [0, levels - 1] = "
                f"[0, {self.levels - 1}] (levels {self.levels}), got {self.affine_level}"
            )
        for name in ("control_point_spacing_mm", "lncc_window_mm"):
            value = tuple(float(v) for v in getattr(self, name))
            if len(value) != 3 or not all(v > 0 for v in value):
                raise ValueError(f"registration {name} must be 3 positive numbers, got {value}")
            object.__setattr__(self, name, value)
        if self.stride is not None:
            object.__setattr__(self, "stride", tuple(int(v) for v in self.stride))
            if len(self.stride) != 3 or min(self.stride) < 1:
                raise ValueError(f"registration stride must be 3 integers >= 1, got {self.stride}")
        channels = tuple(str(c) for c in self.channels)
        if not channels or len(set(channels)) != len(channels) or set(channels) - CONTRASTS:
            raise ValueError(
                f"registration channels must be distinct contrasts of {sorted(CONTRASTS)}, "
                f"got {list(channels)}"
            )
        object.__setattr__(self, "channels", channels)
        axes = tuple(str(a) for a in self.pyramid_axes)
        if not axes or len(set(axes)) != len(axes) or set(axes) - set(AXES):
            raise ValueError(
                f"registration pyramid_axes must be distinct axes of {list(AXES)}, got {list(axes)}"
            )
        object.__setattr__(self, "pyramid_axes", axes)
        if self.warmup_steps < 0:
            raise ValueError(f"registration warmup_steps must be >= 0, got {self.warmup_steps}")
        if self.lncc_kernel is not None and self.lncc_kernel < 1:
            raise ValueError(f"registration lncc_kernel must be >= 1, got {self.lncc_kernel}")

    @classmethod
    def from_dict(cls, values: dict) -> RegistrationSettings:
        """Settings from a mapping (a saved state, a config section); other keys are ignored."""
        names = cls.__dataclass_fields__
        return cls(
            **{k: tuple(v) if isinstance(v, list) else v for k, v in values.items() if k in names}
        )

    @property
    def affine_fit_level(self) -> int:
        """The pyramid level the affine fit runs at."""
        return self.finest_level if self.affine_level is None else self.affine_level

    def stride_for(self, voxel_mm) -> tuple[int, int, int]:
        """SVFFD stride (voxels) on a grid of ``voxel_mm`` that fits at ``finest_level``."""
        if self.stride is not None:
            return self.stride
        return stride_for(self.control_point_spacing_mm, voxel_mm)

    def lncc_kernel_for(self, voxel_mm, size=None) -> tuple[int, int, int]:
        """LNCC window (odd voxels, x y z) on a grid of ``voxel_mm`` (and ``size``)."""
        if self.lncc_kernel is not None:
            kernel = (self.lncc_kernel,) * 3
        else:
            kernel = lncc_kernel_for(self.lncc_window_mm, voxel_mm)
        if size is not None:  # never wider than the grid
            kernel = tuple(min(k, n if n % 2 else n - 1) for k, n in zip(kernel, size))
        return kernel


def stride_for(spacing_mm, voxel_mm) -> tuple[int, ...]:
    """Control-point stride in voxels nearest ``spacing_mm``; at least 1."""
    return tuple(max(1, int(round(s / v))) for s, v in zip(spacing_mm, voxel_mm))


def lncc_kernel_for(window_mm, voxel_mm) -> tuple[int, ...]:
    """The odd window in voxels nearest ``window_mm`` (ties to the wider); at least 3."""
    return tuple(
        max(3, 2 * int(np.floor(w / v / 2 + 1e-6)) + 1) for w, v in zip(window_mm, voxel_mm)
    )


# Config keys in millimetres and the older ones in voxels that they replace.
_VOXEL_KEYS = {"control_point_spacing_mm": "stride", "lncc_window_mm": "lncc_kernel"}


def settings_from_config(section: dict) -> RegistrationSettings:
    """RegistrationSettings from the config's ``registration`` section (other keys ignored).

    Raises ValueError for a section that gives a size both in millimetres and
    in voxels, or whose levels and finest_level do not fit together.
    """
    for mm, voxels in _VOXEL_KEYS.items():
        if section.get(mm) is not None and section.get(voxels) is not None:
            raise ValueError(
                f"registration: give {mm} (millimetres) or {voxels} (voxels, older), not both"
            )
    return RegistrationSettings.from_dict({k: v for k, v in section.items() if v is not None})
