"""Packaging beyond what pyproject.toml can say: the top-level ``recipes/`` folder ships
inside the package as ``rvgen.recipes`` (recipes and style images as package data), so
``rvgen run monet`` works after a plain ``pip install``, while the repository keeps
``recipes/`` where README and CI expect it. Everything else is in pyproject.toml."""

from setuptools import find_packages, setup

setup(
    packages=find_packages(include=["rvgen", "rvgen.*"]) + ["rvgen.recipes"],
    package_dir={"rvgen.recipes": "recipes"},
    package_data={"rvgen.recipes": ["*.toml", "styles/*.jpg", "styles/*.png", "styles/README.md"]},
)
