import csv
import errno
import json
import os

import numpy as np
import pytest
from PIL import Image

import evaluate_model
import train_vision_mamba
from helpers import assert_one_line_error, assert_png, run_main, run_script, train_args

REPORTS = ["metrics.json", "classification_report.txt", "confusion_matrix.png", "confusion_matrix.csv",
           "per_class_accuracy.png", "sample_predictions.png", "misclassified.png"]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    assert train_vision_mamba.main(train_args(out, epochs=2)) == 0
    return out / "checkpoints" / "vision_mamba_digits" / "best_model.pth"


@pytest.mark.parametrize("split", ["test", "val"])
def test_evaluation_writes_consistent_reports(checkpoint, tmp_path, split, capsys):
    out = tmp_path / "ev"
    assert evaluate_model.main(["--checkpoint", str(checkpoint), "--output_dir", str(out), "--split", split,
                                "--num_samples", "12"]) == 0
    assert sorted(os.listdir(out)) == sorted(REPORTS)
    metrics = json.loads((out / "metrics.json").read_text())
    with open(out / "confusion_matrix.csv") as f:
        rows = list(csv.reader(f))
    cm = np.array([[int(v) for v in row[1:]] for row in rows[1:]])
    assert rows[0][1:] == [str(i) for i in range(10)]
    assert metrics["num_samples"] == cm.sum() == (360 if split == "test" else 216)
    assert metrics["accuracy"] == pytest.approx(np.trace(cm) / cm.sum())
    per_class = np.diag(cm) / cm.sum(1)
    assert [metrics["per_class_accuracy"][str(i)] for i in range(10)] == pytest.approx(per_class.tolist())
    recall = np.diag(cm) / cm.sum(1)
    assert metrics["macro"]["recall"] == pytest.approx(recall.mean())
    precision = np.divide(np.diag(cm), cm.sum(0), out=np.zeros(10), where=cm.sum(0) > 0)
    assert metrics["macro"]["precision"] == pytest.approx(precision.mean())
    assert metrics["split"] == split and metrics["checkpoint_epoch"] >= 1 and metrics["loss"] > 0
    assert "macro avg" in (out / "classification_report.txt").read_text()
    for name in REPORTS:
        if name.endswith(".png"):
            assert_png(out / name)
    printed = capsys.readouterr().out
    assert "accuracy" in printed and f"{metrics['accuracy']:.4f}" in printed


def test_predicting_on_user_images(checkpoint, tmp_path, capsys):
    paths = []
    for i, size in enumerate((8, 20, 64)):
        path = tmp_path / f"digit{i}.png"
        Image.fromarray(np.random.default_rng(i).integers(0, 255, (size, size, 3), dtype=np.uint8)).save(path)
        paths.append(str(path))
    assert evaluate_model.main(["--checkpoint", str(checkpoint), "--images", *paths, "--top_k", "3"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 3
    for line, path in zip(lines, paths):
        assert line.startswith(path + ":")
        probs = [float(part.split()[-1].rstrip("%")) for part in line.split(":", 1)[1].split(",")]
        assert len(probs) == 3 and probs == sorted(probs, reverse=True) and sum(probs) <= 100.0 + 1e-6
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"nope")
    assert evaluate_model.main(["--checkpoint", str(checkpoint), "--images", str(bad)]) == 2
    assert str(bad) in capsys.readouterr().err


def test_predicting_on_a_folder_of_images(checkpoint, tmp_path, capsys):
    folder = tmp_path / "pictures"
    (folder / "more").mkdir(parents=True)
    for i, name in enumerate(("b.png", "a.jpg", "more/c.PNG")):
        Image.fromarray(np.random.default_rng(i).integers(0, 255, (8, 8, 3), dtype=np.uint8)).save(folder / name,
                                                                                                  format="PNG" if "png" in name.lower() else "JPEG")
    (folder / "notes.txt").write_text("not an image")
    assert evaluate_model.main(["--checkpoint", str(checkpoint), "--images", str(folder)]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert [line.split(":")[0] for line in lines] == [str(folder / "a.jpg"), str(folder / "b.png"), str(folder / "more" / "c.PNG")]
    (tmp_path / "empty").mkdir()
    assert evaluate_model.main(["--checkpoint", str(checkpoint), "--images", str(tmp_path / "empty")]) == 2
    assert "holds no image files" in capsys.readouterr().err


def test_a_report_that_cannot_be_written_is_one_line(checkpoint, tmp_path, monkeypatch, capsys):
    out, real_replace, written = tmp_path / "ev", os.replace, []

    def read_only_after_two(src, dst):  # the folder turns read-only after two reports
        if len(written) == 2:
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), src)
        real_replace(src, dst)
        written.append(os.path.basename(dst))

    monkeypatch.setattr(os, "replace", read_only_after_two)
    result = run_main(evaluate_model.main, ["--checkpoint", str(checkpoint), "--output_dir", str(out)], capsys)
    assert_one_line_error(result, "cannot write", str(out), "Read-only file system", "--output_dir")
    assert sorted(os.listdir(out)) == sorted(written)  # the two written stay; no temporary file left


def test_evaluate_requires_an_output_dir(checkpoint, capsys):
    assert evaluate_model.main(["--checkpoint", str(checkpoint)]) == 2
    assert "--output_dir is required" in capsys.readouterr().err


