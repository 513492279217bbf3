"""The two thresholds of SAT3D, defined once; every default in the package refers to these.

Weights files carry their own values (:mod:`sat3d.weights`), which the bundle configs read; these are only the
defaults for code that is given none.
"""

#: T: critic confidence below this marks a voxel as uncertain; the confidence fed back is ``confidence >= T``
#: (paper: 0.3)
CONFIDENCE_THRESHOLD = 0.3
#: mask probability above which a voxel is tumour
MASK_THRESHOLD = 0.5
