"""The evaluation runner behind ``sacam benchmark``, split by job.

- :mod:`.data`: the folder layouts, validated, and threaded decoding;
- :mod:`.execution`: the loop over methods and batches, scoring with the metric registry;
- :mod:`.store`: crash-safe results files and the folder lock; :mod:`.maps`: saved maps;
- :mod:`.summary`, :mod:`.figures`, :mod:`.report`: what a run reports.
- :mod:`.tasks` (with :mod:`.task_data`, :mod:`.task_scoring`, :mod:`.task_store`,
  :mod:`.task_report`): detection and segmentation runs, one map per annotated object.
"""

from .execution import run_benchmark, select_metrics
from .summary import render_markdown

__all__ = ["render_markdown", "run_benchmark", "select_metrics"]
