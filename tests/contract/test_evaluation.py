"""contract.evaluation: metrics.json and classifier.json as trainer.linear_eval writes them and trainer.export reads
them: a round trip, the files written before they were versioned, and one line for a file that cannot be read."""

from __future__ import annotations

import json

import pytest

from contract.evaluation import EvaluationError, EvaluationHead, EvaluationMetrics

# As trainer.linear_eval wrote them before the files named their format (two classes, five test images).
ROW = {"count": 5, "top1": 0.6, "top3": 1.0, "top5": 1.0, "top1_correct": 3, "top3_correct": 5, "top5_correct": 5}
OLD_METRICS = {
    "units": "fraction", "count": 10, "top1_correct": 6, "top1": 0.6, "top3_correct": 10, "top3": 1.0,
    "top5_correct": 10, "top5": 1.0,
    "per_class": [{"class": 0, "name": "cat", **ROW}, {"class": 1, "name": "dog", **ROW}],
    "confusion": [[3, 2], [2, 3]], "knn_top1": 0.5, "knn_top5": 1.0, "knn_k": 200, "knn_temperature": 0.1,
    "checkpoint": "checkpoints/epoch_0010.pt",
    "protocol": {"name": "linear", "encoder": "frozen", "data_dir": "/home/someone/data/pets", "data_name": "pets",
                 "train_images": 36, "val_images": 0, "calibration_images": 4, "test_images": 10,
                 "label_fraction": 1.0, "val_fraction": 0.0, "epochs": 100, "stopping_epoch": 100, "batch_size": 512,
                 "lr": 0.1, "weight_decay": 0.0, "weight_decay_candidates": [0.0], "optimizer": "sgd momentum 0.9",
                 "schedule": "cosine, per step", "flip_average": False, "seed": 0},
    "validation": None,
    "calibration": {"images": 4, "temperature": 1.2, "test_ece_before": 0.1, "test_ece_after": 0.05,
                    "test_nll_before": 0.9, "test_nll_after": 0.8},
    "familiarity": {"images": 36, "threshold": 2.5, "heldout_images": 4, "heldout_accepted": 1.0,
                    "test_accepted": 0.9, "rejected": {"flat colour": 1.0}},
    "history": [{"epoch": 1, "loss": 0.7, "lr_first": 0.1, "lr_last": 0.0}],
}
OLD_HEAD = {"input_dim": 512, "hidden_dims": [], "classes": ["cat", "dog"], "checkpoint": "checkpoints/epoch_0010.pt",
            "input": "the encoder's raw representation (feature standardisation is folded into the first layer)"}


def test_both_files_come_back_as_written(tmp_path):
    metrics = EvaluationMetrics.model_validate(OLD_METRICS)
    head = EvaluationHead.model_validate({**OLD_HEAD, "temperature": 1.2})
    metrics.write(tmp_path / "metrics.json")
    head.write(tmp_path / "classifier.json")
    assert EvaluationMetrics.read(tmp_path / "metrics.json") == metrics
    assert EvaluationHead.read(tmp_path / "classifier.json") == head
    written = json.loads((tmp_path / "metrics.json").read_text())
    assert list(written)[:2] == ["format", "format_version"] and written["format"] == "simclr-eval-metrics"
    assert written["per_class"][1] == {"class": 1, "name": "dog", **ROW}  # the counts stay beside the fractions
    assert written["protocol"]["weight_decay_candidates"] == [0.0]  # the protocol's other settings are carried
    assert json.loads((tmp_path / "classifier.json").read_text())["format"] == "simclr-eval-classifier"


def test_files_from_before_the_version_read_as_version_1(tmp_path):
    (tmp_path / "metrics.json").write_text(json.dumps(OLD_METRICS, indent=2))
    (tmp_path / "classifier.json").write_text(json.dumps(OLD_HEAD))  # from before the temperature, too
    metrics = EvaluationMetrics.read(tmp_path / "metrics.json")
    assert metrics.format_version == 1 and metrics.familiarity.threshold == 2.5
    assert metrics.protocol.data_dir == "/home/someone/data/pets"  # absolute, as it was recorded then
    bundled = metrics.bundled()  # what the manifest carries: the fractions, not the counts
    assert bundled.top1 == 0.6 and bundled.per_class[0].index == 0 and bundled.calibration.temperature == 1.2
    assert "top1_correct" not in bundled.model_dump()["per_class"][0]
    head = EvaluationHead.read(tmp_path / "classifier.json")
    assert head.format_version == 1 and head.spec.num_classes == 2 and head.spec.temperature == 1.0


@pytest.mark.parametrize("kind, content, message", [
    (EvaluationMetrics, "{not json", "is not valid JSON"),
    (EvaluationMetrics, json.dumps({**OLD_METRICS, "per_class": {"cat": 0.6}}),
     "does not hold what trainer.linear_eval writes (per_class: Input should be a valid list)"),
    (EvaluationMetrics, json.dumps({**OLD_METRICS, "format_version": 2}),
     "has simclr-eval-metrics format version 2, newer than this trainer reads (1)"),
    (EvaluationMetrics, json.dumps({**OLD_METRICS, "format_version": "one"}), "format_version: Input should be 1"),
    (EvaluationMetrics, json.dumps({**OLD_HEAD, "format": "simclr-eval-classifier"}),
     "is not a simclr-eval-metrics file"),
    (EvaluationHead, json.dumps({**OLD_HEAD, "hidden_dims": [64, 64]}), "hidden_dims: List should have at most 1"),
    (EvaluationHead, json.dumps([OLD_HEAD]), "is not a simclr-eval-classifier file"),
])
def test_a_file_that_cannot_be_read_is_one_line_naming_it(tmp_path, kind, content, message):
    path = tmp_path / "eval" / "file.json"
    path.parent.mkdir()
    path.write_text(content)
    with pytest.raises(EvaluationError) as e:
        kind.read(path)
    assert str(e.value).startswith(str(path)) and message in str(e.value) and "\n" not in str(e.value)
    with pytest.raises(EvaluationError, match="is missing: evaluate again"):
        kind.read(tmp_path / "eval" / "none.json")
