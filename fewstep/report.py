"""Reports written twice from one description: Markdown beside its images, and a
self-contained HTML page with the images embedded (base64), to open or mail as one file."""

from __future__ import annotations

import base64
import html
import re
from collections.abc import Sequence
from pathlib import Path

from .io import atomic_write_text

_CSS = """
body { font-family: system-ui, sans-serif; max-width: 1150px; margin: 2em auto;
       padding: 0 1em; color: #222; line-height: 1.45; }
table { border-collapse: collapse; margin: 0.8em 0; font-size: 0.9em; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.6em; text-align: right; }
th:first-child, td:first-child { text-align: left; }
th { background: #f3f3f3; }
img { max-width: 100%; }
code { background: #f3f3f3; padding: 0 0.2em; }
"""


def _inline(text: str) -> str:
    """Markdown's `code` and **bold** as HTML, everything else escaped."""
    out = html.escape(text, quote=False)
    out = re.sub(r"`([^`]+)`", r"<code>\1</code>", out)
    return re.sub(r"\*\*([^*]+)\*\*", r"<strong>\1</strong>", out)


class Report:
    """An ordered list of headings, paragraphs, tables and images (files under the
    report's directory), rendered by ``write``."""

    def __init__(self, title: str):
        self.title = title
        self.blocks: list[tuple] = []

    def heading(self, text: str, level: int = 2) -> None:
        """Add a heading (level 2 = ``##``)."""
        self.blocks.append(("heading", level, text))

    def paragraph(self, text: str) -> None:
        """Add a paragraph; `code` and **bold** are rendered in both formats."""
        self.blocks.append(("paragraph", text))

    def table(self, header: Sequence[str], rows: Sequence[Sequence[object]]) -> None:
        """Add a table; cells are formatted with ``str``."""
        self.blocks.append(("table", [str(h) for h in header], [[str(c) for c in r] for r in rows]))

    def image(self, filename: str, alt: str) -> None:
        """Add a PNG image, by its file name in the report's directory."""
        self.blocks.append(("image", filename, alt))

    def markdown(self) -> str:
        """The report as Markdown that links its images."""
        lines = [f"# {self.title}", ""]
        for kind, *args in self.blocks:
            if kind == "heading":
                lines += ["#" * args[0] + " " + args[1], ""]
            elif kind == "paragraph":
                lines += [args[0], ""]
            elif kind == "table":
                header, rows = args
                lines.append("| " + " | ".join(header) + " |")
                lines.append("|" + "---|" * len(header))
                lines += ["| " + " | ".join(row) + " |" for row in rows]
                lines.append("")
            else:
                lines += [f"![{args[1]}]({args[0]})", ""]
        return "\n".join(lines)

    def html(self, directory: Path) -> str:
        """The report as one HTML page with the images (read from ``directory``) inline."""
        parts = [
            "<!DOCTYPE html>",
            '<html lang="en"><head><meta charset="utf-8">',
            f"<title>{html.escape(self.title)}</title><style>{_CSS}</style></head><body>",
            f"<h1>{_inline(self.title)}</h1>",
        ]
        for kind, *args in self.blocks:
            if kind == "heading":
                parts.append(f"<h{args[0]}>{_inline(args[1])}</h{args[0]}>")
            elif kind == "paragraph":
                parts.append(f"<p>{_inline(args[0])}</p>")
            elif kind == "table":
                header, rows = args
                parts.append(
                    "<table><tr>" + "".join(f"<th>{_inline(h)}</th>" for h in header) + "</tr>"
                )
                for row in rows:
                    parts.append("<tr>" + "".join(f"<td>{_inline(c)}</td>" for c in row) + "</tr>")
                parts.append("</table>")
            else:
                data = base64.b64encode((directory / args[0]).read_bytes()).decode("ascii")
                alt = html.escape(args[1])
                parts.append(f'<p><img src="data:image/png;base64,{data}" alt="{alt}"></p>')
        parts.append("</body></html>")
        return "\n".join(parts)

    def write(self, directory: str | Path, stem: str = "report") -> tuple[Path, Path]:
        """Write ``stem.md`` and ``stem.html`` into ``directory`` (which holds the images);
        returns both paths."""
        directory = Path(directory)
        md = atomic_write_text(directory / f"{stem}.md", self.markdown())
        page = atomic_write_text(directory / f"{stem}.html", self.html(directory))
        return md, page
