"""Sphinx configuration: Markdown pages (MyST) and an API reference from the NumPy-style docstrings.

Build: ``python -m sphinx -W -b html docs docs/_build/html`` (tests/test_docs.py does this with
``-W``, so any warning fails the suite).
"""

import os
import sys

# Document the checkout this file sits in, not whatever copy is installed.
sys.path.insert(0, os.path.abspath(os.path.join(os.path.dirname(__file__), "..")))

import dask_lance_index  # noqa: E402

project = "dask_lance_index"
author = "dask_lance_index developers"
release = version = dask_lance_index.__version__

extensions = [
    "myst_parser",
    "sphinx.ext.autodoc",
    "sphinx.ext.napoleon",
    "sphinx.ext.viewcode",
]
source_suffix = {".rst": "restructuredtext", ".md": "markdown"}
root_doc = "index"
exclude_patterns = ["_build"]

# NumPy-style docstrings.
napoleon_google_docstring = False
napoleon_numpy_docstring = True
napoleon_use_rtype = False
autodoc_member_order = "bysource"
autodoc_typehints = "description"
autodoc_default_options = {"members": True, "show-inheritance": False}

myst_heading_anchors = 3
myst_enable_extensions = ["colon_fence"]

html_theme = "alabaster"
html_title = "dask_lance_index"
html_theme_options = {"page_width": "1100px", "sidebar_width": "250px"}
