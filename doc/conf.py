"""Sphinx configuration of katclient's manual.

Build: ``sphinx-build -W -b html doc doc/_build/html`` (``tox -e docs``).  Needs only Sphinx: the
theme is Sphinx's built-in ``alabaster``, and the state diagram is drawn by ``_ext/katclient_docs.py``
with plain Python (no Graphviz).
"""

from __future__ import annotations

import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
# The package from this checkout (autodoc imports it), and the local extension.
sys.path.insert(0, os.path.dirname(HERE))
sys.path.insert(0, os.path.join(HERE, "_ext"))

import katclient  # noqa: E402

project = "katclient"
author = "the katclient authors"
copyright = "the katclient authors"
version = release = katclient.__version__

extensions = [
    "sphinx.ext.autodoc",
    "katclient_docs",
]

exclude_patterns = ["_build"]
root_doc = "index"
default_role = "literal"
pygments_style = "sphinx"

# -- autodoc -------------------------------------------------------------------------------------
# Each object is documented once, at its home module (the api-module directive of
# _ext/katclient_docs.py adds the list of re-exported names per package).
autodoc_member_order = "bysource"
autodoc_typehints = "signature"
autodoc_class_signature = "mixed"
autodoc_inherit_docstrings = True
autodoc_preserve_defaults = False
autoclass_content = "class"

# -- HTML ----------------------------------------------------------------------------------------
html_theme = "alabaster"
html_title = f"katclient {release}"
html_theme_options = {
    "description": "A Tornado-based KATCP inspecting client suite",
    "fixed_sidebar": True,
    "page_width": "1100px",
    "sidebar_width": "240px",
}
html_sidebars = {"**": ["about.html", "navigation.html", "relations.html", "searchbox.html"]}
