# Cohort, paths and resources, known when the DAG is built (so -n, --dag,
# --rulegraph and partial targets work before anything has run). Only light
# modules are imported here: never torch or deepali
# (tests/workflow/test_conventions.py checks).
import os
from functools import lru_cache

from snakemake.exceptions import WorkflowError

from ageatlas.age import given_model
from ageatlas.cohort import phenotypes as phenotypes_lib
from ageatlas.cohort import selection
from ageatlas.cohort import table as cohort_lib
from ageatlas.core import paths
from ageatlas.core.field20201 import zip_name
from ageatlas.core.jobenv import export_source_path
from ageatlas.core.vocabulary import SUBSETS, group_names

export_source_path(os.path.join(workflow.basedir, "src"))

RESULTS = config["results_dir"]
LOGS = config["logs_dir"]
BENCHMARKS = config["benchmarks_dir"]
SYNTHETIC = config["cohort"]["source"] == "synthetic"
INSTANCE = config["cohort"]["instance"] if not SYNTHETIC else 2
# A stable path: workflow.source_path() gives a new temporary copy on every
# run, which Snakemake then sees as changed params and reruns everything.
PHENOTYPE_SCHEMA = os.path.join(
    workflow.basedir, "workflow/schemas/phenotypes.schema.yaml"
)

# Every path the rules write comes from ageatlas.core.paths (one folder per stage).
STITCHED = f"{RESULTS}/{paths.STITCHED}"
PHENOTYPE_QC = f"{RESULTS}/{paths.PHENOTYPE_QC}"
PARTICIPANT_QC = f"{RESULTS}/{paths.PARTICIPANT_QC}"
COHORT_TABLE = f"{RESULTS}/{paths.COHORT_TABLE}"
AGE = f"{RESULTS}/{paths.AGE}"
CACHE = f"{RESULTS}/{paths.CACHE}"
AGE_MODEL = f"{RESULTS}/{paths.AGE_MODEL}"
BASELINE = f"{RESULTS}/{paths.BASELINE}"
EXPLAIN = f"{RESULTS}/{paths.EXPLAIN}"
GRADCAM = f"{RESULTS}/{paths.GRADCAM}"
ATLAS_DIR = f"{RESULTS}/{paths.ATLAS}"
REGISTRATION_QC = f"{RESULTS}/{paths.REGISTRATION_QC}"
AGE_CHECKPOINT = f"{AGE_MODEL}/checkpoint.pt"

# A trained model given in the config (README, "Using a trained model"): the
# files and the splits it leaves to the run are checked before any job runs.
GIVEN_CHECKPOINT = given_model.given_checkpoint(config)
GIVEN_COEFFICIENTS = given_model.given_coefficients(config)
BASELINE_ENABLED = given_model.baseline_enabled(config)
_config_problems = given_model.problems(config, AGE_CHECKPOINT)
if _config_problems:
    raise WorkflowError(
        "the config cannot run:\n" + "\n".join(f"- {p}" for p in _config_problems)
    )


def unless_given(path):
    """A record of training here (metrics.tsv); none with a given model."""
    return [] if GIVEN_CHECKPOINT else path


def if_baseline(path):
    """A file of the 2.5D baseline; none when baseline.enabled resolves to false."""
    return path if BASELINE_ENABLED else []


def grows(base):
    """Minutes that grow with each retry: attempt 2 asks 2x, attempt 3 3x.

    A job killed for time (TIMEOUT) thus gets more; the bases are sized for
    full-size UK Biobank volumes (docs/measurements.md).
    """
    return lambda wildcards, attempt: base * attempt


def memory(base):
    """MB that grow with each retry, scaled by config resources.mem_scale (at least 100 MB)."""
    scaled = max(100, int(base * config["resources"]["mem_scale"]))
    return lambda wildcards, attempt: scaled * attempt


if SYNTHETIC:
    from ageatlas.synthetic.participants import make_cohort

    ZIP_DIR = f"{RESULTS}/{paths.SYNTHETIC}"
    PHENOTYPES = f"{ZIP_DIR}/phenotypes.csv"
    SYNTHETIC_COHORT = make_cohort(
        config["synthetic"]["n_participants"],
        seed=config["seed"],
        offset_sd=config["synthetic"]["age_offset_sd"],
    )
    EIDS = [str(p.eid) for p in SYNTHETIC_COHORT]
else:
    ZIP_DIR = config["cohort"]["zip_dir"]
    PHENOTYPES = config["cohort"]["phenotypes"]
    COHORT = cohort_lib.discover(
        PHENOTYPES,
        ZIP_DIR,
        phenotypes_lib.load_schema(PHENOTYPE_SCHEMA),
        config["phenotypes"]["columns"],
        INSTANCE,
    )
    EIDS = COHORT.eids

GROUPS = group_names()
ATLAS_ITERATIONS = config["atlas"]["iterations"]
REG_GPUS = config["registration"]["gpus"]


