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
_TEX_SYMBOL = {"±": r"$\pm$", "×": r"$\times$", "—": "---", "`": ""}


def tex_escape(text: str) -> str:
    """``text`` safe inside a LaTeX tabular: specials escaped, then ``±`` → ``$\\pm$``, ``×`` → ``$\\times$``."""
    out = re.sub(r"[\\&%$#_{}~^]", lambda m: _TEX_SPECIAL[m.group()], str(text))
    for symbol, tex in _TEX_SYMBOL.items():
        out = out.replace(symbol, tex)
    return out


def to_latex(show: pd.DataFrame, title: str, note: str) -> str:
    """A ``table`` float with a booktabs ``tabular`` (``\\usepackage{booktabs}``); text left, numbers right."""
    align = "".join("l" if c in ("method", "fusion layer") else "r" for c in show.columns)
    lines = [r"\begin{table}[t]", r"\centering", rf"\caption{{{tex_escape(title)}. {tex_escape(note)}}}",
             rf"\begin{{tabular}}{{{align}}}", r"\toprule",
             " & ".join(tex_escape(c) for c in show.columns) + r" \\", r"\midrule"]  # fmt: skip
    lines += [" & ".join(tex_escape(v) for v in row) + r" \\" for row in show.itertuples(index=False)]
    lines += [r"\bottomrule", r"\end{tabular}", r"\end{table}"]
    return "\n".join(lines) + "\n"


_CSS = """body{font-family:system-ui,sans-serif;margin:2em auto;max-width:72em;color:#222}
table{border-collapse:collapse;font-size:.92em}th,td{padding:.35em .8em;border-bottom:1px solid #ddd}
th{background:#f4f4f4;text-align:left}td{text-align:right}td:first-child,td:nth-child(2){text-align:left}
img{max-width:100%;margin-top:1.5em}code{background:#f4f4f4;padding:0 .2em}figure{margin:1.5em 0}
figcaption{color:#555;font-size:.9em}"""


def to_html(show: pd.DataFrame, title: str, note: str, png: Path | None = None,
            figures: list[tuple[str, Path, str]] = (), metric: str = "top-1") -> str:  # fmt: skip
    """One self-contained page: the table and each figure inlined as a base64 PNG; no external asset.

    ``png`` is the one generic figure; ``figures`` holds (title, PNG path, caption) per spec figure.
    """
    body = re.sub(r"`([^`]*)`", r"<code>\1</code>", html.escape(note))
    table = show.to_html(index=False, border=0, table_id="results", escape=True)
    imgs = [(f"test {metric} against the fusion layer", png, "")] if png is not None else []
    parts = []
    for head, path, caption in [*figures, *imgs]:
        data = base64.b64encode(path.read_bytes()).decode("ascii")
        cap = re.sub(r"`([^`]*)`", r"<code>\1</code>", html.escape(caption))
        h2 = f"<h2>{html.escape(head)}</h2>" if figures else ""
        parts.append(f'<figure>{h2}<img alt="{html.escape(head)}" src="data:image/png;base64,{data}">'
                     + (f"<figcaption>{cap}</figcaption>" if cap else "") + "</figure>")  # fmt: skip
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
            f"<style>{_CSS}</style></head>\n<body><h1>{html.escape(title)}</h1>\n<p>{body}</p>\n{table}\n"
            + "\n".join(parts) + "\n</body></html>\n")  # fmt: skip
