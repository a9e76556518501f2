"""The workflow end to end on tiny SYNTHETIC cohorts, through the snakemake CLI.

These are the user's commands: a synthetic demo run, a real-format run with
a hand-made phenotype table full of defects, and config mistakes.
"""

import dataclasses
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
import yaml

import ageatlas
from ageatlas.core import provenance
from ageatlas.synthetic.dicom import write_participant_zip
from ageatlas.synthetic.participants import make_cohort

REPO = Path(__file__).resolve().parents[2]
SNAKEMAKE = str(Path(sys.executable).with_name("snakemake"))
GRID = {"shape": [45, 35, 74], "spacing": [11.16, 11.16, 15.0]}


def _load_tool(name: str):
    """A helper module from tests/tools (not a package: also run as scripts)."""
    spec = importlib.util.spec_from_file_location(name, REPO / "tests" / "tools" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


report_in_browser = _load_tool("report_in_browser")

pytestmark = pytest.mark.workflow


def run_snakemake(
    workdir: Path,
    config: dict,
    *flags: str,
    target: str | list[str] = "cohort/participant_qc.tsv",
):
    """snakemake on ``config`` up to ``target`` (paths under results_dir, or a rule name)."""
    configfile = workdir / "config.yaml"
    configfile.write_text(yaml.safe_dump(config))
    targets = [target] if isinstance(target, str) else target
    targets = [str(Path(config["results_dir"]) / t) if "/" in t else t for t in targets]
    cmd = [
        SNAKEMAKE,
        *targets,
        "--snakefile",
        str(REPO / "Snakefile"),
        "--configfile",
        str(configfile),
        "--directory",
        str(workdir),
        "--cores",
        "2",
        *flags,
    ]
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
    table = pd.read_csv(
        results / "cohort" / "participant_qc.tsv", sep="\t", dtype=str, keep_default_na=False
    )
    return table.set_index("eid")


@pytest.fixture(scope="module")
def synthetic_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("synthetic_run")
    eids = [str(p.eid) for p in make_cohort(6, seed=3)]
    config = base_config(tmp) | {
        "cohort": {"source": "synthetic"},
        "synthetic": {
            "n_participants": 6,
            "scale": 0.2,
            "defects": {
                eids[1]: ["fat_water_swap"],
                eids[2]: ["truncated_zip"],
                eids[3]: ["repeat_station"],
            },
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
    assert (
        eids[2] in table.loc[eids[2], "reasons"] or "zip" in table.loc[eids[2], "reasons"].lower()
    )
    assert (
        table.loc[eids[1], "status"] == "warning"
        and "swap" in table.loc[eids[1], "reasons"].lower()
    )
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
    folder = tmp / "results" / "ingest" / eids[0]
    water = nib.load(folder / f"{eids[0]}_W.nii.gz")
    fat = nib.load(folder / f"{eids[0]}_F.nii.gz")
    assert water.shape == tuple(GRID["shape"]) == fat.shape
    assert np.allclose(water.header.get_zooms(), GRID["spacing"], atol=1e-3)
    assert nib.aff2axcodes(water.affine) == ("R", "A", "S")
    data = water.get_fdata()
    assert data.max() > 0 and (data > 0).mean() > 0.1  # a body, not an empty grid
    assert (folder / f"{eids[0]}_preview.png").stat().st_size > 1000
    # The excluded participant keeps its QC record and no half-written images.
    broken = tmp / "results" / "ingest" / eids[2]
    assert (broken / "qc.json").exists() and not list(broken.glob("*.nii.gz"))


def test_real_format_run_reports_every_phenotype_problem(tmp_path):
    zips = tmp_path / "zips"
    zips.mkdir()
    people = make_cohort(4, seed=5)
    for p in people:
        write_participant_zip(zips / f"{p.eid}_20201_2_0.zip", p, scale=0.2, seed=5)
    a, b, c, d = (p.eid for p in people)
    (tmp_path / "pheno.csv").write_text(
        "eid,31-0.0,21003-2.0,21001-2.0\n"
        f"{a},0,60.1,24\n{b},1,71,\n{c},2,55,30\n"  # b: no BMI, c: sex code 2, d: no row
        "1234567,1,50,22\n"  # a participant without a zip
    )
    config = base_config(tmp_path) | {
        "cohort": {
            "source": "ukbb",
            "zip_dir": str(zips),
            "phenotypes": str(tmp_path / "pheno.csv"),
        }
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
    assert not (tmp_path / "results" / "ingest" / str(b)).exists()  # invalid rows are not processed

    # A real cohort's zips are digests (params), not input files: they still decide reruns.
    unchanged = run_snakemake(tmp_path, config, "-n")
    assert unchanged.returncode == 0, unchanged.stderr[-4000:]
    assert "rule stitch" not in unchanged.stdout + unchanged.stderr
    rewritten = zips / f"{a}_20201_2_0.zip"
    before = rewritten.stat().st_mtime_ns
    os.utime(rewritten, ns=(before + 10**9, before + 10**9))
    rerun = run_snakemake(tmp_path, config, "-n")
    plan = rerun.stdout + rerun.stderr
    assert rerun.returncode == 0 and "rule stitch" in plan and "Params have changed" in plan
    assert "rule phenotype_qc" not in plan  # who has a zip did not change
    # A zip without a phenotype row is phenotype QC's business, not a stitch batch's.
    os.utime(rewritten, ns=(before, before))
    (zips / "7654321_20201_2_0.zip").write_bytes(b"")
    listed = run_snakemake(tmp_path, config, "-n")
    plan = listed.stdout + listed.stderr
    assert listed.returncode == 0 and "rule phenotype_qc" in plan and "Params have changed" in plan
    assert "rule stitch" not in plan


@pytest.mark.parametrize(
    "change, message",
    [
        ({"stich": {}}, "stich"),
        ({"stitch": {"grid": {"shape": [10, 10]}}}, "shape"),
        ({"cohort": {"source": "ukbb"}}, "zip_dir"),
        ({"registration": {"channels": ["W", "in"]}}, "stitch.contrasts"),
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
        "cohort": {
            "source": "ukbb",
            "zip_dir": str(tmp_path / "zips"),
            "phenotypes": str(tmp_path / "p.csv"),
        }
    }
    result = run_snakemake(tmp_path, config, "-n")
    assert result.returncode != 0
    output = result.stdout + result.stderr
    assert "p.csv" in output and "21003-2.0" in output


def write_trained_elsewhere(folder: Path) -> tuple[Path, Path]:
    """A checkpoint.pt as train_age_model writes it (untrained weights) and a bias_correction.json,
    as another run would have left them."""
    import torch

    from ageatlas.age.bias import BiasCorrection
    from ageatlas.age.train_config import TrainConfig

    folder.mkdir()
    config = TrainConfig(hidden=16, bf16=False, channels_last=False)
    torch.manual_seed(0)
    state = {
        "model": config.build_model(pretrained=False).state_dict(),
        "epoch": 7,
        "val_mae": 4.2,
        "config": dataclasses.asdict(config),
        "input_shape": [22, 17, 37],
    }
    torch.save(state, folder / "checkpoint.pt")
    BiasCorrection("delta", -0.5, 30.0, 40, 0.7, age_min=45.0, age_max=82.0).to_json(
        folder / "bias_correction.json"
    )
    return folder / "checkpoint.pt", folder / "bias_correction.json"


def test_a_given_model_predicts_corrects_and_explains_without_training(tmp_path):
    """model.checkpoint and bias.coefficients on a cohort that is all test: no training, Table 1
    says "given checkpoint", the sidecars name the given model and coefficients, and the maps
    are drawn against each group's atlas (gradcam.reference group_atlas needs no train split)."""
    checkpoint, coefficients = write_trained_elsewhere(tmp_path / "trained_elsewhere")
    eids = [str(p.eid) for p in make_cohort(6, seed=3)]
    config = base_config(tmp_path) | {
        "cohort": {"source": "synthetic"},
        "synthetic": {"n_participants": 6, "scale": 0.2},
        "split": {"sizes": {"train": 0, "val": 0, "test": 1}},
        "preprocess": {"downsample": 2},
        "train": {"gpus": 0},
        "model": {"checkpoint": str(checkpoint)},
        "bias": {"coefficients": str(coefficients)},
        "atlas": {"splits": ["test"], "n_members": 2, "iterations": 1},
        # Maps against each group's atlas in the participant's body: no train split needed.
        "gradcam": {"method": "integrated_gradients", "reference": "group_atlas", "steps": 4},
        "registration": {"affine_iterations": 10, "levels": 2, "max_steps": 5, "gpus": 0},
    }
    results = tmp_path / "results"
    # Attribution maps come from batch jobs: the target is the batch manifest (6 participants in
    # the default batches of about 400: one batch).
    targets = ["age/table1.md", "explain/ageing_classes.tsv", "explain/batches/gradcam/0of1.tsv"]
    result = run_snakemake(tmp_path, config, target=targets)
    assert result.returncode == 0, (result.stdout + result.stderr)[-4000:]
    assert not (tmp_path / "logs" / "train_age_model.log").exists()
    table1 = (results / "age" / "table1.md").read_text()
    assert "| Nr. training samples | - | - | - | N/A | given checkpoint |" in table1
    assert f"the given checkpoint {checkpoint}" in table1 and "2.5D" not in table1
    sha = provenance.sha256_file(checkpoint)
    model = {
        "checkpoint": str(results / "age" / "model" / "checkpoint.pt"),
        "sha256": sha,
        "source": "given",
        "given": str(checkpoint),
    }
    for path in (
        results / "age" / "predictions.tsv",
        results / "explain" / "gradcam" / f"{eids[0]}.nii.gz",
    ):
        (named,) = provenance.read_sidecar(path)["models"]
        assert {k: named[k] for k in model} == model, path
    # Each map was drawn against its own group's atlas, brought in by its registration.
    cohort = pd.read_csv(results / "cohort" / "cohort.tsv", sep="\t", dtype={"eid": str})
    for eid, group in cohort.set_index("eid")["group"].items():
        done = json.loads((results / "explain/batches/gradcam/done" / f"{eid}.json").read_text())
        assert done["info"]["reference"] == str(results / "explain/atlas" / f"{group}.nii.gz")
    (named,) = provenance.read_sidecar(results / "explain" / "ageing_classes.tsv")["models"]
    assert named["sha256"] == sha and named["bias_correction"]["source"] == "given"
    assert named["bias_correction"]["path"] == str(coefficients)
    corrected = pd.read_csv(results / "age" / "predictions_corrected.tsv", sep="\t")
    assert (corrected["split"] == "test").all() and len(corrected) == 6
    np.testing.assert_allclose(
        corrected["corrected"], corrected["predicted"] - (-0.5 * corrected["age"] + 30.0)
    )


@pytest.fixture(scope="module")
def pipeline_run(tmp_path_factory):
    """The whole workflow on 12 SYNTHETIC participants, run once for the tests that read its
    results."""
    tmp_path = tmp_path_factory.mktemp("pipeline_run")
    config = base_config(tmp_path) | {
        "cohort": {"source": "synthetic"},
        "synthetic": {"n_participants": 12, "scale": 0.2},
        "split": {"sizes": {"train": 0.5, "val": 0.25, "test": 0.25}},
        "preprocess": {"downsample": 2},
        "train": {
            "epochs": 2,
            "lr": 0.0001,
            "batch_size": 2,
            "accumulate": 1,
            "num_workers": 0,
            "gpus": 0,
        },
        # the 2.5D baseline at the smallest size VGG16 takes (five max-pools leave 1 x 1)
        "projection": {"size": [32, 32]},
        "baseline": {
            "epochs": 1,
            "batch_size": 4,
            "hidden": 16,
            "pool": 1,
            "max_shift": 2,
            "num_workers": 0,
            "gpus": 0,
            "figure_participants": 2,
        },
        # 3 test participants: atlases from every split so each test group has one
        "atlas": {"n_members": 2, "iterations": 1, "splits": ["train", "val", "test"]},
        "registration": {
            "affine_iterations": 10,
            "levels": 2,
            "finest_level": 1,
            "lncc_kernel": 3,
            "max_steps": 10,
            "gpus": 0,
            "channels": ["W", "F"],  # water and fat registered together
        },
        "maps": {"n_perm": 19},
    }
    result = run_snakemake(tmp_path, config, target="all")
    return tmp_path, config, result


def test_whole_pipeline_trains_predicts_and_writes_table1(pipeline_run):
    """The model stage end to end on 12 SYNTHETIC participants (a smoke test; learning is tested in
    test_train)."""
    tmp_path, _, result = pipeline_run
    assert result.returncode == 0, (result.stdout + result.stderr)[-4000:]
    results = tmp_path / "results"
    cohort = pd.read_csv(results / "cohort" / "cohort.tsv", sep="\t")
    assert cohort["split"].value_counts().to_dict() == {"train": 6, "val": 3, "test": 3}
    predictions = pd.read_csv(results / "age" / "predictions_corrected.tsv", sep="\t")
    assert sorted(predictions["split"].unique()) == ["test", "val"] and len(predictions) == 6
    assert predictions["corrected"].notna().all()
    metrics = pd.read_csv(results / "age" / "model" / "metrics.tsv", sep="\t")
    assert list(metrics["epoch"]) == [1, 2]
    table1 = (results / "age" / "table1.md").read_text()
    assert "Mean Pred." in table1 and "3D (bias-corrected)" in table1
    check_baseline_outputs(results, cohort, table1)
    assert (results / "age" / "figures" / "predicted_vs_age_by_group.png").stat().st_size > 5000
    log = (tmp_path / "logs" / "train_age_model.log").read_text()
    assert "CPU" in log  # no GPU here: the log says so
    # One attribution map per test participant, on its stitched grid with its affine: the
    # default HiResCAM, signed and unscaled (years of predicted age), finite and not empty.
    for eid in cohort.loc[cohort["split"] == "test", "eid"]:
        cam = nib.load(results / "explain" / "gradcam" / f"{eid}.nii.gz")
        water = nib.load(results / "ingest" / str(eid) / f"{eid}_W.nii.gz")
        assert cam.shape == water.shape and np.allclose(cam.affine, water.affine)
        values = cam.get_fdata()
        assert np.isfinite(values).all() and np.abs(values).max() > 0

    check_explain_outputs(results, cohort)


def check_baseline_outputs(results: Path, cohort: pd.DataFrame, table1_md: str) -> None:
    """The 2.5D baseline: a projection per participant, its Table 1 columns with costs, Figure 9."""
    projections = sorted((results / "baseline" / "projections").glob("*.npy"))
    assert sorted(int(p.stem) for p in projections) == sorted(cohort["eid"])
    assert np.load(projections[0]).shape == (2, 32, 32)
    table = pd.read_csv(results / "age" / "table1.tsv", sep="\t").set_index("Metric")
    assert "2.5D (bias-corrected)" in table1_md
    costs = table.loc[
        ["Nr. training samples", "Runtime/epoch (min)", "Inference/sample (s)"], "2.5D"
    ].astype(float)
    assert costs.iloc[0] == 6 and (costs > 0).all()
    assert (results / "baseline" / "figures" / "gradcam_projections.png").stat().st_size > 5000


def check_explain_outputs(results: Path, cohort: pd.DataFrame) -> None:
    """Registration QC, warped maps on their atlas grid, population maps and figures."""
    test = cohort[cohort["split"] == "test"]
    registration = pd.read_csv(
        results / "explain" / "registration_qc.tsv", sep="\t", dtype={"eid": str}
    )
    assert sorted(registration["eid"]) == sorted(test["eid"].astype(str))
    assert set(registration["status"]) <= {"ok", "failed"}
    for group, members in test.groupby("group"):
        atlas = nib.load(results / "explain" / "atlas" / f"{group}.nii.gz")
        fat = nib.load(results / "explain" / "atlas" / f"{group}_F.nii.gz")  # registration.channels
        assert fat.shape == atlas.shape and not np.allclose(fat.dataobj, atlas.dataobj)
        ok = registration[(registration["group"] == group) & (registration["status"] == "ok")]
        for eid in members["eid"].astype(str):
            warped = nib.load(results / "explain" / group / "warped" / f"{eid}.nii.gz")
            assert warped.shape == atlas.shape and np.allclose(
                warped.affine, atlas.affine, atol=1e-3
            )
        summary = json.loads((results / "explain" / group / "maps" / "all.json").read_text())
        assert summary["n"] == len(ok) and sorted(summary["eids"]) == sorted(ok["eid"])
        maps = results / "explain" / group / "maps"
        count = nib.load(maps / "all_count.nii.gz").get_fdata()
        assert count.max() <= summary["n"]  # per-voxel coverage, at most everyone used
        if summary["n"]:
            mean = nib.load(maps / "all_mean.nii.gz").get_fdata()
            parts = [
                nib.load(maps / f"all_{p}.nii.gz").get_fdata() for p in ("positive", "negative")
            ]
            covered = count > 0
            assert np.all(np.isnan(mean[~covered])) and np.all(mean[covered] >= 0)
            assert np.all(parts[0][covered] >= 0) and np.all(parts[1][covered] <= 0)
            # One map a group here: the slope's values are tested in tests/explain/test_maps.py.
            for slope in ("per_year", "per_year_of_age"):
                per_year = nib.load(maps / f"all_{slope}.nii.gz").get_fdata()
                assert per_year.shape == count.shape and np.all(np.isnan(per_year[count < 2]))
        band = json.loads(
            (results / "explain" / group / "stats" / "age_band_lt60_vs_ge70.json").read_text()
        )
        assert band["group"] == group
        for name in (
            "importance_by_age_band",
            "importance_by_ageing_class",
            "accelerated_vs_decelerated",
        ):
            assert (results / "explain" / group / "figures" / f"{name}.png").stat().st_size > 5000
    assert (results / "explain" / "figures" / "importance_by_group.png").stat().st_size > 5000
    truth = pd.read_csv(results / "explain" / "truth_check.tsv", sep="\t")
    assert sorted(truth["group"]) == sorted(test["group"].unique())


def test_results_carry_provenance(pipeline_run):
    """Tables and maps have a sidecar naming the version, the commit, the config hash and the
    inputs."""
    tmp_path, _, result = pipeline_run
    assert result.returncode == 0, (result.stdout + result.stderr)[-4000:]
    results = tmp_path / "results"
    head = subprocess.run(
        ["git", "-C", str(REPO), "rev-parse", "HEAD"], capture_output=True, text=True
    )
    commit = head.stdout.strip() if head.returncode == 0 else "unknown"
    maps = sorted(results.glob("explain/*/maps/all_mean.nii.gz"))
    cams = sorted(results.glob("explain/gradcam/*.nii.gz"))
    assert maps and cams
    paths = [
        results / "age" / "table1.tsv",
        results / "cohort" / "participant_qc.tsv",
        maps[0],
        cams[0],
    ]
    records = [provenance.read_sidecar(path) for path in paths]
    for path, record in zip(paths, records):
        assert record["version"] == ageatlas.__version__ and record["git_commit"] == commit, path
        assert record["output"]["path"] == str(path)
        assert record["inputs"] and all(
            Path(entry["path"]).exists() for entry in record["inputs"]
        ), path
    assert len({record["config_sha256"] for record in records}) == 1  # one run, one config
    assert records[2]["rule"] == "population_map" and records[2]["wildcards"]["subset"] == "all"
    # Outputs of a model name it, trained here, down to the maps; Table 1 names both models.
    trained = provenance.model_record(results / "age" / "model" / "checkpoint.pt")
    assert trained["source"] == "trained here"
    assert [m["checkpoint"] for m in records[0]["models"]] == [
        trained["checkpoint"],
        str(results / "baseline" / "model" / "checkpoint.pt"),
    ]
    (map_model,) = records[2]["models"]
    assert map_model["sha256"] == trained["sha256"]
    assert map_model["bias_correction"]["source"] == "fitted here"
    assert records[3]["models"] == [trained]
    assert "models" not in records[1]  # the QC table rests on no model


def report_results(html: str) -> dict:
    """The results a Snakemake HTML report embeds (`var results = {...};` in its
    `<script id="results">`)."""
    block = html.split('<script id="results">', 1)[1].split("</script>", 1)[0].strip()
    assert block.startswith("var results = "), block[:200]
    return json.loads(block[len("var results = ") :].rstrip(";"))


def test_report_shows_every_figure_and_table_with_a_caption(pipeline_run):
    tmp_path, config, result = pipeline_run
    assert result.returncode == 0, (result.stdout + result.stderr)[-4000:]
    results = tmp_path / "results"
    report = tmp_path / "report.html"
    made = run_snakemake(tmp_path, config, "--report", str(report), target="all")
    assert made.returncode == 0, (made.stdout + made.stderr)[-4000:]
    embedded = report_results(report.read_text())
    figures = {str(p) for p in results.rglob("figures/*.png")}
    tables = {
        str(results / name)
        for name in (
            "cohort/participant_qc.tsv",
            "cohort/phenotype_qc.tsv",
            "explain/registration_qc.tsv",
            "cohort/cohort.tsv",
            "age/model/metrics.tsv",
            "age/predictions_corrected.tsv",
            "age/table1.tsv",
            "age/table1.md",
            "explain/ageing_classes.tsv",
            "explain/truth_check.tsv",
            "baseline/model/metrics.tsv",
            "baseline/predictions_corrected.tsv",
        )
    }
    assert figures and figures | tables <= set(embedded), sorted(figures | tables - set(embedded))
    for path, entry in embedded.items():
        caption = " ".join(entry["caption"].split())
        assert "Made by" in caption, (path, caption)  # what it shows and how it was made
    assert (
        "<table" in embedded[str(results / "age" / "table1.tsv")]["caption"]
    )  # Table 1 itself, inline

    # Headless chromium: the page renders, every figure opens in the viewer and decodes, captions
    # show.
    seen = report_in_browser.browse(report)
    assert not seen["errors"], seen["errors"]
    assert {"Quality control", "Age model", "Population maps"} <= set(seen["categories"])
    for path in figures:
        shown = seen["results"][path]
        assert shown["shown"] and shown["width"] > 100 and shown["height"] > 100, (path, shown)
    for path, shown in seen["results"].items():
        assert "Made by" in shown["info"], (path, shown["info"][:500])
