"""Tests for ageatlas.explain.attribution_cost: sizing the gradcam rule by method."""

import pytest

from ageatlas.explain.attribution_cost import relative_cost, relative_memory

FULL_INPUT = (224, 174, 370)


def section(method, steps=32, block=4):
    return {"method": method, "steps": steps, "block": block}


def test_layer_methods_are_the_unit():
    for method in ("gradcam", "gradcam_signed", "hirescam"):
        assert relative_cost(section(method), FULL_INPUT) == 1.0


def test_integrated_gradients_cost_a_forward_pass_and_a_layer_map_per_step():
    # 32 steps: about 28 HiResCAM maps, as measured at the full grid (3,083 s against 110.5 s).
    assert relative_cost(section("integrated_gradients"), FULL_INPUT) == pytest.approx(27.9, 0.01)
    assert relative_cost(section("integrated_gradients", steps=64), FULL_INPUT) > 55


def test_shifted_integrated_gradients_cost_their_steps_for_every_shift():
    shifted = dict(section("integrated_gradients", steps=4), shifts=2)  # 8 shifts x 4 steps
    assert relative_cost(shifted, FULL_INPUT) == pytest.approx(
        relative_cost(section("integrated_gradients"), FULL_INPUT)
    )


def test_occlusion_costs_a_forward_pass_per_block():
    full = relative_cost(section("occlusion"), FULL_INPUT)
    assert full == pytest.approx(56 * 43 * 92 * 51.3 / 4 / 110.5, rel=1e-6)
    assert relative_cost(section("occlusion", block=8), FULL_INPUT) < full / 7


def test_memory_is_the_measured_peak_against_the_layer_methods():
    assert relative_memory(section("hirescam")) == 1.0
    assert relative_memory(section("integrated_gradients")) == pytest.approx(1.124, abs=0.001)
    assert relative_memory(section("occlusion")) == pytest.approx(1.536, abs=0.001)
