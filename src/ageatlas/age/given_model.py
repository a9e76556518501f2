"""A trained model given in the config: the checks made when the DAG is built.

``model.checkpoint`` names a checkpoint.pt trained elsewhere (another run of
this workflow), ``bias.coefficients`` optionally its bias_correction.json.
Then nothing is trained: the run predicts, corrects, explains and maps its
cohort with that model, and the split may leave train and val empty.

`problems` says, before any job runs, what such a config cannot do (a
missing file, an empty split that a stage needs) in sentences that name the
file or the config key. This module is imported by common.smk, in every
Snakemake process: it reads paths and small JSON files only, never torch or
statsmodels. What a checkpoint holds is checked by the job that installs it
(``ageatlas.age.model.load_trained``).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path

from ageatlas.core.vocabulary import REFERENCE_METHODS, group_names

CHECKPOINT_SUFFIXES = (".pt", ".pth")
COEFFICIENT_METHODS = ("delta", "cole")  # ageatlas.age.bias.METHODS (statsmodels left unloaded)
# gradcam.reference: each participant's group atlas in their own body (needs their registration)
GROUP_ATLAS = "group_atlas"


def given_checkpoint(config: Mapping) -> str | None:
    return config["model"].get("checkpoint")


def given_coefficients(config: Mapping) -> str | None:
    return config["bias"].get("coefficients")


def baseline_enabled(config: Mapping) -> bool:
    """Whether the 2.5D baseline runs: baseline.enabled, or (null) unless a model is given."""
    enabled = config["baseline"].get("enabled")
    return given_checkpoint(config) is None if enabled is None else bool(enabled)


def _file_problem(path: str, key: str, suffixes: tuple[str, ...], what: str) -> str | None:
    if not os.path.exists(path):
        return f"{key}: {path} does not exist ({what})"
    if not os.path.isfile(path):
        return f"{key}: {path} is not a file ({what})"
    if not path.lower().endswith(suffixes):
        return f"{key}: {path} is not a {' or '.join(suffixes)} file ({what})"
    return None


def checkpoint_problem(path: str, installed: str) -> str | None:
    """What is wrong with model.checkpoint ``path``, or None; ``installed`` is where the run
    copies it (age/model/checkpoint.pt), which it cannot also be."""
    what = "a checkpoint.pt written by train_age_model"
    problem = _file_problem(path, "model.checkpoint", CHECKPOINT_SUFFIXES, what)
    if problem:
        return problem
    if os.path.realpath(path) == os.path.realpath(installed):
        return (
            f"model.checkpoint: {path} is this run's own model file, where a given checkpoint is "
            "copied to: give the other run's path, or null to train here"
        )
    return None


def coefficients_problem(path: str) -> str | None:
    """What is wrong with bias.coefficients ``path`` (read: it is a few hundred bytes), or None."""
    what = "a bias_correction.json written by correct_bias"
    problem = _file_problem(path, "bias.coefficients", (".json",), what)
    if problem:
        return problem
    try:
        fields = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        return f"bias.coefficients: {path} is not readable JSON ({what}): {error}"
    if not isinstance(fields, dict):
        return f"bias.coefficients: {path} holds no JSON object ({what})"
    if fields.get("method") not in COEFFICIENT_METHODS:
        return (
            f"bias.coefficients: {path} has method {fields.get('method')!r}, not one of "
            f"{list(COEFFICIENT_METHODS)} ({what})"
        )
    bad = [
        key
        for key in ("slope", "intercept")
        if isinstance(fields.get(key), bool) or not isinstance(fields.get(key), (int, float))
    ]
    if bad:
        return f"bias.coefficients: {path} lacks a number for {' and '.join(bad)} ({what})"
    return None


def _empty(config: Mapping, split: str) -> bool:
    return config["split"]["sizes"][split] == 0


def _sizes(config: Mapping) -> str:
    sizes = config["split"]["sizes"]
    return ", ".join(f"{name} {sizes[name]}" for name in ("train", "val", "test"))


def problems(config: Mapping, installed_checkpoint: str) -> list[str]:
    """Every reason the validated config cannot run, as sentences naming the file or key."""
    out = []
    checkpoint, coefficients = given_checkpoint(config), given_coefficients(config)
    if checkpoint is not None:
        out.append(checkpoint_problem(checkpoint, installed_checkpoint))
    if coefficients is not None:
        out.append(coefficients_problem(coefficients))
    sizes = _sizes(config)
    no_train, no_val = _empty(config, "train"), _empty(config, "val")
    if checkpoint is None and (no_train or no_val):
        out.append(
            f"train_age_model trains on the train split and keeps the epoch best on the val split, "
            f"but split.sizes is {sizes}: give both a size, or a trained model in model.checkpoint"
        )
    if coefficients is None and no_val:
        out.append(
            f"correct_bias fits the age-bias correction on the val split, but split.sizes is "
            f"{sizes}: give bias.coefficients (the bias_correction.json of the run that trained "
            "the model) or a val size"
        )
    if baseline_enabled(config) and (no_train or no_val):
        out.append(
            f"the 2.5D baseline trains on the train and val splits, but split.sizes is {sizes}: "
            "set baseline.enabled: false"
        )
    gradcam = config["gradcam"]
    reference = gradcam.get("reference")
    if reference is not None:
        if reference != GROUP_ATLAS:
            what = f"a reference volume, or {GROUP_ATLAS}"
            out.append(_file_problem(reference, "gradcam.reference", (".npy",), what))
    elif gradcam["method"] in REFERENCE_METHODS and no_train:
        out.append(
            f"gradcam.method {gradcam['method']} attributes against the mean of the train split's "
            f"inputs, but split.sizes is {sizes}: give gradcam.reference (e.g. "
            f"explain/reference_volume.npy of the run that trained the model, or {GROUP_ATLAS}) "
            "or a train size"
        )
    if gradcam["method"] not in REFERENCE_METHODS and gradcam["target"] == "deviation" and no_train:
        out.append(
            f"gradcam.target deviation needs the training mean age (the train split's), but "
            f"split.sizes is {sizes}: use target age or a train size"
        )
    if gradcam.get("shifts", 1) != 1 and gradcam["method"] != "integrated_gradients":
        out.append(
            f"gradcam.shifts {gradcam['shifts']} averages integrated_gradients over shifts of the "
            f"input, not gradcam.method {gradcam['method']}: set shifts 1 or method "
            "integrated_gradients"
        )
    atlas = config["atlas"]
    splits = atlas["splits"]
    built = set(group_names()) - set(atlas["given"])
    if built and "unused" not in splits and all(_empty(config, s) for s in splits):
        out.append(
            f"atlas.splits {list(splits)} hold nobody with split.sizes {sizes}: build the "
            "atlases from the test split (atlas.splits: [test]) or give them all in atlas.given"
        )
    return [problem for problem in out if problem]
