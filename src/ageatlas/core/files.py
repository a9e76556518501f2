"""Writing result files: atomically, and NIfTIs with one header convention.

A job killed half-way (time limit, node failure, full disk) must leave the
old file or none, never half a file that a later job would read: every
writer here writes beside the target, flushes, then renames (same folder, so
the rename is atomic on one file system).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO

import nibabel as nib
import numpy as np


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """A temporary path beside ``path`` (same extension) that becomes ``path`` on success."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # Name ends in path's own name: nibabel picks the format by the extension.
    tmp = path.with_name(f".{os.getpid()}.tmp.{path.name}")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def atomic_write(path: str | Path, write: Callable[[BinaryIO], object]) -> None:
    """Write through ``write(handle)`` beside path, fsync, then rename."""
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())


def save_npy(path: str | Path, array: np.ndarray) -> None:
    """np.save, atomically."""
    atomic_write(path, lambda handle: np.save(handle, array))


def load_npy(path: str | Path) -> np.memmap:
    """A saved array, memory-mapped read-only (pages are read when touched)."""
    return np.load(path, mmap_mode="r")


def nifti_image(
    data: np.ndarray,
    affine: np.ndarray,
    description: str = "",
    *,
    reference: nib.Nifti1Image | None = None,
    dtype=np.float32,
) -> nib.Nifti1Image:
    """A float32 NIfTI image with sform and qform set, read alike by FSL, ITK and nilearn.

    With a ``reference``, its sform and qform are copied as they are (a qform
    cannot hold shear, so recomputing it from the affine could differ) and
    its units kept; a form the reference leaves unset, and every form without
    a reference, gets ``affine`` with code 1 (scanner), so that no reader
    falls back to an identity-like geometry. ``dtype=np.int16`` stores scaled
    integers (nibabel sets scl_slope).
    """
    image = nib.Nifti1Image(np.asarray(data, dtype=np.float32), affine)
    image.set_data_dtype(dtype)
    if reference is None:
        image.header.set_xyzt_units("mm")
        image.set_sform(affine, code=1)
        image.set_qform(affine, code=1)
    else:
        image.header.set_xyzt_units(*reference.header.get_xyzt_units())
        sform, sform_code = reference.header.get_sform(coded=True)
        qform, qform_code = reference.header.get_qform(coded=True)
        image.set_sform(sform if sform_code else affine, code=int(sform_code) or 1)
        image.set_qform(qform if qform_code else affine, code=int(qform_code) or 1)
    image.header["descrip"] = description[:79].encode()  # the field holds 80 bytes
    return image


def save_nifti(path: str | Path, image: nib.Nifti1Image) -> None:
    """nib.save, atomically."""
    with atomic_path(path) as tmp:
        nib.save(image, str(tmp))
