"""Who goes into an atlas or a figure: choices over the cohort table.

Kept free of torch and deepali because the workflow calls these while it
builds the DAG (workflow/rules/common.smk), and every Snakemake process,
including each cluster job's, parses the Snakefile: importing torch there
cost about 3 s per invocation.
"""

from __future__ import annotations

import numpy as np
import pandas as pd


def choose_reference(members: pd.DataFrame) -> int:
    """eid of the member nearest the group's median age and BMI.

    Distances are in units of the group's SD (1 where the SD is 0 or
    undefined); ties go to the smallest eid, so the choice is reproducible.
    """
    if members.empty:
        raise ValueError("cannot choose an atlas reference from an empty group")
    z = pd.DataFrame(index=members.index)
    for column in ("age", "bmi"):
        values = members[column].astype(float)
        sd = values.std(ddof=1)
        z[column] = (values - values.median()) / (sd if np.isfinite(sd) and sd > 0 else 1.0)
    distance = np.hypot(z["age"], z["bmi"])
    order = pd.DataFrame({"d": distance.round(9), "eid": members["eid"].astype(int)})
    return int(order.sort_values(["d", "eid"]).iloc[0]["eid"])


def choose_members(group_table: pd.DataFrame, n: int) -> list[int]:
    """Up to ``n`` participants spread evenly over the group's age range.

    ``n <= 0`` or ``n >= len(group)`` takes everyone. Sorting by (age, eid)
    and taking evenly spaced ranks keeps the young and the old in the atlas.
    """
    ordered = group_table.sort_values(["age", "eid"])["eid"].astype(int).to_numpy()
    if n <= 0 or n >= len(ordered):
        return sorted(ordered.tolist())
    ranks = np.unique(np.round(np.linspace(0, len(ordered) - 1, n)).astype(int))
    return sorted(ordered[ranks].tolist())
