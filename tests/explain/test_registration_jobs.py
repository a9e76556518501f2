"""Registering many participants to one atlas: the atlas prepared once, a broken image a failed
record, transforms fitted on a device and saved for the CPU."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest
import torch

from ageatlas.explain import register as reg
from ageatlas.explain.register import Registration, load_outcome, register_files, save_outcome
from ageatlas.explain.registration_settings import RegistrationSettings

# Few steps: these tests are about who registers what where, not about how well.
QUICK = RegistrationSettings(
    affine_iterations=10, affine_lr=0.05, levels=2, deformable_lr=1e-2, max_steps=4
)
DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


@pytest.fixture
def files(tmp_path, pair):
    paths = {name: tmp_path / f"{name}.nii.gz" for name in ("fixed", "moving")}
    for name, path in paths.items():
        nib.save(pair[name], path)
    paths["broken"] = tmp_path / "broken.nii.gz"
    paths["broken"].write_bytes(b"not a nifti")
    return paths


def test_register_many_prepares_the_atlas_once_and_registers_as_register_files(files, monkeypatch):
    prepared = []
    real = reg.prepare_fixed
    monkeypatch.setattr(reg, "prepare_fixed", lambda *a, **k: prepared.append(1) or real(*a, **k))
    done = list(
        reg.register_many(
            [files["broken"], files["moving"]],
            files["fixed"],
            QUICK,
            max_folding_share=1.0,
            device="cpu",
        )
    )
    assert len(prepared) == 1 and len(done) == 2
    assert [record["status"] for _, record in done] == ["failed", "ok"]
    assert done[0][0] is None and "broken.nii.gz" in done[0][1]["reasons"][0]
    alone, record = register_files(
        files["moving"], files["fixed"], QUICK, max_folding_share=1.0, device="cpu"
    )
    registration, many = done[1]
    for stage in ("before", "affine", "deformable"):
        assert many[stage]["ncc"] == pytest.approx(record[stage]["ncc"], rel=1e-6)
    assert many["deformable"]["ncc"] > many["before"]["ncc"]
    assert registration.device == torch.device("cpu")


def test_register_many_raises_for_an_unreadable_atlas_before_any_participant(files):
    with pytest.raises(Exception, match="broken.nii.gz"):
        reg.register_many([files["moving"]], files["broken"], QUICK, max_folding_share=1.0)
    # One participant's job keeps its old contract: a failed record.
    registration, record = register_files(
        files["moving"], files["broken"], QUICK, max_folding_share=1.0
    )
    assert registration is None and record["status"] == "failed"


@pytest.mark.parametrize("device", DEVICES)
def test_a_transform_fitted_on_a_device_is_saved_on_the_cpu_and_warps_anywhere(
    tmp_path, files, pair, device
):
    ((registration, record),) = reg.register_many(
        [files["moving"]], files["fixed"], QUICK, max_folding_share=1.0, device=device
    )
    assert registration.device.type == device
    on_device = registration.warp(pair["moving"])
    save_outcome(registration, record, tmp_path / "t.pt", tmp_path / "t.json")
    state = torch.load(tmp_path / "t.pt", weights_only=True)
    assert all(v.device.type == "cpu" for v in state["affine"].values())
    assert state["svffd"]["params"].device.type == "cpu"
    loaded = load_outcome(tmp_path / "t.pt")
    assert loaded.device == torch.device("cpu")
    np.testing.assert_allclose(
        loaded.warp(pair["moving"]).get_fdata(), on_device.get_fdata(), atol=1e-4
    )
    # warp(device=...) moves the loaded transform there, as the warp rule on a GPU node would
    moved = loaded.warp(pair["moving"], device=device)
    assert loaded.device.type == device
    np.testing.assert_allclose(moved.get_fdata(), on_device.get_fdata(), atol=1e-4)
    # An affine-only transform on the device (no buffers to tell where it is) still displaces.
    affine_only = Registration(
        registration.fixed_grid, registration.moving_grid, loaded.affine, None, QUICK
    )
    assert affine_only.displacement_mm().shape == pair["fixed"].shape[::-1] + (3,)


def test_batch_registration_prepares_the_atlas_once_per_job(files, tmp_path, monkeypatch):
    """The register batch rule's work (explain.registration_jobs): participants in turn in one
    process share the prepared atlas; each gets its transform and record."""
    from ageatlas.explain import registration_jobs

    registration_jobs._prepared_atlas.cache_clear()
    prepared = []
    real = reg.prepare_fixed
    monkeypatch.setattr(reg, "prepare_fixed", lambda *a, **k: prepared.append(1) or real(*a, **k))
    section = {
        "affine_iterations": 10,
        "levels": 2,
        "finest_level": 0,
        "max_steps": 4,
        "max_folding_share": 1.0,
    }
    statuses = []
    for eid, moving in (("1", files["moving"]), ("2", files["broken"])):
        info = registration_jobs.register_to_atlas(
            eid=eid,
            group="F_healthy",
            images=[str(moving)],
            atlas=[str(files["fixed"])],
            transform_out=str(tmp_path / f"{eid}.pt"),
            record_out=str(tmp_path / f"{eid}.json"),
            section=section,
            built_atlas=False,
        )
        statuses.append(info["status"])
    assert len(prepared) == 1
    assert statuses == ["ok", "failed"]  # a broken image is a failed record, not an exception
    assert (tmp_path / "1.pt").exists() and (tmp_path / "2.json").exists()
