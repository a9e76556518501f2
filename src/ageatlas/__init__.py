"""ageatlas: whole-body MRI age prediction and population importance maps.

Implements Starck et al. (3D ResNet-18 age regression on UK Biobank
neck-to-knee Dixon MRI, Grad-CAM, sex x BMI atlases) as an installable
package driven by a Snakemake workflow.
"""

__version__ = "0.1.0"
