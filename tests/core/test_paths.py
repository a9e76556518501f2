"""Tests for ageatlas.core.paths: file names shared by the workflow and the package."""

import pytest

from ageatlas.core.paths import channel_files


def test_channel_files_put_further_channels_beside_the_first():
    assert channel_files("atlas/F_obese.nii.gz", ["W"]) == ["atlas/F_obese.nii.gz"]
    assert channel_files("a/iter1/template.nii.gz", ["W", "F"]) == [
        "a/iter1/template.nii.gz",
        "a/iter1/template_F.nii.gz",
    ]
    with pytest.raises(ValueError, match="nii.gz"):
        channel_files("atlas/F_obese.nii", ["W", "F"])
