"""``fer-analyze`` (fer_analysis): gradients do what they claim, TF and ONNX saliency agree, every subcommand draws, errors are one line."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("tensorflow")
pytestmark = pytest.mark.tf

from typer.testing import CliRunner  # noqa: E402

from fer_analysis.cli import app  # noqa: E402
from fer_analysis.confusion import top_confused_pairs  # noqa: E402
from fer_analysis.figures import DPI, grid_pixels  # noqa: E402
from fer_export.verify import COS_TOL  # noqa: E402
from fer_runtime.exitcodes import FATAL  # noqa: E402
from fer_train import runs  # noqa: E402
from fer_train.fit import TrainConfig, fit  # noqa: E402
from fer_train.models import ModelConfig  # noqa: E402
from fer_train.pipeline import AugmentConfig  # noqa: E402

FIX = Path(__file__).parent / "fixtures" / "fer2013_small.csv.gz"
TINY = ModelConfig(filters=4, blocks=2, convs_per_block=1, units=8, conv_dropout=0.0, dense_dropout=0.0)


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    """A tiny CNN trained 8 epochs on the fixture (best.keras by PublicTest, last.keras fits Training well)."""
    r = tmp_path_factory.mktemp("analyze") / "run"
    cfg = TrainConfig(data=str(FIX), epochs=8, batch_size=32, lr=3e-3, schedule="constant", warmup_epochs=0,
                      augment=AugmentConfig(enabled=False))
    fit(r, TINY, cfg, log=lambda s: None)
    return r


@pytest.fixture(scope="module")
def fitted(run) -> Path:
    """A small CNN without batch norm fitted to Training (a few epochs of BN moving averages would be too stale)."""
    r = run.parent / "fitted"
    cfg = TrainConfig(data=str(FIX), epochs=16, batch_size=32, lr=3e-3, schedule="constant", warmup_epochs=0,
                      augment=AugmentConfig(enabled=False))
    fit(r, ModelConfig(filters=8, blocks=2, convs_per_block=1, units=32, conv_dropout=0.0, dense_dropout=0.0,
                       batch_norm=False), cfg, log=lambda s: None)
    return r


@pytest.fixture(scope="module")
def dnn(run) -> Path:
    r = run.parent / "dnn"
    cfg = TrainConfig(data=str(FIX), epochs=2, batch_size=32, schedule="constant", warmup_epochs=0,
                      augment=AugmentConfig(enabled=False))
    fit(r, ModelConfig(arch="dnn", units=8, dense_dropout=0.0), cfg, log=lambda s: None)
    return r


def _png_size(path: Path) -> tuple[int, int]:
    head = Path(path).read_bytes()[:24]
    assert head[:8] == b"\x89PNG\r\n\x1a\n", path
    return int.from_bytes(head[16:20], "big"), int.from_bytes(head[20:24], "big")


def _assert_size(path: Path, nominal: tuple[int, int]) -> None:
    """Tight cropping trims margins only: each side within 80-105% of the nominal grid size."""
    w, h = _png_size(path)
    assert 0.8 * nominal[0] <= w <= 1.05 * nominal[0] and 0.8 * nominal[1] <= h <= 1.05 * nominal[1], \
        (path.name, (w, h), nominal)


def _invoke(*args: str):
    return CliRunner().invoke(app, [*map(str, args)])


# ---- plain numpy helpers -------------------------------------------------------------------------

def test_top_confused_pairs_are_row_normalised():
    cm = np.zeros((7, 7), int)
    cm[0, 0], cm[0, 2] = 5, 5  # Angry -> Fear 50%
    cm[3, 3], cm[3, 4] = 90, 10  # Happy -> Sad 10% (more errors, lower rate)
    cm[1, 1] = 3
    pairs = top_confused_pairs(cm, 5)
    assert [(p["true"], p["predicted"]) for p in pairs] == [("Angry", "Fear"), ("Happy", "Sad")]
    assert pairs[0]["rate"] == pytest.approx(0.5) and pairs[1]["count"] == 10 and pairs[1]["support"] == 100


# ---- gradients -----------------------------------------------------------------------------------

def test_gradient_ascent_raises_the_target_filters_activation(run):
    from fer_analysis.filters import filter_ascent
    from fer_train.inference import load_models

    model = load_models(run)[0]
    for layer in ("b1c1_conv", "b2c1_conv"):
        imgs, first, last = filter_ascent(model, layer, steps=30, seed=1)
        assert imgs.shape == (len(first), 48, 48) and 0 <= imgs.min() and imgs.max() <= 255
        assert (last > first).all(), (layer, first, last)
        assert (last - first).mean() > 0.1 * np.abs(first).mean() + 1e-3


def test_fgsm_lowers_accuracy_of_a_trained_model(fitted):
    from fer_analysis.adversarial import fgsm, ifgsm, loss_gradient_fn
    from fer_train.data import load_source
    from fer_train.inference import load_models, predict_probs

    models = load_models(fitted / runs.LAST)  # fitted to Training, so it has accuracy to lose there
    tr = load_source(FIX)["Training"]
    x, y = tr.x[:160].astype(np.float32), tr.y[:160]
    acc = lambda xs: float((predict_probs(models, xs).argmax(1) == y).mean())  # noqa: E731
    clean = acc(x)
    assert clean > 0.6
    g = loss_gradient_fn(models)
    adv2, adv8 = fgsm(g, x, y, 2.0), fgsm(g, x, y, 8.0)
    assert np.abs(adv2 - x).max() <= 2.0 + 1e-4 and adv8.min() >= 0 and adv8.max() <= 255
    a2, a8 = acc(adv2), acc(adv8)
    assert a2 < clean - 0.05 and a8 < a2, (clean, a2, a8)
    it = ifgsm(g, x, y, 2.0, steps=5)
    assert np.abs(it - x).max() <= 2.0 + 1e-4 and acc(it) <= a2 + 0.02
    assert np.abs(adv2 - x).max() == pytest.approx(2.0, abs=1e-4)  # a full step of eps, not a smaller one


def test_onnx_and_tf_saliency_agree(run, tmp_path):
    from fer_analysis.onnx_saliency import exported_saliency
    from fer_export.exporter import export_models
    from fer_runtime.numeric import cosine_similarity
    from fer_train.data import load_source
    from fer_train.inference import load_models, reference_saliency

    model_dir = tmp_path / "model"
    export_models([run], model_dir, verify_count=8, temperature=2.0, tta="flip")  # the agreement must allow for both
    pub = load_source(FIX)["PublicTest"]
    x = np.concatenate([pub.x[:21].astype(np.float32), np.full((1, 48, 48, 1), 128.0, np.float32)])
    cls = np.arange(len(x)) % 7
    ref = reference_saliency(load_models(run), x, cls, tta="flip")
    with exported_saliency(run, model_dir) as sal:
        got, probs = sal(x, cls)
    assert got.shape == ref.shape == (22, 48, 48, 1) and np.abs(ref).max() > 0
    assert cosine_similarity(got, ref).min() >= COS_TOL
    assert np.allclose(probs.sum(1), 1, atol=1e-5)

    # The same check through the CLI, which records the agreement it measured.
    r = _invoke("saliency", run, "--engine", "onnx", "--model-dir", model_dir, "--index", 3, "--index", 5,
                "--mean-per-class", 0, "--out", tmp_path / "sal")
    assert r.exit_code == 0, r.output
    agr = json.loads((tmp_path / "sal" / "saliency.json").read_text())["engine_agreement"]
    assert agr["cosine_min"] >= COS_TOL and agr["probs_max_abs_diff"] < 1e-4 and agr["model_dir"] == str(model_dir)
    assert agr["tta"] == "flip"


# ---- every subcommand, on a tiny model -----------------------------------------------------------

def test_each_subcommand_writes_images_of_the_expected_size(run, dnn, tmp_path):
    out = tmp_path / "a"
    r = _invoke("confusion", run, "--out", out)
    assert r.exit_code == 0, r.output
    _assert_size(out / "confusion.png", (round(6.8 * 110), round(5.8 * 110)))  # fer_train.plots.plot_confusion
    pairs = json.loads((out / "confusion.json").read_text())["pairs"]
    assert pairs and all(0 < p["rate"] <= 1 for p in pairs)
    assert (out / "confused_pairs.png").exists() and (out / "confused_pairs.csv").exists()

    r = _invoke("saliency", run, "--index", 0, "--index", 1, "--index", 2, "--mean-per-class", 3, "--out", out)
    assert r.exit_code == 0, r.output
    _assert_size(out / "saliency.png", grid_pixels(3, 3))
    _assert_size(out / "saliency_mean.png", grid_pixels(1, 7))
    s = json.loads((out / "saliency.json").read_text())
    assert [i["image"] for i in s["images"]] == ["#0", "#1", "#2"] and s["threshold"] == 0.6

    r = _invoke("saliency", run, "--engine", "onnx", "--mean-per-class", 0, "--out", out / "onnx")  # exported now
    assert r.exit_code == 0, r.output
    _assert_size(out / "onnx" / "saliency.png", grid_pixels(7, 3))  # one per class
    assert json.loads((out / "onnx" / "saliency.json").read_text())["engine_agreement"]["cosine_min"] >= COS_TOL

    r = _invoke("filters", run, "--layer", "b2c1_conv", "--steps", 5, "--out", out)
    assert r.exit_code == 0, r.output
    _assert_size(out / "filters.png", grid_pixels(1, 8, panel=1.2))  # 8 filters in one row
    assert len((out / "filters.csv").read_text().splitlines()) == 1 + 8

    r = _invoke("layer-outputs", run, "--layer", "b1c1_relu", "--index", 4, "--out", out)
    assert r.exit_code == 0, r.output
    _assert_size(out / "layer_outputs.png", grid_pixels(1, 5, panel=1.2, caption=0.24))  # image + 4 maps
    assert json.loads((out / "layer_outputs.json").read_text())["shape"] == [48, 48, 4]

    r = _invoke("class-max", run, "--steps", 8, "--out", out)
    assert r.exit_code == 0, r.output
    _assert_size(out / "class_max.png", grid_pixels(1, 7, panel=1.6))

    r = _invoke("adversarial", run, "-n", 30, "--steps", 2, "--examples", 2, "--out", out)
    assert r.exit_code == 0, r.output
    adv = json.loads((out / "adversarial.json").read_text())
    assert [t["eps_pixels"] for t in adv["table"]] == [0, 1, 2, 4, 8] and adv["n"] == 30
    _assert_size(out / "adversarial_accuracy.png", (round(6.0 * DPI), round(3.8 * DPI)))
    _assert_size(out / "adversarial_examples.png", grid_pixels(len(adv["examples"]), 3))

    r = _invoke("mistakes", run, "--pairs", 2, "--per-pair", 4, "--out", out)
    assert r.exit_code == 0, r.output
    _assert_size(out / "mistakes.png", grid_pixels(2, 5, panel=1.2))

    r = _invoke("compare", run, dnn, "--out", out)
    assert r.exit_code == 0, r.output
    _assert_size(out / "compare.png", (round(15 * DPI), round(4.2 * DPI)))
    arch = [s["arch"] for s in json.loads((out / "compare.json").read_text())["runs"]]
    assert arch == ["cnn", "dnn"]


def test_report_is_one_self_contained_html_file(run, dnn, tmp_path):
    out = tmp_path / "report"
    r = _invoke("report", run, "--compare", dnn, "--out", out, "--steps", 4, "--adversarial-n", 20)
    assert r.exit_code == 0, r.output
    page = (out / "report.html").read_text()
    figures = sorted(out.glob("*.png"))
    assert len(figures) == 11 and page.count('src="data:image/png;base64,') == len(figures)
    assert "src=\"http" not in page and "<link" not in page and "<script" not in page
    for anchor in ("compare", "confusion", "mistakes", "saliency", "filters", "layer_outputs", "class_max", "adversarial"):
        assert f'id="{anchor}"' in page
    assert "Key findings" in page and json.loads((out / "report.json").read_text())["compare"] == str(dnn)


# ---- bad arguments -------------------------------------------------------------------------------

@pytest.mark.parametrize("args, expect", [
    (["filters", "{run}", "--layer", "nope"], "unknown layer 'nope'; choose from b1c1_conv, b2c1_conv"),
    (["layer-outputs", "{run}", "--layer", "nope"], "choose from b1c1_conv, b1c1_bn, b1c1_relu, b1_pool, b2c1_conv"),
    (["saliency", "{run}", "--image", "{tmp}/missing.png"], "missing.png: no such file; give an existing bmp/jpeg/jpg/png"),
    (["layer-outputs", "{run}", "--image", "{tmp}/missing.png"], "missing.png: no such file"),
    (["saliency", "{run}", "--engine", "torch"], "unknown --engine 'torch'; choose from tf, onnx"),
    (["saliency", "{run}", "--index", "70"], "--index 70 is out of range; PublicTest has rows 0..69"),
    (["confusion", "{run}", "--split", "Holdout"], "split 'Holdout' not in"),
    (["confusion", "{tmp}/no_run"], "no such run"),
    (["filters", "{dnn}"], "has no Conv2D layers (a DNN?)"),
    (["saliency", "{run}", "--per-class", "0"], "--per-class must be >= 1, got 0"),
    (["confusion", "{run}", "--top", "-1"], "--top must be >= 1, got -1"),
    (["adversarial", "{run}", "--eps", "nan"], "epsilons must be within 0..255 pixel units"),
    (["adversarial", "{run}", "--eps", "1", "--eps", "2"], "--example-eps 4 is not among the epsilons 1, 2"),
    (["report", "{run}", "--filter-layer", "nope", "--out", "{tmp}/r"], "unknown layer 'nope'; choose from b1c1_conv"),
    (["report", "{run}", "--map-layer", "nope", "--out", "{tmp}/r"], "unknown layer 'nope'"),
    (["report", "{run}", "--steps", "0", "--out", "{tmp}/r"], "--steps must be >= 1, got 0"),
    (["report", "{tmp}/typo"], "no such run"),
    (["report", "{run}", "--split", "Holdout", "--out", "{tmp}/r"], "Holdout"),
])
def test_bad_arguments_give_one_line_errors(run, dnn, tmp_path, args, expect):
    args = args if "--out" in args or "{tmp}" in args[1] else [*args, "--out", "{tmp}/r"]
    r = _invoke(*[a.format(run=run, dnn=dnn, tmp=tmp_path) for a in args])
    assert r.exit_code == FATAL, r.output
    err = r.stderr.strip()
    assert err.startswith("error: ") and "\n" not in err and expect in err, err
    assert r.exception is None or isinstance(r.exception, SystemExit), r.exception  # no escaped exception
    assert not (tmp_path / "r").exists() and not (tmp_path / "analysis").exists()  # no output folder left behind


def test_a_failed_command_removes_only_the_folders_it_made(run, tmp_path):
    """A new nested --out goes entirely; a folder the user already had stays, even empty."""
    r = _invoke("confusion", run, "--split", "Holdout", "--out", tmp_path / "new" / "a" / "b")
    assert r.exit_code == FATAL and not (tmp_path / "new").exists(), r.output
    (tmp_path / "mine").mkdir()
    r = _invoke("confusion", run, "--split", "Holdout", "--out", tmp_path / "mine")
    assert r.exit_code == FATAL and (tmp_path / "mine").is_dir(), r.output


@pytest.mark.parametrize("args", [["saliency", "{run}", "--engine", "torch"], ["report", "{run}", "--engine", "torch"],
                                  ["saliency", "{run}", "--image", "{tmp}/missing.png"]])
def test_checks_that_need_no_tensorflow_fail_before_it_is_imported(run, tmp_path, monkeypatch, args):
    imported = []
    monkeypatch.setattr("fer_train.tf_env.import_tensorflow", imported.append)
    r = _invoke(*[a.format(run=run, tmp=tmp_path) for a in args])
    assert r.exit_code == FATAL and r.stderr.startswith("error: ") and imported == [], r.output


def test_report_of_a_dnn_leaves_out_the_convolution_sections(dnn, tmp_path):
    out = tmp_path / "report"
    r = _invoke("report", dnn, "--out", out, "--steps", 2, "--adversarial-n", 10)
    assert r.exit_code == 0, r.output
    page = (out / "report.html").read_text()
    assert 'id="saliency"' in page and 'id="class_max"' in page and 'id="adversarial"' in page
    assert 'id="filters"' not in page and 'id="layer_outputs"' not in page


def test_onnx_saliency_without_onnxruntime_is_an_analysis_error_the_report_falls_back_on(model_dir, monkeypatch):
    import sys

    from fer_analysis.inputs import AnalysisError
    from fer_analysis.onnx_saliency import open_model_dir

    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # as if not installed
    with pytest.raises(AnalysisError, match="onnxruntime cannot be imported"):
        open_model_dir(model_dir)


def test_a_missing_extra_in_the_on_the_fly_export_keeps_its_own_message(tmp_path, monkeypatch):
    from fer_analysis.inputs import AnalysisError
    from fer_analysis.onnx_saliency import exported_saliency
    from fer_export import exporter
    from fer_runtime.errors import MissingDependencyError

    said = "onnxruntime is not installed; install the 'cpu' extra"

    def export_models(*args, **kwargs):
        raise MissingDependencyError(said)

    monkeypatch.setattr(exporter, "export_models", export_models)
    with pytest.raises(AnalysisError) as e:
        with exported_saliency(tmp_path / "run"):
            pass
    assert str(e.value) == f"exporting {tmp_path / 'run'} to ONNX: {said}"


def test_two_runs_share_loaded_data_only_if_they_drew_the_same_validation_rows(tmp_path: Path) -> None:
    """compare/report --compare load the data once for two runs of the same file (their config.json paths, being
    relative to each run, differ as text), but never when the runs drew different validation rows: b's ``val``
    would be a's validation rows, which b trained on."""
    import gzip

    from fer_analysis.inputs import Target, share_data
    from fer_train.config import stored_inputs

    rows = [line.split(",") for line in gzip.decompress(FIX.read_bytes()).decode().splitlines()[1:]]
    course = tmp_path / "train.csv"
    course.write_text("label,feature\n" + "".join(f"{e},{px}\n" for e, px, _ in rows))
    for name, seed in (("x/a", 1), ("y/b", 1), ("y/c", 2)):
        d = tmp_path / name
        d.mkdir(parents=True)
        (d / runs.BEST).write_bytes(b"")
        cfg = stored_inputs(TrainConfig(data=str(course), random_seed=seed), d)
        runs.write_json(d / runs.CONFIG, {"model": TINY.to_dict(), "train": cfg.to_dict()})
    a, b, c = (Target(tmp_path / n, "val") for n in ("x/a", "y/b", "y/c"))
    share_data(a, b)
    assert b._source is a.source  # same file, same validation rows: loaded once
    share_data(a, c)
    assert c._source is None
    assert not np.array_equal(c.split.x, a.split.x)  # c's own validation rows


