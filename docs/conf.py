"""Sphinx configuration of captum-invert (built with warnings as errors by `make docs`)."""
import os
import sys

sys.path.insert(0, os.path.abspath(".."))

project = "captum-invert"
author = "captum-invert developers"
from captum_invert import __version__ as release  # noqa: E402

version = release
extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.napoleon",
    "sphinx.ext.mathjax",
    "sphinx.ext.viewcode",
    "sphinx.ext.autosummary",
]
autodoc_member_order = "bysource"
autodoc_typehints = "none"
autodoc_default_options = {"members": True, "show-inheritance": True}
napoleon_google_docstring = True
napoleon_numpy_docstring = False
napoleon_use_rtype = False
exclude_patterns = ["_build", "**/*.md.txt"]
html_theme = "furo"
html_title = f"captum-invert {release}"
html_static_path = []
nitpicky = False
suppress_warnings = ["autosummary"]
