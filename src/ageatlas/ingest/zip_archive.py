"""The participant zip itself: declared-size limits, safe member names, opening.

The zip is read in memory, never extracted: member names are never used as
paths, and unsafe ones (``../x``, absolute, control characters) are not even
opened. Declared sizes in the central directory are checked against
`ZipLimits` before any member is decompressed (zipfile never returns more
than the declared size, so the check bounds memory). The manifest's header
"can not be relied on" (see docs/sources.md), so the manifest is skipped.
"""

from __future__ import annotations

import re
import zipfile
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from ageatlas.core.qc import ParticipantExcluded

__all__ = ["ZipLimits", "check_zip_limits"]

MANIFEST_NAMES = {"manifest.csv", "manifest.cvs"}  # the misspelling is real
# What reading a damaged or hostile zip (or one of its members) can raise.
ZIP_ERRORS = (
    zipfile.BadZipFile,
    zlib.error,
    EOFError,
    OSError,
    RuntimeError,
    NotImplementedError,
    ValueError,
)


@dataclass(frozen=True)
class ZipLimits:
    """Refuse a zip whose central directory declares more than this."""

    max_total_bytes: int = 1 << 30  # declared uncompressed size of all members
    max_member_bytes: int = 16 << 20
    max_members: int = 10000
    max_ratio: float = 200.0  # uncompressed/compressed, per member (zip bomb)
    # Smaller members skip the ratio test: a blank 80 kB slice deflates > 200:1.
    ratio_min_bytes: int = 1 << 20


def check_zip_limits(infos: Sequence[zipfile.ZipInfo], limits: ZipLimits) -> None:
    """Raise ParticipantExcluded if the declared sizes look like a zip bomb."""
    if len(infos) > limits.max_members:
        raise ParticipantExcluded(f"zip bomb? {len(infos)} members (limit {limits.max_members})")
    total = sum(i.file_size for i in infos)
    if total > limits.max_total_bytes:
        raise ParticipantExcluded(
            f"zip bomb? members declare {total} bytes uncompressed (limit {limits.max_total_bytes})"
        )
    for info in infos:
        if info.file_size > limits.max_member_bytes:
            raise ParticipantExcluded(
                f"zip bomb? member {info.filename!r} declares {info.file_size} bytes "
                f"(limit {limits.max_member_bytes})"
            )
        ratio = info.file_size / max(info.compress_size, 1)
        if info.file_size >= limits.ratio_min_bytes and ratio > limits.max_ratio:
            raise ParticipantExcluded(
                f"zip bomb? member {info.filename!r} expands {ratio:.0f}:1 "
                f"(limit {limits.max_ratio:.0f}:1)"
            )


def open_zip(path: Path) -> zipfile.ZipFile:
    """The zip's central directory, or ParticipantExcluded saying why there is none."""
    try:
        size = path.stat().st_size
    except OSError as err:
        raise ParticipantExcluded(f"cannot read the file ({err.strerror or err})") from None
    if size == 0:
        raise ParticipantExcluded("0-byte file")
    try:
        return zipfile.ZipFile(path)
    except ZIP_ERRORS as err:
        try:
            with open(path, "rb") as fh:
                magic = fh.read(4)
        except OSError:
            magic = b""
        if magic == b"PK\x03\x04":
            raise ParticipantExcluded(
                f"truncated or damaged zip, no readable central directory ({err})"
            ) from None
        raise ParticipantExcluded(f"not a zip file (starts with {magic!r}; {err})") from None


def unsafe_name(name: str) -> bool:
    """Absolute, parent-relative, drive-letter or control-character names."""
    parts = name.replace("\\", "/").split("/")
    return (
        name.startswith(("/", "\\"))
        or ".." in parts
        or any(ord(ch) < 32 for ch in name)
        or re.match(r"[A-Za-z]:", name) is not None
    )


def is_manifest(name: str) -> bool:
    """manifest.csv (or .cvs) in any folder: never read, its header is unreliable."""
    return name.replace("\\", "/").rsplit("/", 1)[-1].lower() in MANIFEST_NAMES
