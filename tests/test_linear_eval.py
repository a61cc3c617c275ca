import copy
import csv
import io
import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tests.conftest import PATTERNS, pattern_images, write_image_folder
from trainer import checkpoint, linear_eval
from trainer.classifier import train_head
from trainer.data import load_split
from trainer.errors import UserError
from trainer.features import extract_features
from trainer.linear_eval import main, retrieval_examples, split_indices
from trainer.models import SimCLR
from trainer.pretrain import main as pretrain_main
from trainer.run_dir import RunDir

HEAD = dict(epochs=30, lr=0.1, weight_decay=0.0, batch_size=64, schedule_step="step", seed=0)


def blobs(n_per_class: int, classes: int, dim: int, seed: int, shift: float):
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(classes, dim, generator=torch.Generator().manual_seed(99)) * shift
    y = torch.arange(classes).repeat_interleave(n_per_class)
    return centres[y] + torch.randn(len(y), dim, generator=g), y


def accuracy(head, x, y):
    with torch.no_grad():
        return (head(x).argmax(1) == y).float().mean().item()


def test_linear_head_separates_separable_features():
    x, y = blobs(100, 5, 32, seed=0, shift=3.0)
    x_test, y_test = blobs(50, 5, 32, seed=1, shift=3.0)
    head, history = train_head(x * 7 + 40, y, 5, **HEAD)  # raw features far from standardised: folding matters
    assert accuracy(head, x_test * 7 + 40, y_test) >= 0.98
    assert history[-1]["loss"] < history[0]["loss"]


def test_head_on_random_labels_stays_near_chance():
    x, _ = blobs(100, 5, 32, seed=0, shift=0.0)
    y = torch.randint(0, 5, (len(x),), generator=torch.Generator().manual_seed(1))
    x_test, _ = blobs(200, 5, 32, seed=2, shift=0.0)
    y_test = torch.randint(0, 5, (len(x_test),), generator=torch.Generator().manual_seed(3))
    head, _ = train_head(x, y, 5, **HEAD)
    assert accuracy(head, x, y) > 0.3  # it fits the training set above chance ...
    assert abs(accuracy(head, x_test, y_test) - 0.2) < 0.08  # ... and learns nothing that transfers


def test_mlp_head_trains_and_keeps_its_best_validation_epoch():
    x, y = blobs(60, 3, 16, seed=0, shift=2.0)
    x_val, y_val = blobs(30, 3, 16, seed=1, shift=2.0)
    head, history = train_head(x, y, 3, hidden_dim=64, dropout=0.5, val=(x_val, y_val), **{**HEAD, "epochs": 8})
    best = max(r["val_top1"] for r in history)
    assert accuracy(head.eval(), x_val, y_val) == pytest.approx(best)
    assert [type(m).__name__ for m in head] == ["Linear", "ReLU", "Dropout", "Linear"]


def test_schedule_steps_per_step_or_per_epoch():
    x, y = blobs(64, 2, 8, seed=0, shift=1.0)
    settings = {**HEAD, "epochs": 4, "batch_size": 16}  # 8 steps per epoch
    _, per_step = train_head(x, y, 2, **{**settings, "schedule_step": "step"})
    _, per_epoch = train_head(x, y, 2, **{**settings, "schedule_step": "epoch"})
    assert per_epoch[0]["lr_first"] == per_epoch[0]["lr_last"] == 0.1  # constant within an epoch
    assert [r["lr_first"] for r in per_epoch] == pytest.approx([0.1 * 0.5 * (1 + torch.cos(torch.tensor(
        3.14159265 * e / 4)).item()) for e in range(4)], rel=1e-4)
    assert per_step[0]["lr_first"] == 0.1 and per_step[0]["lr_last"] < per_step[0]["lr_first"]
    last = 0.1 * 0.5 * (1 + torch.cos(torch.tensor(3.14159265 * 31 / 32)).item())
    assert per_step[-1]["lr_last"] == pytest.approx(last, rel=1e-3)


