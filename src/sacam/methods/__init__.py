"""CAM methods; importing this package registers them all (in this order)."""

from . import activation, gradient, perturbation
from . import attention  # last: SA-CAM refines the methods above

__all__ = ["activation", "attention", "gradient", "perturbation"]