def test_saliency_of_image_files_needs_the_runs_data_only_for_the_class_means(run, tmp_path):
    """--image with --mean-per-class 0 runs where the training data is not (a deployment machine); with the class
    means, a missing data file is a one-line error that leaves no figure behind."""
    import shutil

    face = tmp_path / "face.png"
    shutil.copy(Path(__file__).parents[1] / "examples" / "images" / "happy_0.png", face)
    gone = tmp_path / "gone.csv"
    r = _invoke("saliency", run, "--image", face, "--data", gone, "--mean-per-class", 0, "--out", tmp_path / "a")
    assert r.exit_code == 0, r.output
    assert (tmp_path / "a" / "saliency.png").exists() and not (tmp_path / "a" / "saliency_mean.png").exists()
    r = _invoke("saliency", run, "--image", face, "--data", gone, "--out", tmp_path / "b")
    assert r.exit_code == FATAL and "gone.csv" in r.output and len(r.output.strip().splitlines()) == 1, r.output
    assert not list((tmp_path / "b").glob("*.png"))


def test_the_report_never_names_a_class_absent_from_the_split_as_hardest() -> None:
    from fer_analysis.report import _key_findings
    from fer_runtime.labels import LABELS

    recall = dict(zip(LABELS, [0.5, 0.0, 0.3, 0.9, 0.4, 0.8, 0.6]))
    support = dict(zip(LABELS, [10, 0, 10, 10, 10, 10, 10]))  # no Disgust row: its recall 0 means nothing
    html = _key_findings({"confusion": {"summary": {"split": "val", "accuracy": 0.6, "balanced_accuracy": 0.58, "n": 60,
                                                    "recall": recall, "support": support, "pairs": []}}})
    assert "hardest: Fear (30.0%), Sad (40.0%)" in html and "Disgust" not in html, html
