"""A trained model given in the config: the checks made when the DAG is built."""

import copy

import numpy as np
import pytest

from ageatlas.age import bias, given_model

CONFIG = {
    "model": {"checkpoint": None},
    "bias": {"coefficients": None},
    "baseline": {"enabled": None},
    "split": {"sizes": {"train": 0.5, "val": 0.25, "test": 0.25}},
    "gradcam": {"method": "hirescam", "target": "age", "reference": None},
    "atlas": {"splits": ["train", "val"], "given": {}},
}
INSTALLED = "results/age/model/checkpoint.pt"


def config(**changes):
    """CONFIG with ``section={key: value}`` changes."""
    out = copy.deepcopy(CONFIG)
    for section, values in changes.items():
        out[section].update(values)
    return out


@pytest.fixture
def given(tmp_path):
    """A checkpoint file (content is the job's to check) and a bias_correction.json."""
    checkpoint = tmp_path / "checkpoint.pt"
    checkpoint.write_bytes(b"weights")
    coefficients = tmp_path / "bias_correction.json"
    bias.BiasCorrection("delta", -0.4, 22.0, 50, 0.8).to_json(coefficients)
    return str(checkpoint), str(coefficients)


def given_whole_cohort(checkpoint, coefficients=None, **changes):
    """A given model on a cohort that is all test."""
    base = {
        "model": {"checkpoint": checkpoint},
        "bias": {"coefficients": coefficients},
        "split": {"sizes": {"train": 0, "val": 0, "test": 1}},
        "atlas": {"splits": ["test"]},
    }
    for section, values in changes.items():
        base[section] = base.get(section, {}) | values
    return config(**base)


def test_training_here_with_all_splits_is_fine():
    assert given_model.problems(config(), INSTALLED) == []
    assert given_model.baseline_enabled(config())


def test_a_given_model_on_a_test_only_cohort_is_fine(given):
    checkpoint, coefficients = given
    assert given_model.problems(given_whole_cohort(checkpoint, coefficients), INSTALLED) == []
    # The baseline is off by default with a given model, on when asked.
    assert not given_model.baseline_enabled(given_whole_cohort(checkpoint))
    assert given_model.baseline_enabled(
        config(model={"checkpoint": checkpoint}, baseline={"enabled": True})
    )


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda d: d / "absent.pt", "absent.pt does not exist"),
        (lambda d: d, "is not a file"),
        (lambda d: d / "weights.npz", "is not a .pt or .pth file"),
    ],
)
def test_an_unusable_checkpoint_path_is_named(tmp_path, make, message):
    path = make(tmp_path)
    if path.suffix == ".npz":
        path.write_bytes(b"x")
    problems = given_model.problems(config(model={"checkpoint": str(path)}), INSTALLED)
    assert len(problems) == 1 and problems[0].startswith("model.checkpoint: ")
    assert str(path) in problems[0] and message in problems[0]


def test_the_runs_own_model_file_cannot_be_given(tmp_path):
    own = tmp_path / "age" / "model" / "checkpoint.pt"
    own.parent.mkdir(parents=True)
    own.write_bytes(b"x")
    problems = given_model.problems(config(model={"checkpoint": str(own)}), str(own))
    assert len(problems) == 1 and "this run's own model file" in problems[0]


@pytest.mark.parametrize(
    "content, message",
    [
        ("{not json", "is not readable JSON"),
        ("[1, 2]", "holds no JSON object"),
        ('{"method": "linear", "slope": 1, "intercept": 0}', "has method 'linear'"),
        ('{"method": "delta", "slope": "steep", "intercept": 0}', "lacks a number for slope"),
    ],
)
def test_unusable_coefficients_are_named(tmp_path, given, content, message):
    path = tmp_path / "coefficients.json"
    path.write_text(content)
    problems = given_model.problems(
        given_whole_cohort(given[0], str(path)),
        INSTALLED,
    )
    assert len(problems) == 1 and problems[0].startswith("bias.coefficients: ")
    assert str(path) in problems[0] and message in problems[0]


def test_coefficient_methods_are_the_bias_modules():
    assert given_model.COEFFICIENT_METHODS == bias.METHODS


def test_training_here_needs_train_and_val():
    problems = given_model.problems(
        config(split={"sizes": {"train": 0, "val": 0.5, "test": 0.5}}), INSTALLED
    )
    assert any("train_age_model" in p and "model.checkpoint" in p for p in problems)


def test_without_coefficients_bias_correction_needs_val(given):
    problems = given_model.problems(given_whole_cohort(given[0]), INSTALLED)
    assert len(problems) == 1
    assert "correct_bias" in problems[0] and "bias.coefficients" in problems[0]
    # A val split instead of coefficients: fitted here, as usual.
    with_val = given_whole_cohort(given[0], split={"sizes": {"train": 0, "val": 0.2, "test": 0.8}})
    assert given_model.problems(with_val, INSTALLED) == []


def test_the_baseline_asked_for_without_training_splits(given):
    problems = given_model.problems(
        given_whole_cohort(*given, baseline={"enabled": True}), INSTALLED
    )
    assert len(problems) == 1 and "baseline.enabled: false" in problems[0]


@pytest.mark.parametrize("method", ["integrated_gradients", "occlusion"])
def test_reference_methods_need_a_train_split_or_a_given_reference(tmp_path, given, method):
    problems = given_model.problems(
        given_whole_cohort(*given, gradcam={"method": method}), INSTALLED
    )
    assert len(problems) == 1 and "gradcam.reference" in problems[0] and method in problems[0]
    reference = tmp_path / "reference_volume.npy"
    np.save(reference, np.zeros((2, 2, 2), np.float32))
    given_reference = given_whole_cohort(
        *given, gradcam={"method": method, "reference": str(reference)}
    )
    assert given_model.problems(given_reference, INSTALLED) == []
    missing = given_whole_cohort(
        *given, gradcam={"method": method, "reference": str(tmp_path / "no.npy")}
    )
    assert "gradcam.reference: " in given_model.problems(missing, INSTALLED)[0]
    # Each participant's group atlas needs no train split.
    atlas = given_whole_cohort(*given, gradcam={"method": method, "reference": "group_atlas"})
    assert given_model.problems(atlas, INSTALLED) == []


def test_the_deviation_target_needs_the_training_mean_age(given):
    problems = given_model.problems(
        given_whole_cohort(*given, gradcam={"target": "deviation"}), INSTALLED
    )
    assert len(problems) == 1 and "gradcam.target deviation" in problems[0]


def test_atlases_need_members(given):
    default_splits = given_whole_cohort(*given, atlas={"splits": ["train", "val"]})
    problems = given_model.problems(default_splits, INSTALLED)
    assert len(problems) == 1 and "atlas.splits: [test]" in problems[0]
    groups = ["F_healthy", "F_overweight", "F_obese", "M_healthy", "M_overweight", "M_obese"]
    all_given = given_whole_cohort(
        *given, atlas={"splits": ["train"], "given": {g: f"{g}.nii.gz" for g in groups}}
    )
    assert given_model.problems(all_given, INSTALLED) == []


def test_shifts_are_refused_for_a_method_they_do_not_average():
    """The workflow's layer methods would draw one map and ignore the setting."""
    problems = given_model.problems(config(gradcam={"method": "hirescam", "shifts": 2}), INSTALLED)
    assert len(problems) == 1 and "gradcam.shifts 2" in problems[0] and "hirescam" in problems[0]
    shifted = config(gradcam={"method": "integrated_gradients", "shifts": 2})
    assert given_model.problems(shifted, INSTALLED) == []
