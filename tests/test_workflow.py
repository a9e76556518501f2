"""The workflow end to end on tiny SYNTHETIC cohorts, through the snakemake CLI.

These are the user's commands: a synthetic demo run, a real-format run with
a hand-made phenotype table full of defects, and config mistakes.
"""

import json
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
import yaml

from ageatlas import synth

REPO = Path(__file__).resolve().parents[1]
SNAKEMAKE = str(Path(sys.executable).with_name("snakemake"))
GRID = {"shape": [45, 35, 74], "spacing": [11.16, 11.16, 15.0]}

pytestmark = pytest.mark.workflow


def run_snakemake(workdir: Path, config: dict, *flags: str, target: str = "qc/participants.tsv"):
    """snakemake on ``config`` up to ``target`` (a path under results_dir, or a rule name)."""
    configfile = workdir / "config.yaml"
    configfile.write_text(yaml.safe_dump(config))
    if "/" in target:
        target = str(Path(config["results_dir"]) / target)
    cmd = [SNAKEMAKE, target, "--snakefile", str(REPO / "Snakefile"), "--configfile", str(configfile),
           "--directory", str(workdir), "--cores", "2", *flags]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=900)


def base_config(tmp_path: Path) -> dict:
    return {
        "results_dir": str(tmp_path / "results"),
        "logs_dir": str(tmp_path / "logs"),
        "benchmarks_dir": str(tmp_path / "bench"),
        "seed": 3,
        "stitch": {"grid": GRID},
    }


def qc_by_eid(results: Path) -> pd.DataFrame:
    table = pd.read_csv(results / "qc" / "participants.tsv", sep="\t", dtype=str, keep_default_na=False)
    return table.set_index("eid")


@pytest.fixture(scope="module")
def synthetic_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("synthetic_run")
    eids = [str(p.eid) for p in synth.make_cohort(6, seed=3)]
    config = base_config(tmp) | {
        "cohort": {"source": "synthetic"},
        "synthetic": {
            "n_participants": 6,
            "scale": 0.2,
            "defects": {eids[1]: ["fat_water_swap"], eids[2]: ["truncated_zip"], eids[3]: ["repeat_station"]},
        },
    }
    result = run_snakemake(tmp, config)
    return tmp, eids, result


def test_synthetic_run_completes_without_keep_going(synthetic_run):
    tmp, eids, result = synthetic_run
    assert result.returncode == 0, result.stderr[-4000:]
    table = qc_by_eid(tmp / "results")
    assert sorted(table.index) == sorted(eids)  # nobody silently dropped
    assert table.loc[eids[0], "status"] == "ok"
    assert table.loc[eids[2], "status"] == "excluded"
    assert eids[2] in table.loc[eids[2], "reasons"] or "zip" in table.loc[eids[2], "reasons"].lower()
    assert table.loc[eids[1], "status"] == "warning" and "swap" in table.loc[eids[1], "reasons"].lower()
    assert table.loc[eids[3], "status"] == "warning"


def test_finished_run_has_nothing_left_to_do(synthetic_run):
    """A rerun must not redo work (a path that changes per run would retrain the model)."""
    tmp, _, _ = synthetic_run
    config = yaml.safe_load((tmp / "config.yaml").read_text())
    result = run_snakemake(tmp, config, "-n")
    assert result.returncode == 0, result.stdout[-3000:]
    assert "Nothing to be done" in result.stdout + result.stderr, result.stdout[-3000:]


def test_synthetic_run_writes_stitched_volumes_on_the_grid(synthetic_run):
    tmp, eids, _ = synthetic_run
    folder = tmp / "results" / "stitched" / eids[0]
    water = nib.load(folder / f"{eids[0]}_W.nii.gz")
    fat = nib.load(folder / f"{eids[0]}_F.nii.gz")
    assert water.shape == tuple(GRID["shape"]) == fat.shape
    assert np.allclose(water.header.get_zooms(), GRID["spacing"], atol=1e-3)
    assert nib.aff2axcodes(water.affine) == ("R", "A", "S")
    data = water.get_fdata()
    assert data.max() > 0 and (data > 0).mean() > 0.1  # a body, not an empty grid
    assert (folder / f"{eids[0]}_preview.png").stat().st_size > 1000
    # The excluded participant keeps its QC record and no half-written images.
    broken = tmp / "results" / "stitched" / eids[2]
    assert (broken / "qc.json").exists() and not list(broken.glob("*.nii.gz"))


def test_real_format_run_reports_every_phenotype_problem(tmp_path):
    zips = tmp_path / "zips"
    zips.mkdir()
    people = synth.make_cohort(4, seed=5)
    for p in people:
        synth.write_participant_zip(zips / f"{p.eid}_20201_2_0.zip", p, scale=0.2, seed=5)
    a, b, c, d = (p.eid for p in people)
    (tmp_path / "pheno.csv").write_text(
        "eid,31-0.0,21003-2.0,21001-2.0\n"
        f"{a},0,60.1,24\n{b},1,71,\n{c},2,55,30\n"  # b: no BMI, c: sex code 2, d: no row
        "1234567,1,50,22\n"  # a participant without a zip
    )
    config = base_config(tmp_path) | {
        "cohort": {"source": "ukbb", "zip_dir": str(zips), "phenotypes": str(tmp_path / "pheno.csv")}
    }
    result = run_snakemake(tmp_path, config)
    assert result.returncode == 0, result.stderr[-4000:]
    table = qc_by_eid(tmp_path / "results")
    # Passed (a coarse test scan may warn about a thin overlap), with no phenotype problem.
    assert table.loc[str(a), "status"] in ("ok", "warning")
    assert "phenotypes" not in table.loc[str(a), "reasons"]
    assert "missing bmi" in table.loc[str(b), "reasons"]
    assert "sex code '2'" in table.loc[str(c), "reasons"]
    assert "no row in the phenotype table" in table.loc[str(d), "reasons"]
    assert "no zip 1234567_20201_2_0.zip" in table.loc["1234567", "reasons"]
    assert not (tmp_path / "results" / "stitched" / str(b)).exists()  # invalid rows are not processed


