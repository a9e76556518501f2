"""Who is in the cohort, in which group, and in which split.

`discover` (valid phenotype rows that have a field-20201 zip) runs when the
workflow's DAG is built, so it must stay cheap for 100,000 participants: one
directory scan, one vectorised validation. Every participant that is left
out gets a QC record saying why.

`cohort_table` assigns the participants that passed QC to sex x BMI groups,
age bands and a train/val/test split balanced as in the paper: equal test
numbers per sex x BMI group (200 each of 1200), every split spread over the
age range of each group. See `cohort_table` for the algorithm.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from ageatlas.cohort import phenotypes
from ageatlas.core.field20201 import FIELD_ID
from ageatlas.core.qc import EXCLUDED, QCRecord
from ageatlas.core.vocabulary import AGE_BANDS, BMI_GROUPS, SEX_CODES, SPLITS, group_names

_ZIP_NAME = re.compile(rf"^(\d+)_{FIELD_ID}_(\d+)_(\d+)\.zip$")


@dataclass
class Cohort:
    participants: pd.DataFrame  # eid, sex, age, bmi, zip (path), sorted by eid
    records: list[QCRecord]  # phenotype-stage exclusions and warnings

    @property
    def eids(self) -> list[str]:
        return [str(e) for e in self.participants["eid"]]


def find_zips(zip_dir: str | Path, instance: int = 2) -> dict[int, Path]:
    """Map eid -> zip path for ``{eid}_20201_{instance}_0.zip`` files in a folder."""
    zip_dir = Path(zip_dir)
    if not zip_dir.is_dir():
        raise FileNotFoundError(f"zip folder {zip_dir} does not exist (config: cohort.zip_dir)")
    found: dict[int, Path] = {}
    with os.scandir(zip_dir) as entries:
        for entry in entries:
            match = _ZIP_NAME.match(entry.name)
            if match and int(match.group(2)) == instance and match.group(3) == "0":
                found[int(match.group(1))] = zip_dir / entry.name
    return found


def discover(
    phenotype_path, zip_dir, schema: dict, columns=phenotypes.UKBB_COLUMNS, instance: int = 2
) -> Cohort:
    """Validate the phenotype table and match it against the zips present."""
    table = phenotypes.read_table(phenotype_path, columns)
    valid, records = phenotypes.validate(table, schema, columns)
    zips = find_zips(zip_dir, instance)
    has_zip = valid["eid"].isin(zips.keys())
    for eid in valid.loc[~has_zip, "eid"]:
        records.append(
            QCRecord(
                str(eid),
                phenotypes.STAGE,
                EXCLUDED,
                [f"no zip {eid}_{FIELD_ID}_{instance}_0.zip in {zip_dir}"],
            )
        )
    known = set(table["eid"])
    for eid in sorted(set(zips) - set(valid["eid"])):
        if str(eid) not in known:
            records.append(
                QCRecord(
                    str(eid),
                    phenotypes.STAGE,
                    EXCLUDED,
                    [f"zip {zips[eid].name} has no row in the phenotype table {phenotype_path}"],
                )
            )
    participants = valid[has_zip].copy()
    participants["zip"] = [str(zips[e]) for e in participants["eid"]]
    return Cohort(participants.sort_values("eid").reset_index(drop=True), records)


# ---------------------------------------------------------------------------
# Groups and the balanced split

UNUSED = "unused"  # passed QC, but beyond the requested split counts
COLUMNS = ("eid", "age", "sex", "bmi", "bmi_group", "group", "age_band", "split")

_FRACTION_TOLERANCE = 1e-3  # fractions written with 4 decimals sum to 1 within 2e-4


def _bin(values, edges, labels, what: str) -> pd.Series:
    """Label values by half-open bins [-inf, e0), [e0, e1), ..., [e_last, inf)."""
    edges = [float(e) for e in edges]
    if len(edges) != len(labels) - 1 or any(b <= a for a, b in zip(edges, edges[1:])):
        raise ValueError(
            f"{what} edges {edges} must be {len(labels) - 1} strictly increasing numbers"
        )
    series = values if isinstance(values, pd.Series) else pd.Series(values)
    numbers = pd.to_numeric(series, errors="coerce").to_numpy(dtype=float)
    bad = ~np.isfinite(numbers)
    if bad.any():
        raise ValueError(
            f"{what}: {int(bad.sum())} value(s) are missing or not finite numbers, "
            f"e.g. {series[bad].iloc[0]}"
        )
    # digitize(right=False) puts a value equal to an edge into the upper bin: 25.0 is overweight.
    codes = np.digitize(numbers, edges, right=False)
    return pd.Series(np.asarray(labels, dtype=object)[codes], index=series.index, name=series.name)


def bmi_group(bmi, cutoffs=(25.0, 30.0)) -> pd.Series:
    """healthy < 25 <= overweight < 30 <= obese (the WHO cut-offs the paper uses)."""
    return _bin(bmi, cutoffs, BMI_GROUPS, "BMI")


def age_band(age, edges=(60.0, 70.0)) -> pd.Series:
    """lt60 < 60 <= 60to70 < 70 <= ge70 (the paper's age bands)."""
    return _bin(age, edges, AGE_BANDS, "age")


def _is_count(value) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


def split_sizes(n: int, sizes: dict) -> dict[str, int]:
    """Participants per split, from fractions summing to 1 or from integer counts.

    Integer counts (the paper: 1536/384/1200) are taken as they are and may sum
    to less than ``n``: `cohort_table` then leaves the rest out and says so.
    Fractions are rounded by largest remainder, so the counts sum to ``n``.
    A size may be 0. Integers summing to 1 (``{train: 0, val: 0, test: 1}``:
    a given model's whole cohort as test) are fractions, not one participant.
    """
    if set(sizes) != set(SPLITS):
        missing, unknown = sorted(set(SPLITS) - set(sizes)), sorted(set(sizes) - set(SPLITS))
        raise ValueError(
            f"split sizes need exactly the keys {list(SPLITS)}: "
            f"missing {missing}, unknown {unknown}"
        )
    values = {name: sizes[name] for name in SPLITS}
    for name, value in values.items():
        if (
            isinstance(value, bool)
            or not isinstance(value, (int, float, np.integer, np.floating))
            or not np.isfinite(value)
            or value < 0
        ):
            raise ValueError(f"split size {name}={value!r} is not a non-negative number")
    if all(_is_count(v) for v in values.values()) and sum(values.values()) != 1:
        counts = {name: int(v) for name, v in values.items()}
        if sum(counts.values()) > n:
            asked = " + ".join(f"{name} {c}" for name, c in counts.items())
            raise ValueError(
                f"split sizes ask for {sum(counts.values())} participants ({asked}) "
                f"but only {n} are available"
            )
        return counts
    total = float(sum(values.values()))
    if abs(total - 1.0) > _FRACTION_TOLERANCE:
        raise ValueError(
            f"split fractions {values} sum to {total:.4f}, not 1 "
            "(give fractions summing to 1 or integer counts)"
        )
    exact = np.array([values[name] / total * n for name in SPLITS])
    counts = np.floor(exact).astype(int)
    # Largest remainder: the leftover participants go where rounding cut most (ties: SPLITS order).
    for i in np.argsort(-(exact - counts), kind="stable")[: n - counts.sum()]:
        counts[i] += 1
    return dict(zip(SPLITS, (int(c) for c in counts)))


def _equal_shares(total: int, capacities: list[int]) -> list[int]:
    """Split ``total`` as evenly as capacities allow (water filling).

    Every group gets the same share; a group that has fewer takes all it has
    and the others share what it could not take. A remainder smaller than the
    number of open groups goes one each to the groups with most to spare
    (ties: group order), so no group ever gets two more than another one.
    """
    if total > sum(capacities):
        raise ValueError(f"cannot take {total} from groups holding {sum(capacities)}")
    shares = [0] * len(capacities)
    remaining = total
    while remaining:
        open_groups = [i for i, cap in enumerate(capacities) if shares[i] < cap]
        each = remaining // len(open_groups)
        if each == 0:
            by_spare = sorted(open_groups, key=lambda i: (shares[i] - capacities[i], i))
            for i in by_spare[:remaining]:
                shares[i] += 1
            break
        for i in open_groups:
            take = min(each, capacities[i] - shares[i])
            shares[i] += take
            remaining -= take
    return shares


def _rank_stratified(n: int, k: int, rng: np.random.Generator) -> np.ndarray:
    """Pick ``k`` of ``n`` ranks spread evenly: one at random in each of k equal-width strata.

    Applied to members sorted by age, the picks follow the group's age
    distribution quantile by quantile.
    """
    edges = np.floor(np.arange(k + 1) * n / k).astype(int) if k else np.zeros(1, int)
    lo, width = edges[:-1], np.diff(edges)  # width >= 1 because k <= n
    return lo + np.floor(rng.random(k) * width).astype(int)


def _pick(
    table: pd.DataFrame,
    pool: np.ndarray,
    split: str,
    total: int,
    rng: np.random.Generator,
    notes: list[str],
) -> np.ndarray:
    """Mark ``total`` rows of ``pool`` (boolean mask) as ``split``; returns the picked mask."""
    names = group_names()
    members = [np.flatnonzero(pool & (table["group"].to_numpy() == g)) for g in names]
    capacities = [len(m) for m in members]
    shares = _equal_shares(total, capacities)
    equal = total // len(names)
    if total < sum(capacities):  # a real selection, not "all the rest"
        for name, cap in zip(names, capacities):
            if cap < equal:
                notes.append(
                    f"{split}: group {name} has {cap} participants, fewer than its equal share "
                    f"of {equal}; took all {cap} and filled {equal - cap} from the other groups"
                )
        if len(set(shares)) > 1:
            notes.append(
                f"{split}: participants per group "
                + ", ".join(f"{name} {s}" for name, s in zip(names, shares))
            )
    picked = np.zeros(len(table), bool)
    for rows, k in zip(members, shares):
        # The table is sorted by eid, and a stable sort by age keeps eid order among equal ages.
        by_age = rows[np.argsort(table["age"].to_numpy()[rows], kind="stable")]
        picked[by_age[_rank_stratified(len(by_age), k, rng)]] = True
    return picked


def _check_participants(participants: pd.DataFrame) -> None:
    missing = [c for c in ("eid", "sex", "age", "bmi") if c not in participants.columns]
    if missing:
        raise ValueError(f"participants table lacks column(s) {missing}")
    duplicated = participants["eid"][participants["eid"].duplicated()]
    if len(duplicated):
        raise ValueError(
            f"participants table has duplicate eid(s) {sorted({int(e) for e in duplicated})[:5]}"
        )
    bad_sex = ~participants["sex"].isin(list(SEX_CODES))
    if bad_sex.any():
        raise ValueError(
            f"sex code {participants['sex'][bad_sex].iloc[0]} (eid "
            f"{participants['eid'][bad_sex].iloc[0]}) is not one of {list(SEX_CODES)}"
        )


def cohort_table(
    participants: pd.DataFrame,
    sizes: dict,
    seed: int,
    bmi_cutoffs=(25.0, 30.0),
    age_edges=(60.0, 70.0),
) -> pd.DataFrame:
    """Groups, age bands and a balanced train/val/test split, one row per participant.

    Algorithm (deterministic for a seed, whatever the input row order):
    1. Sort by eid; label sex (F/M), BMI group, sex x BMI group and age band.
    2. Test: the test size is shared equally over the six sex x BMI groups
       (size // 6 each; the remainder one each to the groups with most to
       spare). A group with too few gives all it has and the others fill in.
    3. Within each group, members are sorted by age, cut into as many strata
       of equal rank width as there are picks, and one is drawn at random per
       stratum: the split's ages follow the group's.
    4. Validation: the same from those left; training: the rest (or, with
       integer counts summing to less than the cohort, the same again, and
       whoever is left over stays in the table with split ``unused``, so
       nobody who passed QC disappears without a trace).
    Shortfalls and uneven shares are recorded as sentences in
    ``table.attrs["notes"]`` for the workflow to log.
    """
    _check_participants(participants)
    counts = split_sizes(len(participants), sizes)
    table = participants.sort_values("eid").reset_index(drop=True)
    table = pd.DataFrame(
        {
            "eid": table["eid"].astype("int64"),
            "age": table["age"].astype(float),
            "sex": table["sex"].map(SEX_CODES),
            "bmi": table["bmi"].astype(float),
        }
    )
    table["bmi_group"] = bmi_group(table["bmi"], bmi_cutoffs)
    table["group"] = table["sex"] + "_" + table["bmi_group"]
    table["age_band"] = age_band(table["age"], age_edges)

    rng = np.random.default_rng(seed)
    notes: list[str] = []
    split = np.full(len(table), None, dtype=object)
    for name in ("test", "val", "train"):  # test first: its balance is what the paper fixes
        picked = _pick(table, split == None, name, counts[name], rng, notes)  # noqa: E711 - elementwise
        split[picked] = name
    unused = split == None  # noqa: E711 - elementwise
    if unused.any():
        notes.append(
            f"{int(unused.sum())} of {len(table)} participants are in no split: the split sizes "
            f"({', '.join(f'{k} {v}' for k, v in counts.items())}) ask for {sum(counts.values())}"
        )
    split[unused] = UNUSED
    table["split"] = split
    table = table[list(COLUMNS)]
    table.attrs["notes"] = notes
    return table


def passed_participants(phenotype_path, schema: dict, columns, qc_table_path) -> pd.DataFrame:
    """Valid phenotype rows (eid, sex, age, bmi) of the participants that passed QC."""
    table = phenotypes.read_table(phenotype_path, columns)
    valid, _ = phenotypes.validate(table, schema, columns)
    qc = pd.read_csv(qc_table_path, sep="\t", dtype=str, keep_default_na=False)
    passed = set(qc.loc[qc["status"] != "excluded", "eid"].astype("int64"))
    return valid[valid["eid"].isin(passed)].reset_index(drop=True)


def read_participant_tsv(path) -> pd.DataFrame:
    """A per-participant table the workflow wrote (cohort, predictions), eids as text (they name
    files)."""
    return pd.read_csv(path, sep="\t", dtype={"eid": str})