def test_evaluate_refuses_a_test_time_shift_out_of_range(checkpoint, tmp_path, capsys):
    assert evaluate_model.main(["--checkpoint", str(checkpoint), "--output_dir", str(tmp_path), "--tta_shift", "9"]) == 2
    assert capsys.readouterr().err.strip() == "error: --tta_shift must be 0 (off) to 4 pixels, got 9"


def test_demo_passes(tmp_path):
    result = run_script("demo_training.py", ["--output_dir", str(tmp_path)], timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "PASS" in result.stdout
    for size in ("tiny", "small", "base", "large"):
        assert size in result.stdout
    assert (tmp_path / "logs" / "vision_mamba_demo" / "evaluation" / "metrics.json").exists()
    assert (tmp_path / "checkpoints" / "vision_mamba_demo" / "best_model.pth").exists()


def test_moved_data_is_one_line_naming_data_dir_and_data_dir_finds_it(tmp_path, capsys):
    from helpers import SMALL
    from test_data import write_image_folder
    tree = tmp_path / "tree"
    write_image_folder(str(tree), ("train", "test"))
    assert train_vision_mamba.main(["--config", "imagefolder", "--data_dir", str(tree), "--output_dir", str(tmp_path / "run"),
                                    "--epochs", "1", "--batch_size", "8", *SMALL, "--set", "data.img_size=16"]) == 0
    checkpoint = str(tmp_path / "run" / "checkpoints" / "vision_mamba_imagefolder" / "best_model.pth")
    tree.rename(tmp_path / "moved")
    capsys.readouterr()
    assert evaluate_model.main(["--checkpoint", checkpoint, "--output_dir", str(tmp_path / "ev")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and str(tree) in err[0] and "give --data_dir" in err[0]
    assert not (tmp_path / "ev").exists()
    assert evaluate_model.main(["--checkpoint", checkpoint, "--output_dir", str(tmp_path / "ev"),
                                "--data_dir", str(tmp_path / "moved")]) == 0
    assert json.loads((tmp_path / "ev" / "metrics.json").read_text())["num_samples"] == 24


def test_a_checkpoint_with_grid_convs_and_a_wide_stem_is_rebuilt_and_scores_what_training_reported(tmp_path, capsys):
    from helpers import read_log
    out = tmp_path / "run"
    # no EMA: the checkpoint's weights are the ones the test figure came from, scored the same way (digits
    # cannot be mirrored, so the test-time views are the image and its 1-px translations, in both scripts)
    assert train_vision_mamba.main(train_args(out, "--set", "model.mlp_conv=true", "--set", "model.ssm_conv=2d",
                                              "--set", "model.attn_lsa=true",
                                              "--set", "model.stem=conv9", "--set", "model.stem_width=2",
                                              "--set", "training.ema=false",
                                              "--set", "training.tta_shift=1", epochs=1)) == 0
    checkpoint = out / "checkpoints" / "vision_mamba_digits" / "best_model.pth"
    # by default the test-time views are the run's own
    assert evaluate_model.main(["--checkpoint", str(checkpoint), "--output_dir", str(tmp_path / "ev"), "--num_samples", "4"]) == 0
    metrics = json.loads((tmp_path / "ev" / "metrics.json").read_text())
    assert read_log(out)["test_tta_shift"] == metrics["tta_shift"] == 1
    assert metrics["accuracy"] == pytest.approx(read_log(out)["test_acc"], abs=1e-6)
    assert "test-time views       image + 1-px shifts\n" in capsys.readouterr().out
    # asked for, the mirror is still not applied to digits (a mirrored digit is another digit), and says so
    assert evaluate_model.main(["--checkpoint", str(checkpoint), "--output_dir", str(tmp_path / "ev0"), "--num_samples", "4",
                                "--tta", "--tta_shift", "0"]) == 0
    metrics = json.loads((tmp_path / "ev0" / "metrics.json").read_text())
    assert metrics["tta"] is False and metrics["tta_shift"] == 0
    assert "test-time views       image\n" in capsys.readouterr().out


def test_unknown_backend_setting_exits_2_before_reading_anything(checkpoint, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("VISION_MAMBA_CONV", "cudnn")
    result = run_main(evaluate_model.main, ["--checkpoint", str(checkpoint), "--output_dir", str(tmp_path / "ev")], capsys)
    assert_one_line_error(result, "VISION_MAMBA_CONV='cudnn'", "triton, aten, shifts")
    assert not (tmp_path / "ev").exists()


def test_figures_are_saved_as_opaque_rgb_with_matplotlibs_pixels(tmp_path):
    import io

    import matplotlib.pyplot as plt
    import numpy as np
    from PIL import Image

    from reporting import save_figure
    fig, ax = plt.subplots(figsize=(3, 2))
    ax.plot([0, 1, 2], [2, 0, 1], label="loss")
    ax.legend()
    rendered = io.BytesIO()
    fig.savefig(rendered, format="png", dpi=110, bbox_inches="tight", facecolor="white")
    matplotlibs = np.asarray(Image.open(rendered))
    save_figure(fig, tmp_path / "figure.png")
    with Image.open(tmp_path / "figure.png") as saved:
        assert saved.mode == "RGB"
        ours = np.asarray(saved)
    assert (matplotlibs[..., 3] == 255).all()  # so dropping alpha loses nothing
    assert np.array_equal(ours, matplotlibs[..., :3])
    assert not plt.get_fignums()  # closed