def test_label_fractions_are_class_balanced_reproducible_and_disjoint_from_the_held_out_splits():
    labels = torch.arange(10).repeat_interleave(500)[torch.randperm(5000, generator=torch.Generator().manual_seed(0))]
    val, cal, train = split_indices(labels, 0.1, 0.1, seed=3, calibration_fraction=0.1)
    assert torch.bincount(labels[val]).tolist() == torch.bincount(labels[cal]).tolist() == [50] * 10
    assert torch.bincount(labels[train]).tolist() == [40] * 10  # a tenth of what the two splits leave
    assert not set(val.tolist()) & set(train.tolist()) and not set(cal.tolist()) & (set(val.tolist()) | set(
        train.tolist()))
    again = split_indices(labels, 0.1, 0.1, seed=3, calibration_fraction=0.1)
    assert all(torch.equal(a, b) for a, b in zip((val, cal, train), again))
    assert not torch.equal(train, split_indices(labels, 0.1, 0.1, seed=4, calibration_fraction=0.1)[2])
    _, no_cal, one_percent = split_indices(labels, 0.0, 0.01, seed=0)
    assert len(no_cal) == 0 and torch.bincount(labels[one_percent]).tolist() == [5] * 10


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory) -> Path:
    """One epoch of pretraining on the pattern images, shared by this module's tests (each copies it)."""
    root = tmp_path_factory.mktemp("pretrained")
    write_image_folder(root / "patterns", "train", *pattern_images(16, seed=0))
    write_image_folder(root / "patterns", "test", *pattern_images(8, seed=1))
    assert pretrain_main(["--data-dir", str(root / "patterns"), "--out", str(root / "run"), "--image-size", "16",
                          "--batch-size", "32", "--epochs", "1", "--device", "cpu", "--knn-every", "0",
                          "--cache-dir", str(root / "cache"), "--no-download"]) == 0
    return root


@pytest.fixture
def tiny_run(tmp_path, pretrained) -> Path:
    shutil.copytree(pretrained, tmp_path, dirs_exist_ok=True)
    return tmp_path / "run"


def eval_args(run: Path, *extra: str) -> list[str]:
    return ["--run", str(run), "--epochs", "5", "--batch-size", "16", "--device", "cpu", "--knn-k", "10",
            "--cache-dir", str(run.parent / "cache"), *extra]


def test_data_is_named_cifar10_for_torchvision_copy_else_by_its_folder(tmp_path):
    (tmp_path / "tv" / "cifar-10-batches-py").mkdir(parents=True)
    (tmp_path / "photos" / "train").mkdir(parents=True)
    assert linear_eval.data_name_of(str(tmp_path / "tv")) == "CIFAR-10"
    assert linear_eval.data_name_of(str(tmp_path / "missing")) == "CIFAR-10"  # downloaded there
    assert linear_eval.data_name_of(str(tmp_path / "photos" / "train" / "..")) == "photos"


def test_retrieval_shows_each_class_first_test_image_and_its_nearest_bank_images():
    bank, _ = blobs(20, 3, 8, seed=0, shift=4)
    test_x, test_y = (t.flip(0) for t in blobs(5, 3, 8, seed=1, shift=4))  # the classes in reverse order
    queries, neighbours, similarities = retrieval_examples(test_x, test_y, bank, k=4)
    assert queries.tolist() == [10, 5, 0] and test_y[queries].tolist() == [0, 1, 2]
    brute = torch.nn.functional.cosine_similarity(test_x[queries, None], bank[None], dim=2)
    torch.testing.assert_close(similarities, brute.sort(dim=1, descending=True).values[:, :4])
    assert torch.equal(neighbours, brute.argsort(dim=1, descending=True)[:, :4])


