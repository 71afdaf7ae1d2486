"""Rendering of an aggregated report table: Markdown, LaTeX and one self-contained HTML page.

``harness.report.build`` reads MLflow and ``harness.report.stats`` aggregates; this module only formats. Every text
format shows the same columns (``display_table``), so a number reads the same in the README, a paper and a browser.
"""

from __future__ import annotations

import base64
import html
import re
from pathlib import Path

import pandas as pd

from harness.report.stats import metric_label, table_columns

FORMATS = ("md", "csv", "tex", "html")


def pm(mean: float, ci: float) -> str:
    if pd.isna(mean):
        return "—"
    return f"{mean:.1f}" if pd.isna(ci) else f"{mean:.1f} ± {ci:.1f}"


def display_table(table: pd.DataFrame, keys: list[str]) -> pd.DataFrame:
    """The aggregated ``table`` as strings: method, fusion layer, other swept keys, cost, the primary metric with
    both modalities and with one masked as mean ± CI, n."""
    show = pd.DataFrame({"method": table["method.name"], "fusion layer": table["method.fusion_layer"]})
    for k in keys[1:]:
        if k != "method.fusion_layer":
            show[k] = table[k]
    show["trainable params"] = table["trainable params"].map(lambda v: f"{v / 1e6:.3f} M")
    show["total params"] = table["total params"].map(lambda v: f"{v / 1e6:.3f} M")
    show["GFLOPs"] = table["GFLOPs"].map(lambda v: f"{v:.4f}")
    for col in table_columns(table):
        show[col] = [pm(m, c) for m, c in zip(table[col], table[f"{col} ci95"])]
    show["n"] = table["n"]
    return show.astype(str)


def to_markdown(show: pd.DataFrame, title: str, note: str, figure: str | None = None, after: str = "",
                figures: list[tuple[str, str, str]] = ()) -> str:  # fmt: skip
    """GitHub Markdown: a heading, the note, the table, ``after`` it (if any) and links to the figure files.

    ``figure`` is the one generic figure's file name; ``figures`` holds (title, file name, caption) per spec figure.
    """
    signed = [i for i, c in enumerate(show.columns) if c.startswith(("Δ", "drop", "paper"))]  # keep "+1.0" as is
    table = show.to_markdown(index=False, **({"disable_numparse": signed} if signed else {}))
    text = f"# {title}\n\n{note}\n\n{table}\n" + (f"\n{after}" if after else "")
    for head, name, caption in figures:
        text += f"\n## {head}\n\n![{head}]({name})\n" + (f"\n{caption}\n" if caption else "")
    alt = f"test {metric_label(show.attrs.get('primary', 'test/top1'))}"
    return text + (f"\n![{alt}]({figure})\n" if figure else "")


