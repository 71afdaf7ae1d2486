"""``harness report``: comparison tables and figures rebuilt from the FINISHED runs in MLflow alone.

| module | owns |
| --- | --- |
| ``stats`` | aggregation over seeds (mean, 95% t-interval, n), paired differences, the metric columns |
| ``spec`` | report specs ``reports/*.yaml`` (rows, columns, filters, provenance split, figures; ``docs/reports.md``) |
| ``render`` | the table as Markdown, CSV, LaTeX and self-contained HTML |
| ``figures`` | the figures (PNG + SVG) |
| ``build`` | reading MLflow, putting the pieces together, logging the files to the sweep's parent run |
"""
