"""rvgen: image reconstruction, texture synthesis and style transfer with random-weight networks."""

from typing import TYPE_CHECKING

from rvgen.hookspecs import hookimpl  # the one import a plugin needs

__version__ = "0.1.0"

__all__ = ["Failure", "Output", "Pipeline", "__version__", "hookimpl", "load_recipe", "stylize"]

if TYPE_CHECKING:  # what an IDE follows; at run time they are imported on first use (they pull in torch)
    from rvgen.pipeline import Failure, Output, Pipeline, stylize
    from rvgen.recipe import load_recipe

_LAZY = {"Failure": "rvgen.pipeline", "Output": "rvgen.pipeline", "Pipeline": "rvgen.pipeline",
         "stylize": "rvgen.pipeline", "load_recipe": "rvgen.recipe"}


def __getattr__(name: str):
    """``rvgen.stylize``, ``rvgen.Pipeline`` and the rest of :data:`__all__`, imported on first use."""
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'rvgen' has no attribute {name!r}")