_TEX_SPECIAL = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_", "{": r"\{",
                "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}"}  # fmt: skip
_TEX_SYMBOL = {"±": r"$\pm$", "×": r"$\times$", "—": "---", "`": "", "≈": r"$\approx$", "Δ": r"$\Delta$",
               "↑": r"$\uparrow$", "≥": r"$\geq$", "≤": r"$\leq$"}  # fmt: skip


def tex_escape(text: str) -> str:
    """``text`` safe inside a LaTeX tabular: specials escaped, then ``±`` → ``$\\pm$``, ``×`` → ``$\\times$``."""
    out = re.sub(r"[\\&%$#_{}~^]", lambda m: _TEX_SPECIAL[m.group()], str(text))
    for symbol, tex in _TEX_SYMBOL.items():
        out = out.replace(symbol, tex)
    return out


def best_cells(show: pd.DataFrame, table: pd.DataFrame) -> pd.DataFrame:
    """Which cells hold the best value of their column: the metric columns (those with a CI in ``table``), highest
    mean; read from the cells' leading number, so any row order works."""
    best = pd.DataFrame(False, index=show.index, columns=show.columns)
    for col in show.columns:
        if f"{col} ci95" not in table.columns:
            continue
        values = pd.to_numeric(show[col].str.extract(r"^\s*([-+]?\d+(?:\.\d+)?)")[0], errors="coerce")
        if values.notna().any():
            best[col] = values == values.max()
    return best


def _styled(show: pd.DataFrame, table: pd.DataFrame | None, css: str):
    """``show`` as a pandas ``Styler``: the best value of each metric column in ``css``, no index."""
    best = best_cells(show, table) if table is not None else pd.DataFrame(False, show.index, show.columns)
    up = {c: f"{c} ↑" for c in show.columns if best[c].any()}  # higher is better
    show, best = show.rename(columns=up), best.rename(columns=up)
    return show.style.hide(axis="index").apply(lambda _: best.map(lambda b: css if b else ""), axis=None)


def _sections_tex(sections: list[tuple[str, list[str]]]) -> list[str]:
    out = []
    for head, lines in sections:
        out += ["", rf"\paragraph{{{tex_escape(head)}}}"] if head else [""]
        out += [tex_escape(line) + ("" if i == len(lines) - 1 else r" \\") for i, line in enumerate(lines)]
    return out


def to_latex(show: pd.DataFrame, title: str, note: str, table: pd.DataFrame | None = None, label: str = "tab:results",
             sections: list[tuple[str, list[str]]] = ()) -> str:  # fmt: skip
    """A ``table`` float (pandas ``Styler.to_latex``): booktabs rules (``\\usepackage{booktabs}``), the caption
    (title and note: what the numbers are and the budget), a label, the best value of each metric column in bold,
    text left and numbers right; after it the report's other sections (notes, paired differences) as paragraphs."""
    align = "".join("l" if c in ("method", "fusion layer") else "r" for c in show.columns)
    styler = _styled(show, table, "textbf:--rwrap;").format(tex_escape).format_index(tex_escape, axis=1)
    body = styler.to_latex(column_format=align, hrules=True, position="t", position_float="centering",
                           label=label, caption=f"{tex_escape(title)}. {tex_escape(note)}")  # fmt: skip
    return body + "\n".join(_sections_tex(list(sections))) + ("\n" if sections else "")


_CSS = """body{font-family:system-ui,sans-serif;margin:2em auto;max-width:72em;color:#222}
table{border-collapse:collapse;font-size:.92em}th,td{padding:.35em .8em;border-bottom:1px solid #ddd}
caption{caption-side:top;text-align:left;color:#444;margin-bottom:.6em}th{background:#f4f4f4;text-align:left}td{text-align:right}td:first-child,td:nth-child(2){text-align:left}
img{max-width:100%;margin-top:1.5em}code{background:#f4f4f4;padding:0 .2em}figure{margin:1.5em 0}
figcaption{color:#555;font-size:.9em}"""


def _html_text(text: str) -> str:
    return re.sub(r"`([^`]*)`", r"<code>\1</code>", html.escape(text))


def to_html(show: pd.DataFrame, title: str, note: str, png: Path | None = None,
            figures: list[tuple[str, Path, str]] = (), metric: str = "top-1", table: pd.DataFrame | None = None,
            sections: list[tuple[str, list[str]]] = ()) -> str:  # fmt: skip
    """One self-contained page: the table (pandas ``Styler``, the note as its caption, best of each metric column
    in bold), the report's other sections (notes, paired differences), each figure inlined as a base64 PNG; no
    external asset.

    ``png`` is the one generic figure; ``figures`` holds (title, PNG path, caption) per spec figure.
    """
    styler = _styled(show, table, "font-weight: bold").set_table_attributes('id="results"')
    body = styler.set_caption(_html_text(note)).to_html(table_uuid="results", exclude_styles=False)
    body = re.sub(r'<table id="T_results"\s+id="results"', '<table id="results"', body)
    text = []
    for head, lines in sections:
        text.append((f"<h2>{html.escape(head)}</h2>" if head else "") + "<ul>"
                    + "".join(f"<li>{_html_text(line)}</li>" for line in lines) + "</ul>")  # fmt: skip
    imgs = [(f"test {metric} against the fusion layer", png, "")] if png is not None else []
    parts = []
    for head, path, caption in [*figures, *imgs]:
        data = base64.b64encode(path.read_bytes()).decode("ascii")
        h2 = f"<h2>{html.escape(head)}</h2>" if figures else ""
        cap = f"<figcaption>{_html_text(caption)}</figcaption>" if caption else ""
        parts.append(f'<figure>{h2}<img alt="{html.escape(head)}" src="data:image/png;base64,{data}">{cap}</figure>')
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
            f"<style>{_CSS}</style></head>\n<body><h1>{html.escape(title)}</h1>\n{body}\n" + "\n".join(text)
            + "\n" + "\n".join(parts) + "\n</body></html>\n")  # fmt: skip
