"""ageatlas.ingest.zip_archive: the zip itself, its limits and its member names."""

from __future__ import annotations

import zipfile

import pydicom
from zip_helpers import dicom_bytes, excluded, read, write_zip

from ageatlas.ingest.zip_archive import ZipLimits


def test_zip_level_defects(tmp_path, good_zip):
    zero = tmp_path / "zero.zip"
    zero.write_bytes(b"")
    assert "0-byte file" in excluded(zero)
    text = tmp_path / "text.zip"
    text.write_text("eid,age\n1,60\n")
    assert "not a zip" in excluded(text)
    truncated = tmp_path / "truncated.zip"
    truncated.write_bytes(good_zip.read_bytes()[: good_zip.stat().st_size // 2])
    assert "truncated" in excluded(truncated)
    empty = tmp_path / "empty.zip"
    zipfile.ZipFile(empty, "w").close()
    assert "empty zip" in excluded(empty)
    assert "missing.zip" in excluded(tmp_path / "missing.zip")


def test_crc_error_in_a_needed_member(tmp_path, scan):
    path = write_zip(tmp_path / "crc.zip", scan.datasets, compression=zipfile.ZIP_STORED)
    with zipfile.ZipFile(path) as zf:
        info = next(
            i
            for i in zf.infolist()
            if i.filename.endswith(".dcm")
            and pydicom.dcmread(zf.open(i)).SeriesDescription.endswith("_W")
        )
    raw = bytearray(path.read_bytes())
    data_start = info.header_offset + 30 + len(info.filename.encode()) + len(info.extra)
    raw[data_start + info.file_size - 7] ^= 0xFF  # inside the pixel data
    path.write_bytes(bytes(raw))
    message = excluded(path)
    assert info.filename in message and "CRC" in message


def test_zip_bombs_refused_before_reading(tmp_path, scan, monkeypatch):
    big = write_zip(tmp_path / "big.zip", scan.datasets[:2], extra=[("blob.dcm", bytes(17 << 20))])
    assert "zip bomb" in excluded(big) and "blob.dcm" in excluded(big)
    dense = write_zip(
        tmp_path / "dense.zip", scan.datasets[:2], extra=[("dense.dcm", bytes(2 << 20))]
    )
    assert "expands" in excluded(dense)

    def no_reading(*args, **kwargs):
        raise AssertionError("a member was opened")

    monkeypatch.setattr(zipfile.ZipFile, "open", no_reading)
    small = ZipLimits(max_total_bytes=10_000)
    assert "zip bomb" in excluded(dense, limits=small)
    assert "members" in excluded(dense, limits=ZipLimits(max_members=2))


def test_unsafe_and_foreign_members_are_ignored_with_a_warning(tmp_path, scan):
    extra = [
        ("../../etc/evil.dcm", dicom_bytes(scan.datasets[0])),
        ("/abs/path.dcm", b"x"),
        ("notes.txt", b"hello, not DICOM"),
        ("sub/manifest.cvs", b'garbled,,"\nAug 30, 2015'),
    ]
    stations, warnings = read(write_zip(tmp_path / "p.zip", scan.datasets, extra=extra))
    assert len(stations) == 6
    unsafe = next(w for w in warnings if "unsafe" in w)
    assert "'../../etc/evil.dcm'" in unsafe and "'/abs/path.dcm'" in unsafe
    assert any("non-DICOM" in w and "'notes.txt'" in w for w in warnings)
    assert len(warnings) == 2 and all(w.startswith("p.zip: ") for w in warnings)