def test_end_to_end_on_a_tiny_run(tiny_run, capsys):
    assert main(eval_args(tiny_run)) == 0
    printed = capsys.readouterr().out
    assert f"Top 1 Accuracy of class  0 ({sorted(PATTERNS)[0]}) is" in printed
    assert "Top 3 accuracy of the network" in printed
    out = tiny_run / "eval"
    metrics = json.loads((out / "metrics.json").read_text())
    assert (metrics["format"], metrics["format_version"]) == ("simclr-eval-metrics", 1)  # contract.evaluation
    assert metrics["units"] == "fraction" and metrics["count"] == 32
    assert metrics["checkpoint"] == "checkpoints/epoch_0001.pt"
    assert 0 <= metrics["top1"] <= metrics["top3"] <= metrics["top5"] <= 1 and 0 <= metrics["knn_top1"] <= 1
    assert metrics["protocol"]["encoder"] == "frozen" and metrics["protocol"]["train_images"] == 64 - 6
    assert metrics["protocol"]["calibration_images"] == 6  # 10%, held out of the head's training
    assert metrics["protocol"]["data_name"] == "patterns"  # none given: the data folder's name
    assert [r["name"] for r in metrics["per_class"]] == sorted(PATTERNS)
    assert {p.name for p in out.iterdir()} >= {"metrics.json", "report.txt", "confusion.png", "head_curves.png",
                                               "retrieval.png", "classifier.safetensors", "classifier.json",
                                               "reliability.png", "familiarity.safetensors"}
    calibration, familiar = metrics["calibration"], metrics["familiarity"]
    assert calibration["images"] == 6 and calibration["temperature"] > 0
    assert 0 <= calibration["test_ece_after"] <= 1 and 0 <= calibration["test_ece_before"] <= 1
    statistics = load_file(out / "familiarity.safetensors")
    assert statistics["means"].shape == (4, 512) and statistics["precision"].shape == (512, 512)
    assert familiar["images"] == 58 and familiar["threshold"] > 0  # the head's training images
    assert familiar["heldout_accepted"] >= 0.8 and 0 <= familiar["test_accepted"] <= 1
    assert set(familiar["rejected"]) == {"uniform noise", "smooth noise", "flat colour", "stripes and checks"}

    # The saved head, on the raw representation of the checkpoint's encoder, gives the reported accuracy.
    spec = json.loads((out / "classifier.json").read_text())
    assert spec["classes"] == sorted(PATTERNS) and spec["hidden_dims"] == [] and spec["input_dim"] == 512
    assert spec["temperature"] == calibration["temperature"]
    head = torch.nn.Sequential(torch.nn.Linear(512, 4))
    head.load_state_dict(load_file(out / "classifier.safetensors"))
    model = SimCLR()
    model.load_state_dict(checkpoint.load(tiny_run / spec["checkpoint"])["model"])
    test = load_split(tiny_run.parent / "patterns", "test", image_size=16, cache_dir=None)
    with torch.no_grad():
        logits = head(extract_features(model.encoder, test.images, l2_normalize=False))
    predictions = logits.argmax(1)
    assert (predictions == test.labels).sum().item() == metrics["top1_correct"]

    # predictions.csv: each test image's label and top 3, in the test split's order, as the metrics count them.
    rows = list(csv.DictReader(io.StringIO((out / "predictions.csv").read_text())))
    assert [int(r["index"]) for r in rows] == list(range(len(test)))
    assert [r["label"] for r in rows] == [sorted(PATTERNS)[i] for i in test.labels]
    assert [r["top1"] for r in rows] == [sorted(PATTERNS)[i] for i in predictions]
    assert sum(r["label"] in (r["top1"], r["top2"], r["top3"]) for r in rows) == metrics["top3_correct"]
    assert all(1 >= float(r["p1"]) >= float(r["p2"]) >= float(r["p3"]) >= 0 for r in rows)
    calibrated = (logits / spec["temperature"]).softmax(dim=1).max(dim=1).values  # the probabilities served
    assert [float(r["p1"]) for r in rows] == pytest.approx(calibrated.tolist(), abs=1e-4)


