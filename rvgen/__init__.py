"""rvgen: image reconstruction, texture synthesis and style transfer with random-weight networks."""

__version__ = "0.1.0"

from rvgen.hookspecs import hookimpl  # noqa: E402  (the one import a plugin needs)

__all__ = ["__version__", "hookimpl"]
