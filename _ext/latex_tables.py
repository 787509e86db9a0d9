"""The PDF's results tables: a notebook output that is an HTML table becomes a LaTeX table.

The chapters show their results as pandas ``Styler`` objects (``droplab.metrics.styled``),
whose only rich output is ``text/html``. myst-nb's LaTeX builder cannot use HTML, so it
falls back to ``text/plain``, which for a Styler is ``<pandas.io.formats.style.Styler at
0x...>``. For the LaTeX builder only, this post-transform runs just before myst-nb picks a
mime type (``SelectMimeType``, priority 4): an output bundle whose best LaTeX-usable form
would be ``text/plain`` but that has an HTML ``<table>`` is replaced by a docutils table
with the same caption, header and cells, which Sphinx's LaTeX writer typesets. HTML pages
are untouched. Loaded by _config.yml (local_extensions).
"""

from __future__ import annotations

from html.parser import HTMLParser

from docutils import nodes
from sphinx.transforms.post_transforms import SphinxPostTransform

# what myst-nb's LaTeX builder prefers to text/plain: such a bundle is left alone
LATEX_RICH = ("application/pdf", "image/png", "image/jpeg", "text/latex", "text/markdown")


class _TableParser(HTMLParser):
    """Caption, header rows and body rows of the (first and only) <table> in an HTML string."""

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.tables = 0
        self.caption: str | None = None
        self.head: list[list[str]] = []
        self.body: list[list[str]] = []
        self._section = "body"
        self._row: list[str] | None = None
        self._cell: list[str] | None = None
        self._span = 1
        self._in_caption = False
        self._skip = 0  # inside <style> or <script>

    def handle_starttag(self, tag, attrs):
        if tag in ("style", "script"):
            self._skip += 1
        elif tag == "table":
            self.tables += 1
        elif tag == "caption":
            self._in_caption, self.caption = True, ""
        elif tag in ("thead", "tbody", "tfoot"):
            self._section = "head" if tag == "thead" else "body"
        elif tag == "tr":
            self._row = []
        elif tag in ("th", "td"):
            self._cell = []
            self._span = int(dict(attrs).get("colspan") or 1)
        elif tag == "br" and self._cell is not None:
            self._cell.append(" ")

    def handle_endtag(self, tag):
        if tag in ("style", "script"):
            self._skip -= 1
        elif tag == "caption":
            self._in_caption = False
        elif tag in ("th", "td") and self._cell is not None and self._row is not None:
            self._row += [" ".join("".join(self._cell).split())] + [""] * (self._span - 1)
            self._cell = None
        elif tag == "tr" and self._row is not None:
            (self.head if self._section == "head" else self.body).append(self._row)
            self._row = None

    def handle_data(self, data):
        if self._skip:
            return
        if self._in_caption:
            self.caption += data
        elif self._cell is not None:
            self._cell.append(data)


def table_node(html: str) -> nodes.table | None:
    """A docutils table of an HTML string holding exactly one table, or None."""
    parser = _TableParser()
    parser.feed(html)
    parser.close()
    rows = parser.head + parser.body
    if parser.tables != 1 or not rows:
        return None
    ncols = max(len(row) for row in rows)
    table = nodes.table(classes=["nb-html-table"])
    caption = " ".join((parser.caption or "").split())
    if caption:
        table += nodes.title(caption, caption)
    tgroup = nodes.tgroup(cols=ncols)
    table += tgroup
    for _ in range(ncols):
        tgroup += nodes.colspec(colwidth=1)

    def section(kind, section_rows):
        part = kind()
        for cells in section_rows:
            row = nodes.row()
            for text in cells + [""] * (ncols - len(cells)):
                entry = nodes.entry()
                entry += nodes.paragraph(text, text)
                row += entry
            part += row
        return part

    if parser.head:
        tgroup += section(nodes.thead, parser.head)
    tgroup += section(nodes.tbody, parser.body or [[""] * ncols])
    return table


class HtmlTablesForLatex(SphinxPostTransform):
    default_priority = 3  # before myst-nb's SelectMimeType (4)
    builders = ("latex",)

    def run(self, **kwargs):
        def is_bundle(node):
            return isinstance(node, nodes.container) and node.get("nb_element", "") == "mime_bundle"

        for bundle in list(self.document.findall(is_bundle)):
            forms = {child.get("mime_type"): child for child in bundle.children}
            if "text/html" not in forms or any(kind in forms for kind in LATEX_RICH):
                continue
            table = table_node(forms["text/html"].astext())
            if table is not None:
                table.source, table.line = bundle.source, bundle.line
                bundle.replace_self(table)


def setup(app):
    app.add_post_transform(HtmlTablesForLatex)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
