"""The app seam: what a computation offered by the gateway declares (:class:`App`) and the types it plans with.

To add an app, subclass :class:`App` in a package of your own and declare it
under the entry-point group ``science_gateway.apps`` (``docs/apps.md``).
"""

from .base import App, Inputs, Limits, Output, OutputTooLarge, Plan, PlanContext, PlanRefused, Selection, Source
from .layout import shards_for, within_limits

__all__ = [
    "App", "Inputs", "Limits", "Output", "OutputTooLarge", "Plan", "PlanContext", "PlanRefused", "Selection", "Source",
    "shards_for", "within_limits",
]  # fmt: skip
