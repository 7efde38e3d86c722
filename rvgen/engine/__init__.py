"""The optimisation core: objectives over named features, and the optimisers. No file I/O."""

from rvgen.engine.objective import Objective, Term
from rvgen.engine.optimize import OptimizerConfig, Progress, Result, optimize

__all__ = ["Objective", "OptimizerConfig", "Progress", "Result", "Term", "optimize"]
