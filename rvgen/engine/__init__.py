"""The optimisation core: objectives over named features, and the optimisers. No file I/O.

A leaf: it is handed a task, a backbone, terms, losses and settings, and imports nothing
from the layers above it (recipes, plugins, batches, the CLI); see docs/architecture.md.
"""

from rvgen.engine.fallback import iter_with_fallback, run_with_fallback
from rvgen.engine.objective import Objective, Term
from rvgen.engine.optimize import OptimizerConfig, Progress, Result, optimize, optimize_batch
from rvgen.engine.precision import ExecutionConfig
from rvgen.engine.pyramid import PyramidConfig
from rvgen.engine.synth import Synthesizer

__all__ = [
    "ExecutionConfig", "Objective", "OptimizerConfig", "Progress", "PyramidConfig", "Result", "Synthesizer",
    "Term", "iter_with_fallback", "optimize", "optimize_batch", "run_with_fallback",
]
