"""CAM methods; importing this package registers them all (in this order)."""

# attention (SA-CAM) refines the methods above; registration order is import order
from . import activation, gradient, smoothgrad  # isort: skip
from . import scorecam, ablation, groupcam  # isort: skip
from . import decomposition, baseline  # isort: skip
from . import fem, kpca, shapley, finer, guided, fullgrad, recipro  # isort: skip
from . import refine, sess, segeigen, legrad  # isort: skip
from . import opti, poly, lift, fd  # isort: skip
from . import attention  # isort: skip

__all__ = [
    "ablation",
    "activation",
    "attention",
    "baseline",
    "decomposition",
    "fd",
    "fem",
    "finer",
    "fullgrad",
    "gradient",
    "groupcam",
    "guided",
    "kpca",
    "legrad",
    "lift",
    "opti",
    "poly",
    "recipro",
    "refine",
    "scorecam",
    "segeigen",
    "sess",
    "shapley",
    "smoothgrad",
]