def test_the_encoder_is_frozen(tiny_run, monkeypatch):
    seen = {}
    original = linear_eval._source

    def spy(*args):
        source = original(*args)
        seen["encoder"], seen["before"] = source.encoder, copy.deepcopy(source.encoder.state_dict())
        return source

    monkeypatch.setattr(linear_eval, "_source", spy)
    monkeypatch.setenv("HOME", str(tiny_run.parent))  # the data is under the home directory
    assert main(eval_args(tiny_run, "--val-fraction", "0.25", "--weight-decay", "0", "1e-3",
                          "--data-name", "Patterns (PNG copy)", "--data-dir", str(tiny_run.parent / "patterns"))) == 0
    after = seen["encoder"].state_dict()
    assert any("running_mean" in name for name in after)  # BatchNorm statistics are compared too
    for name, value in seen["before"].items():
        assert torch.equal(value, after[name]), name
    assert not any(p.requires_grad for p in seen["encoder"].parameters())
    metrics = json.loads((tiny_run / "eval" / "metrics.json").read_text())
    assert metrics["protocol"]["val_images"] == 16 and len(metrics["validation"]) == 2
    assert metrics["protocol"]["weight_decay"] in (0.0, 1e-3)
    assert metrics["protocol"]["data_name"] == "Patterns (PNG copy)"
    assert metrics["protocol"]["data_dir"] == "~/patterns"  # recorded without the home directory
    assert (tiny_run / "eval" / "report.txt").read_text().startswith("linear evaluation of checkpoints/epoch_0001.pt "
                                                                     "on Patterns (PNG copy) (~/patterns)")


def test_random_init_label_fraction_and_finetune_write_their_own_folders(tiny_run):
    assert main(eval_args(tiny_run, "--random-init")) == 0
    assert json.loads((tiny_run / "eval-random-init" / "metrics.json").read_text())["checkpoint"].startswith("random")
    assert main(eval_args(tiny_run, "--label-fraction", "0.5")) == 0
    assert json.loads((tiny_run / "eval-labels0.5" / "metrics.json").read_text())["protocol"]["train_images"] == 29
    assert main(eval_args(tiny_run, "--finetune", "--epochs", "1")) == 0
    finetuned = tiny_run / "eval-finetune"
    metrics = json.loads((finetuned / "metrics.json").read_text())
    assert metrics["protocol"]["encoder"] == "fine-tuned" and metrics["protocol"]["train_images"] == 64
    assert metrics["calibration"] is None  # nothing held out: only a frozen-feature head is bundled
    assert not (finetuned / "classifier.safetensors").exists()  # its encoder is not the run's: nothing to export
    assert not (tiny_run / "eval").exists()


def test_bad_inputs_give_one_line_errors(tmp_path, tiny_run, capsys):
    def error(argv):
        try:
            code = main(argv)
        except SystemExit as e:
            code = e.code
        err = capsys.readouterr().err.strip()
        assert code == 2 and "Traceback" not in err
        return err.splitlines()[-1]

    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "config.json").write_text((tiny_run / "config.json").read_text())
    assert "has no checkpoint" in error(eval_args(empty))
    assert "does not exist" in error(eval_args(tmp_path / "nowhere"))
    assert "--val-fraction" in error(eval_args(tiny_run, "--weight-decay", "0", "1e-4"))
    assert "--label-fraction" in error(eval_args(tiny_run, "--label-fraction", "0"))

    other = tmp_path / "other"
    other.mkdir()
    config = json.loads((tiny_run / "config.json").read_text())
    (other / "config.json").write_text(json.dumps({**config, "backbone": "resnet34"}))
    ckpt = RunDir(tiny_run).latest_checkpoint()
    assert "does not fit" in error(eval_args(other, "--checkpoint", str(ckpt)))

    mixed = tmp_path / "mixed"
    write_image_folder(mixed, "train", *pattern_images(4, seed=0))
    write_image_folder(mixed, "test", *pattern_images(2, seed=1), classes=("a", "b", "c", "d"))
    assert "classes" in error(eval_args(tiny_run, "--data-dir", str(mixed)))


