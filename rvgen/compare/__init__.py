"""``rvgen compare``: one task over the same inputs with several backbones, seeds and layers.

A *column* is one (backbone spec, seed, layer) setting, turned into its own validated
recipe (:mod:`~rvgen.compare.plan`); every input goes through every column on the batch
engine's workers (:mod:`~rvgen.compare.execute`). Results are scored by the task's own metrics,
summarised per column (mean, spread, and the paired difference from the first backbone at
the same layer over the same inputs; :mod:`~rvgen.compare.results`), and written as a
contact sheet and tables (:mod:`~rvgen.compare.outputs`) and a page (``index.html``,
:mod:`~rvgen.compare.page`).
"""

from rvgen.compare.page import write_page
from rvgen.compare.plan import Column, input_names, parse_backbone_spec, plan_columns, split_list
from rvgen.compare.outputs import describe, layer_table, result_path, summary_table, write_outputs
from rvgen.compare.results import Comparison, Scored, spread
from rvgen.compare.execute import run_comparison

__all__ = [
    "Column", "Comparison", "Scored", "describe", "input_names", "layer_table", "parse_backbone_spec", "plan_columns",
    "result_path", "run_comparison", "split_list", "spread", "summary_table", "write_outputs",
    "write_page",
]
