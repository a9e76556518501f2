"""The training cache: one normalised float16 .npy per participant, and the model's input made
from it.

The authors re-read and re-normalised every NIfTI for every sample of every
epoch, most of their 51 minutes an epoch. Here each stitched water volume is
read once, optionally downsampled, normalised as in MedicalNet and written as
float16, so that the data loader does one memory-mapped read per sample.

The authors also drew the background's N(0, 1) noise afresh at every read
(an augmentation; a noise fixed per participant would be a fingerprint the
model could learn). So the cache holds no noise: with background "noise"
its background voxels are NaN, and `model_input` fills them as it reads,
from a generator seeded by (seed, eid, epoch) for training reads and by
(seed, eid) for evaluation reads (validation, prediction, Grad-CAM: the same
input every time). NaN keeps the cache one file per participant at no cost
in size, and a reader that forgets `model_input` gets NaN predictions, not
quietly other ones. With background "zero" the cache holds the zeros and
`model_input` returns it unchanged.

Voxel order stays as stitched, (x, y, z) = (left-right, posterior-anterior,
inferior-superior); the model puts the first axis into r3d's "time" axis, as
the authors did (224 left-right voxels into time).

Why float16 is safe: a z-score over n voxels is at most sqrt(n - 1) in size
(Samuelson's inequality), so foreground values stay far below float16's
65504 for any volume under 4e9 voxels, and background is NaN or 0.
"""

from __future__ import annotations

import re
import time
import zlib
from pathlib import Path

import nibabel as nib
import numpy as np

from ageatlas.core.files import save_npy

BACKGROUNDS = ("noise", "zero")
CACHE_DTYPE = np.float16
# A cached voxel whose value `model_input` draws: the background of a "noise" cache.
DRAWN = np.nan


def _check_finite(volume: np.ndarray, source: str) -> None:
    bad = ~np.isfinite(volume)
    if bad.any():
        raise ValueError(
            f"{source} has {int(bad.sum())} NaN/inf voxel(s), first at index "
            f"{tuple(int(i) for i in np.argwhere(bad)[0])}"
        )


def _normalise(
    volume: np.ndarray,
    background: str,
    rng: np.random.Generator | None,
    source: str = "volume",
    draw_later: bool = False,
) -> tuple[np.ndarray, float, float]:
    """`normalise`, also returning the foreground mean and std it used.

    With `draw_later` a "noise" background is left NaN for `model_input` (the cache).
    """
    if background not in BACKGROUNDS:
        raise ValueError(f"background must be one of {BACKGROUNDS}, not {background!r}")
    volume = np.asarray(volume)
    _check_finite(volume, source)
    foreground = volume > 0
    if not foreground.any():
        raise ValueError(f"{source} has no voxel > 0: nothing to normalise (empty volume?)")
    values = volume[foreground].astype(np.float64)  # float64: sums over 1e7 voxels
    mean, std = float(values.mean()), float(values.std())
    if std == 0:
        raise ValueError(f"{source} is constant ({mean:g}) over its voxels > 0: cannot z-score it")
    out = ((volume - mean) / std).astype(np.float32)
    background_mask = ~foreground
    if background == "noise" and draw_later:
        out[background_mask] = DRAWN
    elif background == "noise":
        rng = rng if rng is not None else np.random.default_rng(0)
        out[background_mask] = rng.standard_normal(int(background_mask.sum()), dtype=np.float32)
    else:
        out[background_mask] = 0.0
    return out, mean, std


def normalise(
    volume: np.ndarray, background: str = "noise", rng: np.random.Generator | None = None
) -> np.ndarray:
    """Z-score a volume by the mean and std of its voxels > 0 (MedicalNet); float32 out.

    Background, the voxels <= 0 in the input, becomes N(0, 1) noise drawn from
    ``rng`` ("noise", the authors' choice; ``rng=None`` means seed 0) or 0
    ("zero"). MedicalNet replaces voxels == 0; for magnitude images, which are
    never negative, that is the same set. The std is the population std
    (ddof=0), as numpy and MedicalNet compute it.
    """
    return _normalise(volume, background, rng)[0]


def downsample(volume: np.ndarray, factor: int) -> np.ndarray:
    """Block mean over factor^3 blocks, for CPU demos; factor 1 returns the input itself.

    Trailing voxels along an axis that do not fill a whole block are dropped
    (a 10-voxel axis with factor 3 keeps 9 -> 3), so the output grid starts
    at the input's first voxel and every output voxel is a full block.
    """
    _check_factor(factor)
    volume = np.asarray(volume)
    if volume.ndim != 3:
        raise ValueError(f"downsample needs a 3D volume, got shape {volume.shape}")
    if factor == 1:
        return volume
    out_shape = input_shape(volume.shape, factor)
    cropped = volume[: out_shape[0] * factor, : out_shape[1] * factor, : out_shape[2] * factor]
    blocks = cropped.reshape(out_shape[0], factor, out_shape[1], factor, out_shape[2], factor)
    return blocks.mean(axis=(1, 3, 5), dtype=np.float64).astype(np.float32)


