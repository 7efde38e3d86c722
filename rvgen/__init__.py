"""rvgen: image reconstruction, texture synthesis and style transfer with random-weight networks."""

__version__ = "0.1.0"

from rvgen.hookspecs import hookimpl  # noqa: E402  (the one import a plugin needs)

__all__ = ["Pipeline", "__version__", "hookimpl", "load_recipe"]


def __getattr__(name: str):
    """``rvgen.Pipeline`` and ``rvgen.load_recipe``, imported on first use (they pull in torch)."""
    if name == "Pipeline":
        from rvgen.pipeline import Pipeline

        return Pipeline
    if name == "load_recipe":
        from rvgen.recipe import load_recipe

        return load_recipe
    raise AttributeError(f"module 'rvgen' has no attribute {name!r}")