wildcard_constraints:
    eid=r"\d+",
    group="|".join(GROUPS),
    subset="|".join(SUBSETS),
    iteration=r"\d+",


def participant_zip(eid):
    return f"{ZIP_DIR}/{zip_name(eid, INSTANCE)}"


def stitched_dirs():
    return expand(STITCHED, eid=EIDS)


# ---- after the cohort checkpoint: who is in which split and group ----------


@lru_cache(maxsize=4)
def _cohort_frame(path, mtime):
    return cohort_lib.read_participant_tsv(path)


def cohort_frame():
    """The cohort table (after its checkpoint), read once per version."""
    path = checkpoints.cohort_table.get().output.table
    return _cohort_frame(path, os.path.getmtime(path))


def cohort_members(*splits):
    """eids of the cohort table's given splits."""
    table = cohort_frame()
    return table.loc[table["split"].isin(splits), "eid"].tolist()


def cache_paths(*splits):
    return expand(CACHE, eid=cohort_members(*splits))


def test_members(group):
    table = cohort_frame()
    rows = table[(table["split"] == "test") & (table["group"] == group)]
    return rows["eid"].tolist()


def active_groups():
    """Groups with test participants: the ones that get maps."""
    table = cohort_frame()
    present = set(table.loc[table["split"] == "test", "group"])
    return [group for group in GROUPS if group in present]


# ---- the explain stage: atlases and per-group inputs -----------------------


def atlas_members(group):
    table = cohort_frame()
    splits = config["atlas"]["splits"]
    rows = table[table["split"].isin(splits) & (table["group"] == group)]
    if rows.empty:
        raise WorkflowError(
            f"group {group} has test participants but nobody in splits {splits} to build "
            f"its atlas: give one in atlas.given or widen atlas.splits"
        )
    return [
        str(e) for e in selection.choose_members(rows, config["atlas"]["n_members"])
    ]


def atlas_reference(group):
    given = config["atlas"]["reference"].get(group)
    if given is not None:
        return str(given)
    table = cohort_frame()
    rows = table[table["eid"].isin(atlas_members(group))]
    return str(selection.choose_reference(rows))


def atlas_path(group):
    """The group's atlas: the user's file, or the last built template."""
    return config["atlas"]["given"].get(group, f"{ATLAS_DIR}/{group}.nii.gz")


def template(group, iteration):
    return f"{ATLAS_DIR}/{group}/iter{iteration}/template.nii.gz"


def group_files(pattern):
    """One path per test participant of the wildcard's group."""
    return lambda wc: expand(pattern, group=wc.group, eid=test_members(wc.group))


def all_test_files(pattern):
    return lambda wc: [
        path
        for group in active_groups()
        for path in expand(pattern, group=group, eid=test_members(group))
    ]


def atlas_update_inputs(wc):
    previous = int(wc.iteration) - 1
    members = f"{ATLAS_DIR}/{wc.group}/iter{previous}/members/{{eid}}"
    eids = atlas_members(wc.group)
    return {
        "template": template(wc.group, previous),
        "transforms": expand(f"{members}.pt", eid=eids),
        "records": expand(f"{members}.json", eid=eids),
        "warped": expand(f"{members}.nii.gz", eid=eids),
    }


def group_map(subset, kind="mean"):
    return f"{EXPLAIN}/{{group}}/maps/{subset}_{kind}.nii.gz"


def explain_targets(wc):
    """Everything the explain stage ends with."""
    groups = active_groups()
    targets = [REGISTRATION_QC, f"{EXPLAIN}/figures/importance_by_group.png"]
    if config["maps"]["example_group"] in groups:
        targets.append(
            f"{EXPLAIN}/figures/examples_{config['maps']['example_group']}.png"
        )
    for group in groups:
        targets += expand(
            f"{EXPLAIN}/{group}/figures/{{name}}.png",
            name=[
                "importance_by_age_band",
                "importance_by_ageing_class",
                "accelerated_vs_decelerated",
            ],
        )
        targets.append(f"{EXPLAIN}/{group}/stats/age_band_lt60_vs_ge70.json")
    if SYNTHETIC:
        targets.append(f"{RESULTS}/{paths.TRUTH_CHECK}")
    return targets


# ---- the 2.5D baseline (workflow/rules/baseline.smk) ----


REFERENCE_VOLUME = f"{EXPLAIN}/reference_volume.npy"


def gradcam_reference(wildcards):
    """The reference volume (gradcam.reference, else the mean training volume), for the methods
    that attribute against one."""
    if config["gradcam"]["method"] in given_model.REFERENCE_METHODS:
        return config["gradcam"]["reference"] or REFERENCE_VOLUME
    return []


def projection_paths(*splits):
    return expand(f"{BASELINE}/projections/{{eid}}.npy", eid=cohort_members(*splits))


def figure9_participants():
    """A few test participants spread over the age range."""
    table = cohort_frame()
    test = table[table["split"] == "test"]
    return selection.choose_members(test, config["baseline"]["figure_participants"])
