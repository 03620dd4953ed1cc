import dataclasses
import json

import pytest
from typer.testing import CliRunner

from edgekws.cli import app
from edgekws.datasets.gsc import load_gsc
from edgekws.datasets.us8k import load_us8k
from edgekws.features import FeatureConfig
from edgekws.server.data import prepare
from edgekws.server.experiments import (
    PAPER,
    ExperimentConfig,
    budget_points,
    calls_clock,
    load_reference,
    quick_config,
    report_markdown,
    run_experiment,
    write_report,
)
from edgekws.server.rfad import distill
from test_datasets import make_gsc, make_us8k

WORDS = ("yes", "no", "up")
TINY_NET = {"widths": (8, 8, 8, 8)}


def tiny(**kw):
    """An even smaller --quick: one seed, budgets of 2 and 4 per class and half the pool, one short epoch."""
    base = dict(seeds=(0,), per_class=(2, 4), fractions=(0.5,), seed_per_class=1, epochs=1, min_steps_per_epoch=2,
                mc_passes=3, model_kwargs=TINY_NET)
    base.update(kw)
    cfg = quick_config(**base)
    cfg.rfad = dataclasses.replace(cfg.rfad, steps=2, eval_every=1, batch_size=64, width=8)
    return cfg


@pytest.fixture(scope="module")
def speech(tmp_path_factory):
    root = make_gsc(tmp_path_factory.mktemp("exp") / "gsc", words=WORDS, speakers=40, per_speaker=2)
    return load_gsc(root, keywords=WORDS)


def test_experiment_runs_every_case_and_resumes(speech, tmp_path):
    events = []
    report = run_experiment(speech, tiny(), tmp_path / "work", progress=events.append)
    n_pool = report["splits"]["None"]["train"]
    rows = {(r["method"], r["point"]): r for r in report["summary"]}
    for method in ("random", "entropy", "variation_ratios", "bald"):
        assert rows[(method, "pc2")]["labelled"] == 6 and rows[(method, "pc4")]["labelled"] == 12
        assert rows[(method, "frac0.5")]["labelled"] == round(0.5 * n_pool)
    assert rows[("rfad", "pc2")]["labelled"] == 6 and rows[("rfad", "pc4")]["labelled"] == 12
    assert rows[("random_mse", "pc2")]["labelled"] == 6 and rows[("random_mse", "pc4")]["labelled"] == 12
    assert ("full", "full") not in rows  # --quick skips the full-data run
    for r in report["summary"]:
        assert 0.0 <= r["accuracy"]["mean"] <= 100.0 and r["accuracy"]["n"] == 1
        assert r["percent"] == pytest.approx(100.0 * r["labelled"] / n_pool)
    cases = [e for e in events if e["event"] == "experiment"]
    assert [e["done"] for e in cases] == list(range(1, 9)) and cases[-1]["total"] == 8
    assert any(e["event"] == "distill" for e in events)
    # a rerun finds every case finished: nothing is trained or distilled again, the numbers are the same
    again = []
    report2 = run_experiment(speech, tiny(), tmp_path / "work", progress=again.append)
    assert report2["summary"] == report["summary"]
    assert report2["calls"] == 2 and report2["wall_seconds_all_calls"] > report["wall_seconds_all_calls"]
    assert not report2["calls_overlap"] and "over 2 calls (a rerun resumes finished cases)." in report_markdown(report2)
    side = {"wall_seconds_all_calls": 160.0, "call_seconds_all_calls": 210.0, "calls": 3, "calls_overlap": True}
    assert ("Wall time: 2.7 min over 3 calls, some side by side (3.5 min of call time in all)."
            in report_markdown({**report2, **side}))
    assert not [e for e in again if e["event"] in ("al_epoch", "distill")]


def test_a_call_right_after_another_is_not_counted_as_side_by_side(speech, tmp_path, monkeypatch):
    """A call's recorded interval starts when the call does: time it spends before its first case (here made long
    on purpose) must not push its end past the start of the next call."""
    import time

    import edgekws.server.experiments as ex

    real, seen = ex._is_cross_validated, []

    def slow_first_call(ds):
        if not seen:
            time.sleep(0.5)  # the first call is slow to look at its dataset
        seen.append(ds)
        return real(ds)

    monkeypatch.setattr(ex, "_is_cross_validated", slow_first_call)
    cfg = tiny(strategies=("random",), per_class=(2,), fractions=(), random_mse=False)
    first = run_experiment(speech, cfg, tmp_path / "work")
    second = run_experiment(speech, cfg, tmp_path / "work")  # at once: every case is finished
    assert first["calls"] == 1 and second["calls"] == 2
    assert not second["calls_overlap"], second
    assert second["wall_seconds_all_calls"] == pytest.approx(second["call_seconds_all_calls"])
    assert first["wall_seconds_all_calls"] >= 0.5  # the slow start is part of the call


