# Cohort and paths, known when the DAG is built (so -n, --dag, --rulegraph
# and partial targets work before anything has run).
import os

from ageatlas import cohort as cohort_lib
from ageatlas.jobenv import export_source_path
from ageatlas import phenotypes as phenotypes_lib
from ageatlas.layout import zip_name

export_source_path(os.path.join(workflow.basedir, "src"))

RESULTS = config["results_dir"]
LOGS = config["logs_dir"]
BENCHMARKS = config["benchmarks_dir"]
SYNTHETIC = config["cohort"]["source"] == "synthetic"
INSTANCE = config["cohort"]["instance"] if not SYNTHETIC else 2
PHENOTYPE_QC = f"{RESULTS}/qc/phenotypes.tsv"
# A stable path: workflow.source_path() gives a new temporary copy on every
# run, which Snakemake then sees as changed params and reruns everything.
PHENOTYPE_SCHEMA = os.path.join(
    workflow.basedir, "workflow/schemas/phenotypes.schema.yaml"
)

if SYNTHETIC:
    from ageatlas import synth

    ZIP_DIR = f"{RESULTS}/synthetic"
    PHENOTYPES = f"{ZIP_DIR}/phenotypes.csv"
    SYNTHETIC_COHORT = synth.make_cohort(
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


wildcard_constraints:
    eid=r"\d+",


def participant_zip(eid):
    return f"{ZIP_DIR}/{zip_name(eid, INSTANCE)}"


def stitched_dirs():
    return expand(f"{RESULTS}/stitched/{{eid}}", eid=EIDS)


COHORT_TABLE = f"{RESULTS}/cohort/cohort.tsv"
BASELINE = f"{RESULTS}/baseline"  # the 2.5D baseline (workflow/rules/baseline.smk)


def cohort_members(*splits):
    """eids of the cohort table's given splits, once the cohort checkpoint has run."""
    table = cohort_lib.read_participant_tsv(checkpoints.cohort_table.get().output.table)
    return table.loc[table["split"].isin(splits), "eid"].tolist()


def cache_paths(*splits):
    return expand(f"{RESULTS}/cache/{{eid}}.npy", eid=cohort_members(*splits))


# ---- interpretability: groups, atlases, per-group inputs ----
from functools import lru_cache

from snakemake.exceptions import WorkflowError

from ageatlas import aggregate as aggregate_lib
from ageatlas import selection

GROUPS = cohort_lib.group_names()
SUBSETS = list(aggregate_lib.SUBSETS)
EXPLAIN = f"{RESULTS}/explain"
ATLAS_DIR = f"{RESULTS}/atlas"
ATLAS_ITERATIONS = config["atlas"]["iterations"]
REG_GPUS = config["registration"]["gpus"]


wildcard_constraints:
    group="|".join(GROUPS),
    subset="|".join(SUBSETS),
    iteration=r"\d+",


@lru_cache(maxsize=4)
def _cohort_frame(path, mtime):
    return cohort_lib.read_participant_tsv(path)


def cohort_frame():
    """The cohort table (after its checkpoint), read once per version."""
    path = checkpoints.cohort_table.get().output.table
    return _cohort_frame(path, os.path.getmtime(path))


def test_members(group):
    table = cohort_frame()
    rows = table[(table["split"] == "test") & (table["group"] == group)]
    return rows["eid"].tolist()


def active_groups():
    """Groups with test participants: the ones that get maps."""
    table = cohort_frame()
    present = set(table.loc[table["split"] == "test", "group"])
    return [group for group in GROUPS if group in present]


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


def water(eid):
    return f"{RESULTS}/stitched/{eid}/{eid}_W.nii.gz"


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
    """Everything the interpretability stage ends with."""
    groups = active_groups()
    targets = [
        f"{RESULTS}/qc/registration.tsv",
        f"{EXPLAIN}/figures/importance_by_group.png",
    ]
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
    if SYNTHETIC:
        targets.append(f"{EXPLAIN}/truth_check.tsv")
    return targets


# ---- the 2.5D baseline (workflow/rules/baseline.smk) ----


def projection_paths(*splits):
    return expand(f"{BASELINE}/projections/{{eid}}.npy", eid=cohort_members(*splits))


def figure9_participants():
    """A few test participants spread over the age range."""
    table = cohort_frame()
    test = table[table["split"] == "test"]
    return selection.choose_members(test, config["baseline"]["figure_participants"])