@pytest.mark.parametrize(
    "change, message",
    [
        ({"stich": {}}, "stich"),
        ({"stitch": {"grid": {"shape": [10, 10]}}}, "shape"),
        ({"cohort": {"source": "ukbb"}}, "zip_dir"),
    ],
)
def test_config_mistakes_name_the_key(tmp_path, change, message):
    config = base_config(tmp_path) | {"cohort": {"source": "synthetic"}} | change
    result = run_snakemake(tmp_path, config, "-n")
    assert result.returncode != 0
    assert message in result.stdout + result.stderr


def test_unusable_phenotype_table_names_file_and_column(tmp_path):
    (tmp_path / "zips").mkdir()
    (tmp_path / "p.csv").write_text("eid,31-0.0\n1,0\n")
    config = base_config(tmp_path) | {
        "cohort": {"source": "ukbb", "zip_dir": str(tmp_path / "zips"), "phenotypes": str(tmp_path / "p.csv")}
    }
    result = run_snakemake(tmp_path, config, "-n")
    assert result.returncode != 0
    output = result.stdout + result.stderr
    assert "p.csv" in output and "21003-2.0" in output


def test_whole_pipeline_trains_predicts_and_writes_table1(tmp_path):
    """The model stage end to end on 12 SYNTHETIC participants (a smoke test; learning is tested in test_train)."""
    config = base_config(tmp_path) | {
        "cohort": {"source": "synthetic"},
        "synthetic": {"n_participants": 12, "scale": 0.2},
        "split": {"sizes": {"train": 0.5, "val": 0.25, "test": 0.25}},
        "preprocess": {"downsample": 2},
        "train": {"epochs": 2, "lr": 0.0001, "batch_size": 2, "accumulate": 1, "num_workers": 0, "gpus": 0},
        # 3 test participants: atlases from every split so each test group has one
        "atlas": {"n_members": 2, "iterations": 1, "splits": ["train", "val", "test"]},
        "registration": {"affine_iterations": 10, "levels": 2, "finest_level": 1, "lncc_kernel": 3,
                         "max_steps": 10, "gpus": 0},
        "maps": {"n_perm": 19},
    }
    result = run_snakemake(tmp_path, config, target="all")
    assert result.returncode == 0, (result.stdout + result.stderr)[-4000:]
    results = tmp_path / "results"
    cohort = pd.read_csv(results / "cohort" / "cohort.tsv", sep="\t")
    assert cohort["split"].value_counts().to_dict() == {"train": 6, "val": 3, "test": 3}
    predictions = pd.read_csv(results / "age" / "predictions_corrected.tsv", sep="\t")
    assert sorted(predictions["split"].unique()) == ["test", "val"] and len(predictions) == 6
    assert predictions["corrected"].notna().all()
    metrics = pd.read_csv(results / "model" / "metrics.tsv", sep="\t")
    assert list(metrics["epoch"]) == [1, 2]
    table1 = (results / "age" / "table1.md").read_text()
    assert "Mean Pred." in table1 and "3D (bias-corrected)" in table1
    assert (results / "age" / "figures" / "predicted_vs_age_by_group.png").stat().st_size > 5000
    log = (tmp_path / "logs" / "train_age_model.log").read_text()
    assert "CPU" in log  # no GPU here: the log says so
    # One Grad-CAM map per test participant, on its stitched grid with its affine.
    for eid in cohort.loc[cohort["split"] == "test", "eid"]:
        cam = nib.load(results / "gradcam" / f"{eid}.nii.gz")
        water = nib.load(results / "stitched" / str(eid) / f"{eid}_W.nii.gz")
        assert cam.shape == water.shape and np.allclose(cam.affine, water.affine)
        values = cam.get_fdata()
        assert 0.0 <= values.min() and values.max() <= 1.0

    check_explain_outputs(results, cohort)


def check_explain_outputs(results: Path, cohort: pd.DataFrame) -> None:
    """Registration QC, warped maps on their atlas grid, population maps and figures."""
    test = cohort[cohort["split"] == "test"]
    registration = pd.read_csv(results / "qc" / "registration.tsv", sep="\t", dtype={"eid": str})
    assert sorted(registration["eid"]) == sorted(test["eid"].astype(str))
    assert set(registration["status"]) <= {"ok", "failed"}
    for group, members in test.groupby("group"):
        atlas = nib.load(results / "atlas" / f"{group}.nii.gz")
        ok = registration[(registration["group"] == group) & (registration["status"] == "ok")]
        for eid in members["eid"].astype(str):
            warped = nib.load(results / "explain" / group / "warped" / f"{eid}.nii.gz")
            assert warped.shape == atlas.shape and np.allclose(warped.affine, atlas.affine, atol=1e-3)
        summary = json.loads((results / "explain" / group / "maps" / "all.json").read_text())
        assert summary["n"] == len(ok) and sorted(summary["eids"]) == sorted(ok["eid"])
        for name in ("importance_by_age_band", "importance_by_ageing_class", "accelerated_vs_decelerated"):
            assert (results / "explain" / group / "figures" / f"{name}.png").stat().st_size > 5000
    assert (results / "explain" / "figures" / "importance_by_group.png").stat().st_size > 5000
    truth = pd.read_csv(results / "explain" / "truth_check.tsv", sep="\t")
    assert sorted(truth["group"]) == sorted(test["group"].unique())
