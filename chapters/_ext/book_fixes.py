"""Small Sphinx fixes for the book (loaded through _config.yml `local_extensions`).

* sphinx-thebe registers its inline configuration script twice under
  Jupyter Book 1.x, and the second copy throws "Identifier 'THEBE_JS_URL' has
  already been declared" in the browser. Drop duplicate script entries.
"""

from __future__ import annotations


def _dedupe_scripts(app, pagename, templatename, context, doctree):
    scripts = context.get("script_files")
    if not scripts:
        return
    seen, unique = set(), []
    for js in scripts:
        # the same inline script is registered once with filename None and once with ""
        key = (getattr(js, "filename", str(js)) or "", tuple(sorted(getattr(js, "attributes", {}).items())))
        if key not in seen:
            seen.add(key)
            unique.append(js)
    scripts[:] = unique  # in place: later handlers (MathJax) append to this same list


def setup(app):
    # early: html-page-context stops at the first handler that returns a template name
    app.connect("html-page-context", _dedupe_scripts, priority=100)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
