"""Each planted defect does what it says, to the station it reports, and they combine."""

from __future__ import annotations

import re
import zipfile
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest
from synthetic_helpers import SEED, read_zip, volume, write

from ageatlas.core import field20201 as layout
from ageatlas.synthetic.acquisition import station_grids
from ageatlas.synthetic.defects import DEFECTS, defect_station
from ageatlas.synthetic.dicom import write_participant_zip

DEFECT_SCALE = 0.1  # defects are about structure, not anatomy: smaller is faster


@pytest.fixture(scope="module")
def small_clean(participant, tmp_path_factory):
    return read_zip(write(tmp_path_factory.mktemp("small"), participant, scale=DEFECT_SCALE))


def stations_present(series) -> dict[int, set[str]]:
    """Contrasts found per station, the station told by the slab centre (stations overlap)."""
    centres = {g.spec.index: g.z_top - (g.slices - 1) * g.dz / 2 for g in station_grids(1.0)}
    found = defaultdict(set)
    for slices in series.values():
        z = np.mean([float(d.ImagePositionPatient[2]) for d in slices])
        station = min(centres, key=lambda k: abs(centres[k] - z))
        found[station].add(slices[0].SeriesDescription.rsplit("_", 1)[1])
    return dict(found)


def defect_zip(tmp_path, participant, *defects) -> Path:
    return write(tmp_path, participant, "defect.zip", defects=defects, scale=DEFECT_SCALE)


def test_short_series(tmp_path, participant, small_clean):
    series = read_zip(defect_zip(tmp_path, participant, "short_series"))
    station = defect_station(participant, "short_series", SEED)
    assert station in (2, 3, 4)
    short = [n for n in series if len(series[n]) != len(small_clean[n])]
    assert len(short) == 1 and len(series[short[0]]) == len(small_clean[short[0]]) - 1
    assert (short[0] - 1) // 4 + 1 == station
    assert (
        series[short[0]][0].ImagePositionPatient == small_clean[short[0]][0].ImagePositionPatient
    )  # the foot end is lost


def test_repeat_station_keeps_the_later_acquisition_clean(tmp_path, participant, small_clean):
    series = read_zip(defect_zip(tmp_path, participant, "repeat_station"))
    station = defect_station(participant, "repeat_station", SEED)
    assert sorted(series) == list(range(1, 29))
    last_time = max(float(s[0].SeriesTime) for n, s in series.items() if n <= 24)
    for c in range(len(layout.CONTRASTS)):
        first, repeat = series[4 * (station - 1) + c + 1], series[25 + c]
        assert repeat[0].SeriesDescription == first[0].SeriesDescription
        assert [d.ImagePositionPatient for d in repeat] == [d.ImagePositionPatient for d in first]
        assert float(repeat[0].SeriesTime) > last_time
        assert np.array_equal(volume(repeat), volume(small_clean[4 * (station - 1) + c + 1]))
        a, b = volume(first), volume(repeat)
        assert np.abs(a - b).mean() > 0.2 * b.mean()  # visibly worse first acquisition
    for n in range(1, 25):
        if (n - 1) // 4 + 1 != station:
            assert np.array_equal(volume(series[n]), volume(small_clean[n]))


def test_fat_water_swap(tmp_path, participant, small_clean):
    series = read_zip(defect_zip(tmp_path, participant, "fat_water_swap"))
    station = defect_station(participant, "fat_water_swap", SEED)
    f, w = 4 * (station - 1) + 3, 4 * (station - 1) + 4
    assert np.array_equal(volume(series[f]), volume(small_clean[w]))
    assert np.array_equal(volume(series[w]), volume(small_clean[f]))
    assert series[f][0].SeriesDescription.endswith("_F") and series[w][
        0
    ].SeriesDescription.endswith("_W")
    swapped = [
        n for n in range(1, 25) if not np.array_equal(volume(series[n]), volume(small_clean[n]))
    ]
    assert swapped == [f, w]


def test_missing_station_and_missing_water(tmp_path, participant):
    series = read_zip(defect_zip(tmp_path, participant, "missing_station"))
    station = defect_station(participant, "missing_station", SEED)
    assert len(series) == 20 and station not in stations_present(series)
    series = read_zip(defect_zip(tmp_path, participant, "missing_water"))
    station = defect_station(participant, "missing_water", SEED)
    present = stations_present(series)
    assert len(series) == 23 and present[station] == {"in", "opp", "F"}
    assert all(present[k] == set(layout.CONTRASTS) for k in present if k != station)


def test_bad_orientation(tmp_path, participant):
    series = read_zip(defect_zip(tmp_path, participant, "bad_orientation"))
    station = defect_station(participant, "bad_orientation", SEED)
    for n, slices in series.items():
        iop = [float(v) for v in slices[0].ImageOrientationPatient]
        assert (iop != [1, 0, 0, 0, 1, 0]) == ((n - 1) // 4 + 1 == station)


def _manifest(zf):
    return zf.read(next(n for n in zf.namelist() if n.startswith("manifest")))


MEMBER_DEFECTS = {
    "non_dicom_member": lambda zf: any(
        re.fullmatch(r"[0-9.]+\.dcm", n) and zf.read(n).startswith(b"ageatlas synthetic")
        for n in zf.namelist()
    ),
    "path_traversal_member": lambda zf: "../evil.dcm" in zf.namelist(),
    "no_manifest": lambda zf: not any(n.startswith("manifest") for n in zf.namelist()),
    "manifest_cvs": lambda zf: (
        "manifest.cvs" in zf.namelist() and "manifest.csv" not in zf.namelist()
    ),
    "garbled_manifest": lambda zf: b"series discription" not in _manifest(zf),
}


@pytest.mark.parametrize("defect", sorted(MEMBER_DEFECTS))
def test_member_defects(tmp_path, participant, defect):
    path = defect_zip(tmp_path, participant, defect)
    with zipfile.ZipFile(path) as zf:
        assert MEMBER_DEFECTS[defect](zf)
    assert len(read_zip(path)) == 24  # the images themselves are intact


def test_broken_zips(tmp_path, participant):
    truncated = defect_zip(tmp_path, participant, "truncated_zip")
    whole = write(tmp_path, participant, "whole.zip", scale=DEFECT_SCALE)
    assert abs(truncated.stat().st_size - whole.stat().st_size / 2) <= 1
    with pytest.raises(zipfile.BadZipFile):
        zipfile.ZipFile(truncated)
    empty = write(tmp_path, participant, "empty.zip", defects=["empty_zip"])
    with zipfile.ZipFile(empty) as zf:
        assert zf.namelist() == []
    zero = write(tmp_path, participant, "zero.zip", defects=["zero_bytes", "missing_water"])
    assert zero.stat().st_size == 0


def test_defects_combine_and_unknown_ones_are_refused(tmp_path, participant):
    path = defect_zip(tmp_path, participant, "missing_water", "manifest_cvs", "non_dicom_member")
    series = read_zip(path)
    with zipfile.ZipFile(path) as zf:
        names = zf.namelist()
    assert len(series) == 23 and "manifest.cvs" in names
    assert len(names) == sum(len(s) for s in series.values()) + 2
    with pytest.raises(ValueError, match="unknown defect"):
        write_participant_zip(tmp_path / "x.zip", participant, defects=["fat_water_swapp"])
    assert set(DEFECTS) >= {
        "short_series",
        "repeat_station",
        "empty_zip",
        "zero_bytes",
        "manifest_cvs",
    }
