"""What one attribution map costs relative to a layer method's, in time and memory, to size the
gradcam rule's jobs.

The rule's per-participant minutes (workflow/resources/batch_requests.yaml) are
measured for the layer methods (Grad-CAM, HiResCAM: one forward and one
backward pass). Integrated gradients run one forward pass of the volume and
its reference, then a forward and backward pass per step (per step and shift
with ``shifts``); occlusion one
forward pass per block. Figures at the full UK Biobank grid on 2 CPU cores
(docs/measurements.md, "Attribution time at the full grid"); a GPU is
assumed to keep the same ratios. Plain arithmetic, no torch: the workflow
reads it when it builds the DAG.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

LAYER_SECONDS = 110.5  # HiResCAM at layer2, one participant (explain_methods_cpu.json)
IG_FORWARD_SECONDS = 84.6  # the volume and its reference, once (explain_ig_cpu.json)
IG_STEP_SECONDS = 93.7  # a forward and a backward pass to the input, per step
OCCLUSION_SECONDS_PER_BLOCK = 51.3 / 4  # forward passes of 4 perturbed volumes at once
# Peak memory of one process at the full grid, MiB: the rule's request is sized on
# Grad-CAM's (explain.json); integrated gradients hold one path volume's activations
# a pass besides (explain_ig_cpu.json), occlusion 4 perturbed volumes
# (explain_methods_cpu.json).
LAYER_PEAK_MIB = 12697.6
PEAK_MIB = {"integrated_gradients": 14269.2, "occlusion": 19499.8}


def relative_cost(section: Mapping, input_shape: Sequence[int]) -> float:
    """A map of ``section["method"]`` (the config's gradcam section) in units of a layer
    method's map, on a model input of ``input_shape`` voxels (occlusion's blocks)."""
    method = section["method"]
    if method == "integrated_gradients":
        steps = section["steps"] * section.get("shifts", 1) ** len(input_shape)
        return (IG_FORWARD_SECONDS + IG_STEP_SECONDS * steps) / LAYER_SECONDS
    if method == "occlusion":
        blocks = math.prod(max(1, n // section["block"]) for n in input_shape)
        return blocks * OCCLUSION_SECONDS_PER_BLOCK / LAYER_SECONDS
    return 1.0


def relative_memory(section: Mapping) -> float:
    """A process's peak memory for ``section["method"]`` in units of a layer method's."""
    return PEAK_MIB.get(section["method"], LAYER_PEAK_MIB) / LAYER_PEAK_MIB