def test_report_has_the_papers_numbers_beside_ours_and_a_log_plot(speech, tmp_path):
    report = run_experiment(speech, tiny(strategies=("random", "bald")), tmp_path / "work")
    paths = write_report(report, tmp_path / "out", "al_test")
    md = paths["md"].read_text()
    assert "| Random | 2/class | 6 |" in md and "| BALD | 50 % of pool |" in md
    # the paper's RFAD 50/class and full-data numbers (ResNet-18) are shown, cited, and not claimed as ours
    assert f"not run | {PAPER['gsc']['rfad_50']:.2f} |" in md and f"not run | {PAPER['gsc']['full']:.2f} |" in md
    assert "Gudur & Thomaz" in md
    main_rows = [line for line in md.splitlines() if line.startswith(("| Random |", "| BALD |")) and "% of pool" in
                 line or "/class |" in line and line.startswith(("| Random |", "| BALD |"))]
    assert len(main_rows) == 6
    for line in main_rows:
        assert line.endswith("| – |")  # no invented paper numbers for the AL rows
    blob = json.loads(paths["json"].read_text())
    assert blob["summary"] == report["summary"] and blob["paper"]["rfad_50"] == 72.24
    assert paths["png"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # the RFAD row at 50/class gets the paper's number in the same row when we ran it
    fake = dict(report, summary=[dict(r, point="pc50") for r in report["summary"] if r["method"] == "rfad"][:1])
    assert "| RFAD coreset | 50/class |" in report_markdown(fake) and "| 72.24 |" in report_markdown(fake)


def test_calls_clock_counts_side_by_side_calls_once(tmp_path):
    calls = tmp_path / "calls"
    calls.mkdir()
    for name, start, seconds in (("a", 1000.0, 100.0), ("b", 1050.0, 100.0), ("c", 2000.0, 10.0)):
        (calls / f"{name}.json").write_text(json.dumps({"start": start, "seconds": seconds}))
    (calls / "torn.json").write_text("{")  # unreadable records are skipped
    clock = calls_clock(tmp_path)
    # a and b overlap: 1000..1150 is 150 s of wall time; c adds 10 s; the calls themselves took 210 s
    assert clock == {"wall_seconds_all_calls": 160.0, "call_seconds_all_calls": 210.0, "calls": 3,
                     "calls_overlap": True}
    (tmp_path / "elapsed.json").write_text(json.dumps({"seconds": 40.0, "calls": 2}))  # an older folder's total
    assert calls_clock(tmp_path)["wall_seconds_all_calls"] == 200.0 and calls_clock(tmp_path)["calls"] == 5


def test_reuses_only_matching_coresets(speech, tmp_path):
    cfg = tiny(strategies=("random",), per_class=(2,), fractions=())
    prep = prepare(speech, FeatureConfig(normalization="global", clip_seconds=speech.clip_seconds))
    _, x, y = prep.subset("train")
    _, xv, yv = prep.subset("val")
    rcfg = dataclasses.replace(cfg.rfad, per_class=2, seed=0)
    done = tmp_path / "done"
    distill(x, y, xv, yv, prep.class_names, prep.feature_cfg, rcfg).save(done / "coreset_pc2_s0.npz")
    events = []
    report = run_experiment(speech, dataclasses.replace(cfg, coreset_dirs=(str(done),)), tmp_path / "w1",
                            progress=events.append)
    assert report["runs"]["rfad"][0]["coreset"] == str(done / "coreset_pc2_s0.npz")
    assert not [e for e in events if e["event"] == "distill"]
    # the report describes the coreset with the settings it was made with, and says where it came from
    made = dataclasses.replace(rcfg, steps=rcfg.steps + 1)
    md = report_markdown(dict(report, runs=dict(report["runs"], rfad=[
        dict(report["runs"]["rfad"][0], rfad_config=made.to_dict())])))
    assert f"RFAD: {made.steps} steps max, {made.n_models} of {made.pool_size} random ConvNets" in md
    assert f"Coresets reused from `{done}`." in md
    # features normalised per utterance do not match this split's global statistics: distilled afresh, noted
    other = prepare(speech, FeatureConfig(normalization="utterance", clip_seconds=speech.clip_seconds))
    wrong = tmp_path / "wrong"
    _, xo, yo = other.subset("train")
    _, xvo, yvo = other.subset("val")
    distill(xo, yo, xvo, yvo, other.class_names, other.feature_cfg, rcfg).save(wrong / "coreset_pc2_s0.npz")
    report = run_experiment(speech, dataclasses.replace(cfg, coreset_dirs=(str(wrong),)), tmp_path / "w2")
    assert report["runs"]["rfad"][0]["coreset"].startswith("distilled here")
    assert any("other features or another training split" in n for n in report["notes"])


def test_cross_validated_dataset_runs_per_fold(tmp_path):
    ds = load_us8k(make_us8k(tmp_path / "us8k", per_fold=10))
    cfg = tiny(strategies=("random", "entropy"), per_class=(1,), fractions=(0.5,), folds=("1", "3"), full_data=True)
    report = run_experiment(ds, cfg, tmp_path / "work")
    full = next(r for r in report["summary"] if r["method"] == "full")
    assert full["labelled"] == 60 and full["percent"] == 100.0
    assert report["cross_validated"] and report["folds"] == ["1", "3"]
    assert set(report["splits"]) == {"1", "3"} and report["splits"]["1"]["train"] == 60
    for r in report["summary"]:
        assert r["accuracy"]["n"] == 2  # one run per test fold
    assert {r["fold"] for r in report["runs"]["active_learning"]} == {"1", "3"}
    assert "2 test fold(s) 1, 3" in report_markdown(report)
    with pytest.raises(ValueError, match="no fold '9'"):
        run_experiment(ds, tiny(folds=("9",)), tmp_path / "bad")


def test_budget_points_share_nearly_equal_sizes():
    points, skipped = budget_points((20, 30, 50), (0.1, 0.2, 0.3, 0.4, 0.5, 0.6), 10, 2509)
    # 20 % of 2,509 (502) is within 1 % of the pool of 50/class (500): one net serves both points
    assert points[500] == ["pc50", "frac0.2"] and 502 not in points
    assert sorted(points) == [200, 251, 300, 500, 753, 1004, 1254, 1505] and skipped == []
    points, skipped = budget_points((5, 50), (0.5,), 10, 300)
    assert points == {50: ["pc5"], 150: ["frac0.5"]} and skipped == [50]


def test_config_and_input_errors(speech, tmp_path):
    with pytest.raises(ValueError, match="--folds applies to cross-validated"):
        run_experiment(speech, tiny(folds=("1",)), tmp_path / "w")
    with pytest.raises(ValueError, match="must not exceed the smallest coreset"):
        ExperimentConfig(per_class=(5, 10), seed_per_class=6)
    with pytest.raises(ValueError, match="unknown acquisition strategy"):
        ExperimentConfig(strategies=("random", "margin"))
    with pytest.raises(ValueError, match="fractions"):
        ExperimentConfig(fractions=(0.0,))
    with pytest.raises(FileNotFoundError):
        load_reference(tmp_path / "missing.json")
    (tmp_path / "bad.json").write_text("{}")
    with pytest.raises(ValueError, match="not a baselines result"):
        load_reference(tmp_path / "bad.json")


def test_cli_tables(tmp_path):
    root = make_gsc(tmp_path / "gsc", words=WORDS, speakers=40, per_speaker=2)
    runner = CliRunner()
    args = ["experiment", "tables", "--dataset", "gsc", "--data-dir", str(root), "--keywords", ",".join(WORDS),
            "--model", "cnn4", "--quick", "--seeds", "0", "--per-class", "2", "--fractions", "0.25",
            "--seed-per-class", "1", "--epochs", "1", "--min-steps", "1", "--mc-passes", "2", "--rfad-steps", "1",
            "--strategies", "random,bald", "--out", str(tmp_path / "out"), "--work-dir", str(tmp_path / "work")]
    res = runner.invoke(app, args)
    assert res.exit_code == 0, res.output
    md = (tmp_path / "out" / "al_gsc_cnn4.md").read_text()
    assert "| BALD | 25 % of pool |" in md and "| RFAD coreset | 2/class |" in md
    assert (tmp_path / "out" / "al_gsc_cnn4.png").is_file()
    bad = runner.invoke(app, ["experiment", "tables", "--dataset", "gsc"])
    assert bad.exit_code == 2 and "--data-dir" in bad.output  # no download in tests: says how to set it up
    bad = runner.invoke(app, ["experiment", "tables", "--dataset", "mnist", "--data-dir", str(root)])
    assert bad.exit_code == 2 and "unknown dataset 'mnist'" in bad.output
    bad = runner.invoke(app, args[:-4] + ["--seeds", "a,b"])
    assert bad.exit_code == 2 and "--seeds" in bad.output
    bad = runner.invoke(app, ["experiment", "tables", "--dataset", "gsc", "--data-dir", str(root), "--folds", "1",
                              "--keywords", ",".join(WORDS), "--work-dir", str(tmp_path / "w2"),
                              "--out", str(tmp_path / "o2")])
    assert bad.exit_code == 2 and "fixed train/val/test split" in bad.output