def _check_factor(factor) -> None:
    if isinstance(factor, bool) or not isinstance(factor, (int, np.integer)) or factor < 1:
        raise ValueError(f"downsample factor must be an integer >= 1, not {factor!r}")


def input_shape(grid_shape, downsample_factor) -> tuple[int, int, int]:
    """Shape of a cached volume (and the model's input) for a stitched grid shape."""
    _check_factor(downsample_factor)
    shape = tuple(int(s) // int(downsample_factor) for s in grid_shape)
    if len(shape) != 3 or min(shape) < 1:
        raise ValueError(
            f"grid {tuple(grid_shape)} downsampled by {downsample_factor} leaves no "
            "3D volume (each axis needs at least one full block)"
        )
    return shape


def _noise_seed(seed: int, path: str | Path) -> list[int]:
    """Per-participant noise seed: the eid the file name (or eid) starts with, else a stable hash
    of the name.

    zlib.crc32, unlike hash(), is the same in every Python process.
    """
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, not {seed!r}")
    name = Path(path).name
    match = re.match(r"\d+", name)
    return [int(seed), int(match.group()) if match else zlib.crc32(name.encode())]


def model_input(cached, participant: str | Path, seed: int, epoch: int | None = None) -> np.ndarray:
    """The model's float32 input from a cached volume: its NaN background filled with N(0, 1).

    `participant` is the eid or the cache's path (named by eid); `seed` the
    run's seed (the workflow's ``seed``, a checkpoint's ``config["seed"]``).
    ``epoch=None`` is an evaluation read (validation, prediction, Grad-CAM):
    noise seeded by (seed, eid), the same at every read, the noise the
    cache itself held before it left the background to its readers. A
    training read of epoch e >= 1 draws from (seed, eid, e): fresh noise
    every epoch, as the authors' loader drew it at every read, and a
    function of the run's seed and the epoch alone, so a resumed run reads
    what an uninterrupted one reads. A cache without NaN (background "zero")
    comes back as it is, in float32.
    """
    volume = np.array(cached, dtype=np.float32)  # a copy: the cache is a read-only memmap
    key = _noise_seed(seed, participant)
    if epoch is not None:
        if isinstance(epoch, bool) or not isinstance(epoch, (int, np.integer)) or epoch < 1:
            raise ValueError(f"epoch must be an integer >= 1 (or None to evaluate), not {epoch!r}")
        key.append(int(epoch))
    background = np.isnan(volume)
    n = int(background.sum())
    if n:
        volume[background] = np.random.default_rng(key).standard_normal(n, dtype=np.float32)
    return volume


def read_volume(path) -> np.ndarray:
    """A NIfTI's voxels as float32, with scl_slope/scl_inter applied (the stitched files are scaled
    int16)."""
    image = nib.load(str(path))
    volume = image.get_fdata(dtype=np.float32)
    if volume.ndim == 4 and volume.shape[3] == 1:
        volume = volume[..., 0]
    if volume.ndim != 3:
        raise ValueError(f"{path} holds a volume of shape {volume.shape}, not a 3D volume")
    return volume


def prepare(
    water_path, out_path, *, downsample_factor: int = 1, background: str = "noise", seed: int = 0
) -> dict:
    """Stitched water NIfTI -> normalised float16 .npy; returns what the workflow logs.

    Order: read (scaled to float), downsample, normalise, cast, write. A
    "noise" background is written as NaN, drawn by `model_input` at every
    read, so the cache does not depend on the run's seed: ``seed`` is
    ignored, accepted for callers written when the cache held the noise.
    """
    start = time.perf_counter()
    water_path = Path(water_path)
    volume = read_volume(water_path)
    _check_finite(volume, str(water_path))
    volume = downsample(volume, downsample_factor)
    normalised, mean, std = _normalise(
        volume, background, None, source=str(water_path), draw_later=True
    )
    cached = normalised.astype(CACHE_DTYPE)
    save_npy(out_path, cached)
    return {
        "shape": tuple(int(s) for s in cached.shape),
        "mean": mean,
        "std": std,
        "foreground_fraction": float((volume > 0).mean()),
        "background": "NaN, drawn at every read" if background == "noise" else "zero",
        "seconds": round(time.perf_counter() - start, 3),
    }