def test_a_nearly_dead_channel_cannot_swamp_the_head():
    """Standardising divides by sqrt(var + eps), as BatchNorm does: a channel that barely moved in training
    (a ReLU unit almost never on) stays small on test features where it moves a little."""
    x, y = blobs(100, 5, 32, seed=0, shift=3.0)
    x_test, y_test = blobs(50, 5, 32, seed=1, shift=3.0)
    dead = lambda n, scale, seed: torch.randn(n, 1, generator=torch.Generator().manual_seed(seed)) * scale  # noqa: E731
    head, _ = train_head(torch.cat([x, dead(len(x), 1e-6, 5)], 1), y, 5, **HEAD)
    assert accuracy(head, torch.cat([x_test, dead(len(x_test), 1e-2, 6)], 1), y_test) >= 0.95


def test_a_bundle_is_evaluated_then_exported_again_keeping_its_training_record(tiny_run, tmp_path, capsys):
    """What models/reference went through: a bundle's encoder evaluated (--bundle), then the bundle written again
    with the new head, its temperature, the familiarity bank, graphs and runtime checks, and its old training
    record."""
    from contract.bundle import load_bundle
    from service.model import Model
    from trainer.export import export, export_bundle
    from trainer.export import main as export_main

    data = tiny_run.parent / "patterns"
    first = export(tiny_run, tmp_path / "first", onnx=False, half=True)  # not evaluated yet: no head
    assert first.metrics is None
    args = ["--bundle", str(tmp_path / "first"), "--data-dir", str(data), "--out", str(tmp_path / "eval"),
            "--epochs", "5", "--batch-size", "16", "--device", "cpu", "--knn-k", "10", "--cache-dir", str(tmp_path)]
    assert main(args) == 0
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert metrics["checkpoint"] == load_bundle(tmp_path / "first").name
    assert not (tmp_path / "first" / "eval").exists()  # the bundle folder is left as it was

    second = export_bundle(tmp_path / "first", tmp_path / "second", tmp_path / "eval", str(data),
                           int8_calibration=16)
    assert second.training == first.training and second.weights_dtype == "float16"
    assert second.architecture.classifier.temperature == metrics["calibration"]["temperature"]
    assert second.familiarity.threshold == metrics["familiarity"]["threshold"]
    assert second.metrics.calibration.temperature == metrics["calibration"]["temperature"]
    assert {c.runtime for c in second.runtime_checks} == {"onnx-int8", "torch-bf16"}
    assert (tmp_path / "second" / "reliability.png").read_bytes().startswith(b"\x89PNG")
    served = Model(load_bundle(tmp_path / "second"))
    test = load_split(data, "test", image_size=16, cache_dir=None)
    rows = list(csv.DictReader(io.StringIO((tmp_path / "eval" / "predictions.csv").read_text())))
    top1 = served.infer(test.images).probabilities.max(dim=1).values
    assert top1.tolist() == pytest.approx([float(r["p1"]) for r in rows], abs=1e-3)  # what the evaluation said

    capsys.readouterr()
    assert export_main(["--bundle", str(tmp_path / "second"), "--evaluation", str(tmp_path / "eval"), "--out",
                        str(tmp_path / "third")]) == 2  # that evaluation was of the first bundle, not this one
    assert "evaluated simclr-" in capsys.readouterr().err


def test_the_export_refuses_a_head_evaluated_on_other_weights_of_the_same_name(tiny_run, tmp_path, capsys):
    """A stop inside epoch 1 saves epoch_0001.pt; evaluated, then saved again at the epoch's end by the resume, the
    name holds other weights: the export must not bundle the step-1 head, metrics and familiarity with them."""
    from trainer.export import export

    assert main(eval_args(tiny_run)) == 0
    path = RunDir(tiny_run).latest_checkpoint()
    state = checkpoint.load(path)
    name = next(k for k in state["model"] if k.startswith("encoder.") and k.endswith("weight"))
    state["model"][name] = state["model"][name] + 0.01  # as if trained further, then saved under the same name
    checkpoint.save(path, state)
    with pytest.raises(UserError, match="holds other weights than .* evaluated under that name"):
        export(tiny_run, tmp_path / "bundle", onnx=False)
    assert main(eval_args(tiny_run)) == 0  # evaluated again: exported
    assert export(tiny_run, tmp_path / "bundle", onnx=False).metrics is not None
