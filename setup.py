"""The package list for setuptools (the rest is in pyproject.toml).

The bundled weights and cards live in the top-level ``assets/`` folder of the checkout; a wheel ships them as
``gradviz/_assets`` (the package-dir mapping below). :func:`gradviz.config.asset_path` finds them in both places.
"""

from setuptools import find_packages, setup

setup(
    packages=find_packages(include=["gradviz", "gradviz.*"]) + ["gradviz._assets"],
    package_dir={"gradviz._assets": "assets"},
)
