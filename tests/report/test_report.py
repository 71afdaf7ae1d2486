"""Reports of a real sweep (the session's ``finished_sweep``: two finished trials, one failed) and the report's
statistics and rendering on made-up runs."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pandas as pd
import pytest
import yaml
from scipy import stats

from harness.cli import main
from harness.report.build import swept_keys
from harness.report.render import tex_escape, to_html, to_latex
from harness.report.spec import load_spec, paired_markdown, split_provenance
from harness.report.stats import aggregate, paired_differences, t_interval


@pytest.mark.ray
def test_report_from_the_sweep(finished_sweep):
    _, uri, tmp = finished_sweep
    out = tmp / "reports" / "table2.md"
    assert main(["report", "--out", str(out), "--tracking-uri", uri]) == 0
    text = out.read_text()
    assert "| late " in text and "| audio_only " in text and "video_only" not in text.split("|", 1)[1].split("\n\n")[0]
    assert (tmp / "reports" / "table2.png").stat().st_size > 1000
    csv = pd.read_csv(tmp / "reports" / "table2.csv")
    assert set(csv["method.name"]) == {"late", "audio_only"} and (csv["n"] == 1).all()


@pytest.mark.ray
@pytest.mark.parametrize("suffix", ["tex", "html", "csv"])
def test_report_format_follows_the_out_suffix(finished_sweep, suffix):
    _, uri, tmp = finished_sweep
    out = tmp / "formats" / f"table2.{suffix}"
    assert main(["report", "--out", str(out), "--tracking-uri", uri]) == 0
    text = out.read_text()
    assert (tmp / "formats" / "table2.png").stat().st_size > 1000
    assert (tmp / "formats" / "table2.svg").read_text().lstrip().startswith("<?xml")
    if suffix == "tex":
        assert "\\begin{tabular}" in text and "\\toprule" in text and "audio\\_only &" in text
        assert r"mean $\pm$ 95\% t-interval" in text and "±" not in text and "×" not in text
    elif suffix == "html":
        assert text.startswith("<!DOCTYPE html>") and re.search(r'<table [^>]*id="results"', text)
        assert re.search(r"<td [^>]*>audio_only</td>", text) and 'src="data:image/png;base64,' in text
        assert 'src="http' not in text and "<link" not in text and "<script" not in text  # nothing external
    else:
        assert set(pd.read_csv(out)["method.name"]) == {"late", "audio_only"}


@pytest.mark.ray
def test_report_format_flag_overrides_the_suffix_and_bad_suffix_is_a_config_error(finished_sweep, capsys):
    _, uri, tmp = finished_sweep
    out = tmp / "formats" / "page.txt"
    assert main(["report", "--out", str(out), "--format", "html", "--tracking-uri", uri]) == 0
    assert out.read_text().startswith("<!DOCTYPE html>")
    assert main(["report", "--out", str(tmp / "formats" / "table.docx"), "--tracking-uri", uri]) == 2
    err = capsys.readouterr().err
    assert "--out" in err and "'.docx'" in err and "md, csv, tex, html" in err


def test_tex_escape():
    assert tex_escape("val_top1 50% ± 2 × 3 — a&b #1 {x} ~^\\") == (
        r"val\_top1 50\% $\pm$ 2 $\times$ 3 --- a\&b \#1 \{x\} \textasciitilde{}\textasciicircum{}\textbackslash{}"
    )


@pytest.mark.ray
def test_report_unknown_sweep_says_what_exists(finished_sweep, capsys):
    _, uri, tmp = finished_sweep
    assert main(["report", "--sweep", "nope", "--out", str(tmp / "x.md"), "--tracking-uri", uri]) == 1
    assert "no sweep named 'nope'" in capsys.readouterr().err


def test_aggregate_groups_seeds_with_a_t_interval():
    runs = pd.DataFrame({
        "params.method.name": ["mbt"] * 3 + ["late"] * 3,
        "params.method.fusion_layer": ["1"] * 3 + [None] * 3,
        "params.seed": ["0", "1", "2"] * 2,
        "metrics.test/top1": [70.0, 72.0, 74.0, 50.0, 50.0, 50.0],
        "metrics.model/params_total": [10.0] * 6,
    })  # fmt: skip
    keys = swept_keys(runs)
    assert keys == ["method.name"]  # fusion_layer is set for mbt only, and the same for all its runs
    assert swept_keys(runs.assign(**{"params.method.fusion_layer": ["1", "2", "1", None, None, None]})) == [
        "method.name", "method.fusion_layer"]  # fmt: skip
    table = aggregate(runs, keys)
    top = table.iloc[0]
    assert top["method.fusion_layer"] == "1"  # shown though not swept
    assert top["method.name"] == "mbt" and top["n"] == 3 and top["test top-1"] == pytest.approx(72.0)
    assert top["test top-1 ci95"] == pytest.approx(4.303 * 2.0 / 3**0.5, rel=1e-3)
    assert table.iloc[1]["method.fusion_layer"] == "—" and table.iloc[1]["test top-1 ci95"] == 0.0
    assert t_interval(pd.Series([1.0])) != t_interval(pd.Series([1.0]))  # NaN for n = 1


@pytest.mark.ray
def test_report_spec_beside_the_output_filters_columns_and_sorts(finished_sweep):
    _, uri, tmp = finished_sweep
    out = tmp / "spec" / "mine.md"
    out.parent.mkdir()
    (tmp / "spec" / "mine.yaml").write_text(yaml.safe_dump({
        "sweep": "t_sweep", "title": "My table", "filters": {"method.name": ["late", "audio_only"]},
        "rows": ["method.name"], "columns": ["gflops", "top1", "top1_audio_only", "delta_vs_best", "params.train.lr",
                                             "metrics.val/top1"],
        "sort_by": "gflops", "descending": False, "reference": {"late": 40.0},
    }))  # fmt: skip
    assert main(["report", "--out", str(out), "--tracking-uri", uri]) == 0
    text = out.read_text()
    assert text.startswith("# My table\n")
    header = next(line for line in text.splitlines() if line.startswith("| method"))
    cols = [c.strip() for c in header.strip("|").split("|")]
    assert cols == ["method", "GFLOPs", "test top-1", "top-1 audio only", "Δ vs best", "train.lr", "val/top1",
                    "paper top-1", "Δ vs paper", "n"]  # fmt: skip
    table = pd.read_csv(tmp / "spec" / "mine.csv")
    body = [line for line in text.splitlines() if line.startswith("| ") and "---" not in line][1:]
    assert [r.split("|")[1].strip() for r in body] == ["audio_only", "late"]  # sorted by GFLOPs, ascending
    late = next(r for r in body if "| late " in r)
    top = table.set_index("method.name").loc["late", "test top-1"]
    assert f"{top - 40.0:+.1f}" in late and "| 40.0 " in late and "0.001" in late
    assert "| —" in next(r for r in body if "audio_only" in r)  # no reference for audio_only


@pytest.mark.ray
def test_report_spec_unknown_key_exits_2_and_names_it(finished_sweep, capsys):
    _, uri, tmp = finished_sweep
    spec = tmp / "bad.yaml"
    spec.write_text(yaml.safe_dump({"sweep": "t_sweep", "colums": ["top1"], "columns": ["top2"]}))
    assert main(["report", "--spec", str(spec), "--out", str(tmp / "bad.md"), "--tracking-uri", uri]) == 2
    err = capsys.readouterr().err
    assert "colums" in err and "did you mean 'columns'" in err and "sort_by" in err and "'top2'" in err


def test_paired_differences_over_shared_seeds():
    runs = pd.DataFrame({
        "params.method.name": ["mbt"] * 3 + ["late"] * 3 + ["vanilla"] * 3 + ["solo"],
        "params.seed": ["0", "1", "2"] * 3 + ["0"],
        "metrics.test/top1": [70.0, 72.0, 74.0, 60.0, 63.0, 63.0, 69.0, 72.0, 73.0, 10.0],
    })  # fmt: skip
    pairs = paired_differences(runs, ["method.name"]).set_index("row")
    assert set(pairs.index) == {"late", "vanilla"}  # "solo" shares only one seed
    assert pairs.loc["late", "mean"] == pytest.approx(10.0) and pairs.loc["late", "n"] == 3
    assert pairs.loc["late", "ci95"] == pytest.approx(t_interval(pd.Series([10.0, 9.0, 11.0])))
    low, high = stats.ttest_rel([70.0, 72.0, 74.0], [60.0, 63.0, 63.0]).confidence_interval()
    assert (pairs.loc["late", "low"], pairs.loc["late", "high"]) == pytest.approx((low, high))
    assert not pairs.loc["late", "indistinguishable"] and pairs.loc["vanilla", "indistinguishable"]
    text = paired_markdown(paired_differences(runs, ["method.name"]))
    assert "`mbt` minus each row" in text and "vs `late`: +10.0 ± " in text and "vs `vanilla`: +0.7" in text
    assert text.count("≈") == 2 and "paired 95% t-interval of the difference" in text  # the mark and its rule
    assert paired_differences(runs.iloc[:6].assign(**{"params.seed": list("012345")}), ["method.name"]).empty


def test_runs_of_different_code_or_data_are_split_not_mixed():
    runs = pd.DataFrame({
        "params.method.name": ["mbt"] * 4 + ["late"] * 2,
        "params.seed": ["0", "1", "0", "1", "0", "1"],
        "tags.harness.git_sha": ["a" * 40] * 6,
        "tags.harness.dataset_fingerprint": ["f1"] * 2 + ["f2"] * 2 + ["f1"] * 2,
        "metrics.test/top1": [70.0, 72.0, 50.0, 52.0, 60.0, 61.0],
    })  # fmt: skip
    split, keys, notes = split_provenance(runs, ["method.name"])
    assert keys == ["method.name", "provenance"] and len(notes) == 1
    assert "`mbt`" in notes[0] and "data" in notes[0] and "git" not in notes[0]
    table = aggregate(split, keys).set_index("provenance")
    assert table.loc["data f1", "test top-1"] == pytest.approx(71.0) and table.loc["data f2", "n"] == 2
    assert table.loc["", "method.name"] == "late"
    same, same_keys, none = split_provenance(runs.iloc[:2], ["method.name"])
    assert same_keys == ["method.name"] and none == [] and "params.provenance" not in same.columns


def test_report_spec_validation_without_mlflow(tmp_path):
    path = tmp_path / "s.yaml"
    path.write_text("sweep: [a, b]\nfilters: {method.name: mbt}\nreference: {mbt: 71.5}\n")
    spec = load_spec(path)
    assert spec.sweeps(None) == ["a", "b"] and spec.sweeps("c") == ["c"] and spec.reference == {"mbt": 71.5}
    for name in ("table2", "robustness"):  # the shipped specs are valid
        assert load_spec(Path(__file__).resolve().parents[2] / "reports" / f"{name}.yaml").columns


def test_a_repeated_seed_is_one_replicate():
    """Three runs of one seed (tune.num_samples on a grid, before it was refused) are n = 1, not n = 3."""
    runs = pd.DataFrame({
        "params.method.name": ["mbt"] * 3 + ["late"] * 2,
        "params.seed": ["0", "0", "0", "0", "1"],
        "metrics.test/top1": [70.0, 70.0, 70.0, 60.0, 62.0],
    })  # fmt: skip
    table = aggregate(runs, ["method.name"]).set_index("method.name")
    assert table.loc["mbt", "n"] == 1 and pd.isna(table.loc["mbt", "test top-1 ci95"])
    assert table.loc["late", "n"] == 2 and table.attrs["repeated_seeds"] == 2


@pytest.mark.ray
def test_every_format_states_the_budget_and_keeps_another_invocations_report(finished_sweep, capsys):
    _, uri, tmp = finished_sweep
    out = tmp / "budget" / "t.md"
    for suffix in ("md", "tex", "html"):
        path = out.with_suffix(f".{suffix}")
        assert main(["report", "--sweep", "t_sweep", "--out", str(path), "--tracking-uri", uri]) == 0
        text = path.read_text()
        assert "2 epochs; data synthetic (" in text and "fingerprint" in text, suffix
    marker = out.with_name("t.report.json")
    assert json.loads(marker.read_text())["parent_runs"]
    marker.write_text(json.dumps({"sweeps": ["other"], "parent_runs": ["abc"], "budget": "Budget: 10 epochs."}))
    before = out.read_text()
    assert main(["report", "--sweep", "t_sweep", "--out", str(out), "--tracking-uri", uri]) == 1
    err = capsys.readouterr().err
    assert "another sweep invocation (other: parent run abc, Budget: 10 epochs.)" in err and "--overwrite" in err
    assert out.read_text() == before
    assert main(["report", "--sweep", "t_sweep", "--out", str(out), "--tracking-uri", uri, "--overwrite"]) == 0


def test_report_without_a_store_names_it_and_creates_none(tmp_path, capsys):
    uri = f"sqlite:///{tmp_path / 'none' / 'mlflow.db'}"
    assert main(["report", "--out", str(tmp_path / "r.md"), "--tracking-uri", uri]) == 1
    assert f"no MLflow store at {tmp_path / 'none' / 'mlflow.db'}" in capsys.readouterr().err
    assert not (tmp_path / "none").exists()
    assert main(["ui", "--tracking-uri", uri]) == 1


def test_latex_and_html_carry_the_same_sections_with_the_best_in_bold():
    show = pd.DataFrame({"method": ["mbt", "late_x"], "test top-1": ["70.1 ± 2.0", "60.0"], "n": ["3", "1"]})
    table = pd.DataFrame({"test top-1": [70.1, 60.0], "test top-1 ci95": [2.0, float("nan")]})
    sections = [("Paired differences", ["vs `late_x`: +10.1 ± 1.0 (n = 3)", "≈: the rule"])]
    tex = to_latex(show, "T", "Budget: 2 epochs.", table, "tab:t", sections)
    assert r"\toprule" in tex and r"\label{tab:t}" in tex and r"\textbf{70.1 $\pm$ 2.0}" in tex
    assert r"test top-1 $\uparrow$" in tex and r"\paragraph{Paired differences}" in tex and "$\\approx$" in tex
    assert "Budget: 2 epochs." in tex.split(r"\caption{", 1)[1].split("}", 1)[0]
    page = to_html(show, "T", "Budget: 2 epochs.", table=table, sections=sections)
    assert "<caption>Budget: 2 epochs.</caption>" in page and "<h2>Paired differences</h2>" in page
    assert re.search(r"#T_results_row0_col1 \{\s*font-weight: bold", page) and "late_x</td>" in page
