"""Packages: every ``subcell_screen*`` package, plus the repository's top-level ``plate_layouts/`` folder
shipped inside the package as ``subcell_screen.plate_layouts`` (the folder stays where the repository needs it;
package data globs are in pyproject.toml)."""

from setuptools import find_packages, setup

setup(
    packages=[*find_packages(include=["subcell_screen", "subcell_screen.*"]),
              "subcell_screen.plate_layouts", "subcell_screen.plate_layouts.jump"],
    package_dir={"subcell_screen.plate_layouts": "plate_layouts"},
)
