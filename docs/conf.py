"""Sphinx configuration for the flask-afterward docs.

Building the docs is not part of CI and adds nothing to the package's dependencies:
``pip install sphinx pallets-sphinx-themes myst-parser`` then
``sphinx-build -b html docs docs/_build/html``. Without pallets-sphinx-themes the
docs build with alabaster; without myst-parser the Markdown pages are left out.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util


def _has(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


project = "flask-afterward"
copyright = "flask-afterward contributors"
author = "flask-afterward contributors"
release = importlib.metadata.version("flask-afterward")
version = ".".join(release.split(".")[:2])

extensions = ["sphinx.ext.autodoc", "sphinx.ext.intersphinx"]
autodoc_member_order = "bysource"
autodoc_typehints = "description"
autodoc_typehints_description_target = "documented_params"
autodoc_preserve_defaults = True
intersphinx_mapping = {
    "python": ("https://docs.python.org/3/", None),
    "flask": ("https://flask.palletsprojects.com/", None),
    "werkzeug": ("https://werkzeug.palletsprojects.com/", None),
}

source_suffix = {".rst": "restructuredtext"}
if _has("myst_parser"):
    extensions.append("myst_parser")
    source_suffix[".md"] = "markdown"
    myst_heading_anchors = 3

exclude_patterns = ["_build"]

if _has("pallets_sphinx_themes"):
    extensions.append("pallets_sphinx_themes")
    html_theme = "flask"
    html_context = {"project_links": []}
else:
    html_theme = "alabaster"
html_title = f"flask-afterward ({version})"
html_show_sourcelink = False
