"""The truth label map matches the phantom and shares one world frame with the DICOM."""

from __future__ import annotations

from collections import defaultdict

import nibabel as nib
import numpy as np
import pandas as pd
from scipy import ndimage
from synthetic_helpers import LABEL, lps_axes, slab, station_series, volume

from ageatlas.synthetic.acquisition import INTENSITY
from ageatlas.synthetic.phantom import AGE_REGIONS, REGION_LABELS, region_labels
from ageatlas.synthetic.truth import write_label_map, write_label_table


def test_truth_label_map_matches_the_phantom_and_the_dicom_frame(tmp_path, participant, clean):
    image = nib.load(write_label_map(tmp_path, participant))
    labels = np.asarray(image.dataobj)
    assert labels.dtype == np.uint8 and image.header.get_xyzt_units()[0] == "mm"
    assert nib.aff2axcodes(image.affine) == ("L", "P", "S")
    assert np.allclose(np.abs(np.diag(image.affine)[:3]), 4.0)
    # The map is region_labels sampled at the LPS positions its affine gives.
    ijk = np.stack(np.meshgrid(*map(np.arange, labels.shape), indexing="ij"), -1)[::7, ::7, ::7]
    ras = nib.affines.apply_affine(image.affine, ijk)
    x, y, z = -ras[:, 0, 0, 0], -ras[0, :, 0, 1], ras[0, 0, :, 2]
    assert np.array_equal(region_labels(participant, x, y, z), labels[::7, ::7, ::7])
    # It covers every station.
    corners = nib.affines.apply_affine(
        image.affine, np.array([[0, 0, 0], np.array(labels.shape) - 1])
    )
    z_lo, z_hi = sorted(corners[:, 2])
    assert (
        z_lo <= min(slab(s)[0] for s in clean.values()) + 4
        and z_hi >= max(slab(s)[1] for s in clean.values()) - 4
    )
    assert set(np.unique(labels)) == set(REGION_LABELS)
    table = pd.read_csv(write_label_table(tmp_path), sep="\t")
    assert dict(zip(table["value"], table["name"])) == REGION_LABELS
    assert set(table.loc[table["age_region"] == 1, "name"]) == set(AGE_REGIONS)


def tissue_agreement(series, affine, labels) -> dict[str, float]:
    """Share of DICOM voxels, in the interior of a truth region, whose intensities fit that
    region."""
    interior = ndimage.minimum_filter(labels, 3) == ndimage.maximum_filter(labels, 3)
    found = defaultdict(list)
    for station in (2, 3):
        # End slices carry the folding ghost; readers cut them, so does this check.
        group = {c: volume(s[1:-1]) for c, s in station_series(series, station).items()}
        x, y, z = lps_axes(station_series(series, station)["W"][1:-1])
        X, Y, Z = np.meshgrid(x, y, z, indexing="ij")
        ras = np.stack([-X, -Y, Z], -1)
        ijk = np.rint(nib.affines.apply_affine(np.linalg.inv(affine), ras)).astype(int)
        inside = np.all((ijk >= 0) & (ijk < labels.shape), axis=-1)
        i, j, k = (np.clip(ijk[..., n], 0, labels.shape[n] - 1) for n in range(3))
        truth = np.where(inside & interior[i, j, k], labels[i, j, k], 255)
        w, f, ip = group["W"], group["F"], group["in"]
        for name, fits in (
            ("lung", ip < 0.12 * INTENSITY),
            ("subcutaneous_fat", f > 2 * w),
            ("heart", (w > 2 * f) & (ip > 0.12 * INTENSITY)),
            ("liver", (w > 2 * f) & (ip > 0.12 * INTENSITY)),
        ):
            found[name].extend(fits[truth == LABEL[name]].tolist())
    return {name: float(np.mean(v)) for name, v in found.items() if v}


def test_truth_and_dicom_share_one_world_frame(tmp_path, participant, clean):
    image = nib.load(write_label_map(tmp_path, participant))
    labels = np.asarray(image.dataobj)
    good = tissue_agreement(clean, image.affine, labels)
    assert set(good) == {"lung", "subcutaneous_fat", "heart", "liver"}
    assert min(good.values()) > 0.9, good
    # A left-right mirror of the affine puts the heart into the right lung: the check must catch it.
    mirrored = np.diag([-1.0, 1.0, 1.0, 1.0]) @ image.affine
    assert tissue_agreement(clean, mirrored, labels)["heart"] < 0.5
