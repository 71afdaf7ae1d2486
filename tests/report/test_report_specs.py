"""Every shipped report spec renders from a small real MLflow store, in every format, with its figures.

The store is written through the harness's own tracking helpers (``MlflowReporter`` child runs under a sweep parent
run, as ``harness sweep`` leaves them) with made-up accuracies and costs, so no model is trained and Ray is not
needed: three sweeps shaped like the shipped ones (``fusion_layer``, ``bottlenecks``, ``methods``) plus
``quickstart``, two seeds each.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pandas as pd
import pytest
from mlflow.tracking import MlflowClient

from harness.cli import main
from harness.config import ConfigError, resolve_run
from harness.report.figures import pareto_front
from harness.report.render import FORMATS
from harness.report.spec import FigureSpec, figure_data, load_spec, provenance_span, split_provenance
from harness.report.stats import aggregate
from harness.tracking import MlflowReporter, code_tags, experiment_id

REPORTS = Path(__file__).resolve().parents[2] / "reports"
SPECS = sorted(p.stem for p in REPORTS.glob("*.yaml"))
SEEDS = (0, 1)


def _accuracy(method: str, lf: int | None, nb: int | None, seed: int) -> float:
    """A made-up top-1 with a clear shape: token fusion > late > unimodal, better for earlier Lf and more Nb."""
    base = {"vanilla": 90.0, "mbt": 92.0, "late": 55.0, "audio_only": 20.0, "video_only": 17.0, "lowrank": 60.0}[method]
    return base - 5.0 * (lf or 0) + 2.0 * (nb or 0).bit_length() + (1.0 if seed else -1.0)


def _gflops(method: str, lf: int | None, nb: int | None) -> float:
    base = {"vanilla": 6.0, "mbt": 9.0, "late": 5.8, "audio_only": 2.3, "video_only": 3.6, "lowrank": 4.0}[method]
    return (base - 0.5 * (lf or 0) + 0.1 * (nb or 0)) / 1000


def _log_sweep(uri: str, name: str, trials: list[dict], cache: Path, manifest=lambda method, seed: "") -> None:
    """A parent run tagged as sweep ``name`` and one FINISHED child run per (trial, seed).

    ``manifest(method, seed)``: the run's ``harness.manifest_hash`` tag (none when empty). A trial's ``backbone`` entry
    (popped) updates the run's backbone section.
    """
    client = MlflowClient(uri)
    exp = experiment_id(client, name)
    tags = {**code_tags(), "harness.sweep": name, "harness.sweep_hash": f"{name:0<64}"[:64], "mlflow.runName": name}
    parent = client.create_run(exp, tags=tags)
    for trial in trials:
        method = {k: v for k, v in trial.items() if k != "backbone"}
        for seed in SEEDS:
            run = {"name": name, "seed": seed, "dataset": {"name": "synthetic"},
                   "backbone": {"name": "tiny", **trial.get("backbone", {})}, "method": method,
                   "train": {"epochs": 1}, "cache_dir": str(cache)}  # fmt: skip
            spec = resolve_run(run)
            lf, nb = method.get("fusion_layer"), method.get("bottleneck_tokens")
            top1 = _accuracy(method["name"], lf, nb, seed)
            with MlflowReporter.open(spec, uri, parent.info.run_id, {"harness.sweep": name}) as rep:
                tags = {"harness.dataset_fingerprint": "f" * 16}
                tags.update({"harness.manifest_hash": m} if (m := manifest(method, seed)) else {})
                rep.start({"tags": tags,
                           "metrics": {"model/params_total": 4e5 + 1e4 * (nb or 0), "model/params_trainable": 4e5,
                                       "model/gflops": _gflops(method["name"], lf, nb)}})  # fmt: skip
                rep.report({"train/loss": 1.0, "val/top1": top1 - 1}, step=0)
                rep.report({"test/top1": top1, "test/top1:audio_only": top1 / 4, "test/top1:video_only": top1 / 5},
                           step=1)  # fmt: skip
    client.set_terminated(parent.info.run_id, status="FINISHED")


UNFUSED = [{"name": m} for m in ("late", "audio_only", "video_only")]


@pytest.fixture(scope="module")
def store(tmp_path_factory, cache):
    tmp = tmp_path_factory.mktemp("report_specs")
    uri = f"sqlite:///{tmp / 'mlflow.db'}"
    layers = [{"name": m, "fusion_layer": lf, "readout": "gap"} for m in ("vanilla", "mbt") for lf in range(5)]
    _log_sweep(uri, "fusion_layer", layers + UNFUSED, cache)
    bottlenecks = [{"name": "mbt", "fusion_layer": 2, "bottleneck_tokens": nb} for nb in (1, 2, 4, 16)]
    _log_sweep(uri, "bottlenecks", bottlenecks, cache)
    zoo = [{"name": "vanilla", "fusion_layer": 0}, {"name": "mbt", "fusion_layer": 0, "bottleneck_tokens": 4}]
    _log_sweep(uri, "quickstart", zoo + UNFUSED, cache)
    _log_sweep(uri, "methods", [*zoo, {"name": "mbt", "fusion_layer": 3}, *UNFUSED], cache)
    pretrained = "mlflow:pretraining?task.negative_sampling=random"
    transfer = [{"name": "lowrank", "sharing": sharing, "fusion": "mid", "backbone": backbone}
                for sharing in ("none", "all")
                for backbone in ({"transfer": "linear", "checkpoint": pretrained},
                                 {"transfer": "finetune", "checkpoint": None})]  # fmt: skip
    _log_sweep(uri, "pretraining_transfer", transfer, cache)
    return uri, tmp


def _render(store, name: str, fmt: str, where: str = "reports") -> Path:
    """``harness report --out <tmp>/<where>/<name>.<fmt>`` with the shipped spec copied beside the output."""
    uri, tmp = store
    out = tmp / where / f"{name}.{fmt}"
    out.parent.mkdir(exist_ok=True)
    shutil.copy(REPORTS / f"{name}.yaml", out.with_suffix(".yaml"))
    assert main(["report", "--out", str(out), "--tracking-uri", uri]) == 0
    return out


def test_the_shipped_specs_are_the_five_of_the_issue():
    assert {"table2", "fusion_layer", "bottlenecks", "efficiency", "robustness"} <= set(SPECS)


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("name", SPECS)
def test_every_shipped_spec_renders_in_every_format(store, name, fmt):
    out = _render(store, name, fmt, f"out_{fmt}")
    text = out.read_text()
    spec = load_spec(REPORTS / f"{name}.yaml")
    figures = [out.with_name(f"{name}_{f.name}.png") for f in spec.figures] or [out.with_suffix(".png")]
    for png in figures:  # PNG and SVG of every figure, non-empty
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 5000, png
        assert png.with_suffix(".svg").read_text().lstrip().startswith("<?xml"), png
    if fmt == "md":
        assert text.startswith(f"# {spec.title}\n") and re.search(r"\|\s+n\s+\|", text)
        for png in figures:
            assert f"]({png.name})" in text
    elif fmt == "html":
        assert re.search(r'<table [^>]*id="results"', text)
        assert text.count('src="data:image/png;base64,') == len(figures)
        assert 'src="http' not in text and "<script" not in text
    elif fmt == "tex":
        assert "\\begin{tabular}" in text and "\\bottomrule" in text
    else:
        assert (pd.read_csv(out)["n"] == len(SEEDS)).all()


def test_fusion_layer_report_has_reference_lines_and_rows_in_lf_order(store):
    text = _render(store, "fusion_layer", "md").read_text()
    rows = [r.split("|")[1:3] for r in text.splitlines() if r.startswith("| ") and "---" not in r][1:]
    mbt = [lf.strip() for m, lf in rows if m.strip() == "mbt"]
    assert mbt == ["0", "1", "2", "3", "4"]  # sorted by method, then Lf
    assert "Dashed lines: rows without an x value" in text
    uri, _ = store
    runs = _runs_of(uri, "fusion_layer")
    keys = ["method.name", "method.fusion_layer"]
    data = figure_data(aggregate(runs, keys), keys, load_spec(REPORTS / "fusion_layer.yaml").figures[0])
    refs = data[data["x"].isna()]
    assert set(refs["label"]) == {"late", "audio_only", "video_only"}
    mbt2 = data[(data["series"] == "mbt") & (data["x"] == 2)].iloc[0]
    assert mbt2["y"] == pytest.approx(_accuracy("mbt", 2, None, 0) + 1.0)  # mean of seeds 0 and 1: ±1 cancel
    assert mbt2["yerr"] == pytest.approx(12.706, rel=1e-3)  # t(0.975, 1) × sd 1.414 / sqrt 2


def _runs_of(uri: str, sweep: str) -> pd.DataFrame:
    import mlflow

    mlflow.set_tracking_uri(uri)
    exp = MlflowClient(uri).get_experiment_by_name(sweep)
    runs = mlflow.search_runs([exp.experiment_id], "attributes.status = 'FINISHED'")
    return runs[runs["tags.mlflow.parentRunId"].notna()]


def test_bottleneck_rows_sort_by_the_number_not_the_text(store):
    text = _render(store, "bottlenecks", "md").read_text()
    rows = [r.split("|")[2].strip() for r in text.splitlines() if r.startswith("| mbt")]
    assert rows == ["1", "2", "4", "16"]


def test_efficiency_marks_the_pareto_front_and_falls_back_to_quickstart(store):
    text = _render(store, "efficiency", "md").read_text()
    assert "Sweep `methods`" in text and "stands in" not in text
    front = re.search(r"efficiency_gflops\.png\)\n\n.*Pareto front \(lower x, higher y\): (.*)\.", text)
    # mbt at Lf 3 (9.0 - 1.5 = 7.5 GFLOPs, 77%) is beaten by vanilla at Lf 0 (6.0, 90%); mbt at Lf 0 is the best.
    assert re.findall(r"`([^`]*)`", front.group(1)) == ["audio_only", "late", "vanilla, 0", "mbt, 0"]
    uri, tmp = store
    spec = tmp / "fallback.yaml"
    spec.write_text((REPORTS / "efficiency.yaml").read_text().replace("[methods, quickstart]", "[nope, quickstart]"))
    out = tmp / "fallback.md"
    assert main(["report", "--spec", str(spec), "--out", str(out), "--tracking-uri", uri]) == 0
    assert "Sweep `quickstart`" in out.read_text() and "No sweep `nope` in this store yet" in out.read_text()


def test_pareto_front_on_a_hand_made_example():
    pts = pd.DataFrame({"x": [1.0, 2.0, 3.0, 3.0, 2.0, 4.0], "y": [50.0, 70.0, 60.0, 90.0, 70.0, 90.0]})
    on = pareto_front(pts["x"], pts["y"])
    # (3, 60) is dominated by (2, 70); (4, 90) by (3, 90); the two equal (2, 70) are both on the front.
    assert list(on) == [True, True, False, True, True, False]


def test_runs_of_different_manifests_are_split_or_refused():
    runs = pd.DataFrame({
        "params.method.name": ["mbt"] * 4 + ["late"] * 2,
        "params.seed": ["0", "1", "0", "1", "0", "1"],
        "tags.harness.git_sha": ["a" * 40] * 6,
        "tags.harness.manifest_hash": ["m1" * 8] * 2 + ["m2" * 8] * 2 + ["m1" * 8] * 2,
        "metrics.test/top1": [70.0, 72.0, 50.0, 52.0, 60.0, 61.0],
    })  # fmt: skip
    split, keys, notes = split_provenance(runs, ["method.name"])
    assert keys == ["method.name", "provenance"]
    assert notes == ["Row `mbt` is split: its runs differ in manifest (not mixed)."]
    assert set(split["params.provenance"]) == {"manifest m1m1m1m1", "manifest m2m2m2m2", ""}
    assert provenance_span(runs) == (
        "The runs of this report span 2 dataset manifests (m1m1m1m1, m2m2m2m2); a row never mixes them."
    )
    with pytest.raises(LookupError, match=r"row `mbt` mixes runs of different manifest .*mixed_provenance: refuse"):
        split_provenance(runs, ["method.name"], refuse=True)
    assert provenance_span(runs.iloc[:2]) == ""


def test_rows_from_two_manifests_are_split_in_table_and_figure_or_refused(tmp_path, cache, capsys):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    trials = [{"name": "mbt", "fusion_layer": 2, "bottleneck_tokens": nb} for nb in (1, 4)]
    _log_sweep(uri, "bottlenecks", trials, cache, lambda m, seed: f"{m['bottleneck_tokens'] * 11 + seed:0<16}")
    out = tmp_path / "bottlenecks.md"
    shutil.copy(REPORTS / "bottlenecks.yaml", tmp_path / "bottlenecks.yaml")
    assert main(["report", "--out", str(out), "--tracking-uri", uri]) == 0
    text = out.read_text()
    assert "Row `mbt, 1` is split: its runs differ in manifest (not mixed)." in text
    assert "span 4 dataset manifests (11000000, 12000000, 44000000, 45000000)" in text
    rows = [r.split("|")[1:5] for r in text.splitlines() if r.startswith("| mbt")]
    assert [[c.strip() for c in r] for r in rows] == [
        ["mbt", "1", "manifest 12000000", "2"], ["mbt", "1", "manifest 11000000", "2"],
        ["mbt", "4", "manifest 45000000", "2"], ["mbt", "4", "manifest 44000000", "2"]]  # by Nb, then top-1 # fmt: skip
    assert (tmp_path / "bottlenecks_top1.png").stat().st_size > 5000
    table = pd.read_csv(tmp_path / "bottlenecks.csv", dtype=str)
    keys = ["method.name", "method.bottleneck_tokens", "provenance"]
    fig = load_spec(REPORTS / "bottlenecks.yaml").figures[0]
    data = figure_data(table.assign(**{"test top-1": table["test top-1"].astype(float)}), keys, fig)
    assert data["series"].nunique() == 4 and data["hue"].str.contains(r"mbt \[manifest 1[12]000000\]").sum() == 2
    refuse = tmp_path / "refuse.yaml"
    refuse.write_text((REPORTS / "bottlenecks.yaml").read_text() + "mixed_provenance: refuse\n")
    assert main(["report", "--spec", str(refuse), "--out", str(tmp_path / "r.md"), "--tracking-uri", uri]) == 1
    assert "row `mbt, 1` mixes runs of different manifest" in capsys.readouterr().err


def _errors(tmp_path, text: str) -> str:
    path = tmp_path / "s.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as e:
        load_spec(path)
    return str(e.value)


def test_figure_spec_errors_name_the_key_and_what_is_valid(tmp_path):
    err = _errors(tmp_path, "rows: [method.name]\nfigures: [{name: a, x: gflops, y: top1, parto: true}]\n")
    assert "figures.0.parto" in err and "did you mean 'pareto'" in err
    err = _errors(tmp_path, "figures: [{name: a, x: gflops, y: delta_vs_best}]\n")
    assert "figures.0.y" in err and "'delta_vs_best'" in err and "top1" in err
    err = _errors(tmp_path, "rows: [method.name]\nfigures: [{name: a, x: method.fusion_layer, y: top1}]\n")
    assert "'method.fusion_layer' is not a row key; add it to rows" in err
    err = _errors(tmp_path, "figures: [{name: a, x: method.fusion_layer, y: top1, pareto: true}]\n")
    assert "pareto: true needs a cost or metric x" in err
    err = _errors(tmp_path, "figures: [{name: a, x: gflops, y: top1}, {name: a, x: gflops, y: top5, kind: bar}]\n")
    assert "figures.1.kind" in err and "figures.1.y" in err
    twice = "figures: [{name: a, x: gflops, y: top1}, {name: a, x: gflops, y: gflops}]\n"
    assert "names must differ" in _errors(tmp_path, twice)
    assert FigureSpec(name="a", x="method.fusion_layer", y="top1").is_row_key("method.fusion_layer")


def test_default_figure_draws_more_methods_than_one_palette_has(tmp_path):
    # 13 methods (the methods sweep) once failed with KeyError: tab10 has 10 colours.
    import pandas as pd

    from harness.report.figures import colours, figure

    names = [f"m{i}" for i in range(13)]
    cols = {"method.name": names, "method.fusion_layer": ["—"] * 13, "test top-1": range(13)}
    table = pd.DataFrame({**cols, "test top-1 ci95": [1.0] * 13})
    figure(table, [tmp_path / "f.png"], "13 methods")
    assert (tmp_path / "f.png").stat().st_size > 0
    assert len(set(colours(13))) == 13


def test_default_figure_of_one_row_per_method_is_grouped_bars_in_table_order(tmp_path):
    import pandas as pd

    from harness.report.figures import bar_data, bars

    table = pd.DataFrame({
        "method.name": ["vanilla", "late", "audio_only"], "method.fusion_layer": ["0", "—", "—"],
        "test top-1": [100.0, 52.3, 18.4], "test top-1 ci95": [0.0, 3.8, float("nan")],
        "top-1 audio only": [15.5, 18.6, 18.4], "top-1 audio only ci95": [2.5, 2.9, float("nan")],
    })  # fmt: skip
    assert bar_data(table)["label"].tolist() == ["vanilla (Lf 0)", "late", "audio_only"]
    ax = bars(table, [tmp_path / "t.png", tmp_path / "t.svg"], "t")
    heights = [p.get_height() for p in ax.patches]
    assert heights == [100.0, 52.3, 18.4, 15.5, 18.6, 18.4]  # both modalities, then audio only; rows in order
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["both modalities", "audio only"]
    assert (tmp_path / "t.png").stat().st_size > 0 and (tmp_path / "t.svg").stat().st_size > 0


def test_default_figure_is_a_fusion_layer_plot_when_a_method_spans_layers(tmp_path, monkeypatch):
    import pandas as pd

    from harness.report import figures

    table = pd.DataFrame({"method.name": ["mbt", "mbt", "late"], "method.fusion_layer": ["0", "2", "—"],
                          "test top-1": [90.0, 95.0, 50.0], "test top-1 ci95": [1.0, 1.0, 1.0]})  # fmt: skip
    monkeypatch.setattr(figures, "bars", lambda *a: pytest.fail("bars for a fusion-layer table"))
    figures.figure(table, [tmp_path / "f.png"], "f")
    assert (tmp_path / "f.png").stat().st_size > 0
