"""CAM methods; importing this package registers them all."""

from . import activation, gradient

__all__ = ["activation", "gradient"]
