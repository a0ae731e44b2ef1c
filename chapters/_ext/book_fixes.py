"""Small Sphinx fixes for the book (loaded through _config.yml `local_extensions`).

* sphinx-thebe registers its inline configuration script twice under
  Jupyter Book 1.x, and the second copy throws "Identifier 'THEBE_JS_URL' has
  already been declared" in the browser. Drop duplicate script entries.
* PDF edition (LaTeX builder): Sphinx gathers every citation into one
  bibliography at the very end of the document, after the last chapter, which
  leaves the book's own Bibliography chapter (the page with the
  ``{bibliography}`` directive) empty. Put the gathered list back where that
  directive stood; the preamble in _config.yml keeps LaTeX from opening a
  second, unnumbered chapter for it.
"""

from __future__ import annotations

from docutils import nodes
from sphinx.builders.latex.nodes import thebibliography
from sphinx.transforms.post_transforms import SphinxPostTransform

_BIB_MARK = "book-fixes-bibliography-here"


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


class _MarkBibliography(SphinxPostTransform):
    """Mark where the first citation stands, before Sphinx gathers them (priority 750)."""

    default_priority = 740
    formats = ("latex",)

    def run(self, **kwargs) -> None:
        first = next(iter(self.document.findall(nodes.citation)), None)
        if first is not None:
            mark = nodes.comment()
            mark[_BIB_MARK] = True
            first.parent.insert(first.parent.index(first), mark)


class _MoveBibliography(SphinxPostTransform):
    """Move the gathered bibliography (Sphinx's BibliographyTransform) to the mark."""

    default_priority = 760
    formats = ("latex",)

    def run(self, **kwargs) -> None:
        marks = [n for n in self.document.findall(nodes.comment) if n.get(_BIB_MARK)]
        bibs = list(self.document.findall(thebibliography))
        if len(marks) == 1 and len(bibs) == 1:
            bibs[0].parent.remove(bibs[0])
            marks[0].replace_self(bibs[0])
        else:
            for mark in marks:
                mark.parent.remove(mark)


def setup(app):
    # early: html-page-context stops at the first handler that returns a template name
    app.connect("html-page-context", _dedupe_scripts, priority=100)
    app.add_post_transform(_MarkBibliography)
    app.add_post_transform(_MoveBibliography)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
