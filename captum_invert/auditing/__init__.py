"""``captum-invert audit``: one report of a classifier, per class and as a whole: the fooling
inputs it accepts, the prototypes it draws, how far both are from real data, a distribution
target, certified regions of piecewise-linear nets and, optionally, hardening. The figures come
from :mod:`.collect` (the library's own methods); :mod:`.render` writes the page."""
from .collect import AuditReport, audit, model_sha256

__all__ = ["audit", "AuditReport", "model_sha256"]
