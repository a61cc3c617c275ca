"""The evaluation folder's files that the export reads: metrics.json and classifier.json, as trainer.linear_eval
writes them (into RUN_DIR/eval, or --out) and trainer.export reads them back into a bundle.

One pydantic model each, built by the writer and validated by the reader. They reuse the manifest's models
(contract.bundle) for what the manifest carries of them: the metrics, their protocol, the calibration and the
familiarity figures. Each file names its format and version, as the manifest does; files from before they did have
neither and read as version 1. A file of another format, of a newer version or of another shape is refused with
one line that names it (EvaluationError).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Literal, Self

from pydantic import BaseModel, Field, ValidationError

from contract.bundle import ClassifierSpec, ClassScore, Familiarity, Fraction, Metrics, describe
from contract.files import atomic_write

FORMAT_VERSION = 1
METRICS_FILE, HEAD_FILE = "metrics.json", "classifier.json"
METRICS_FORMAT, HEAD_FORMAT = "simclr-eval-metrics", "simclr-eval-classifier"


class EvaluationError(Exception):
    """An evaluation file that cannot be read: missing, not JSON, of another format or version, or malformed."""


class EvaluationFile(BaseModel):
    """What both files share: their format's name and version, how they are written, and how they are read."""

    format: str
    format_version: Literal[FORMAT_VERSION] = FORMAT_VERSION

    def write(self, path: str | Path) -> None:
        atomic_write(path, self.model_dump_json(indent=2, by_alias=True) + "\n")

    @classmethod
    def read(cls, path: str | Path) -> Self:
        """The file at path, validated; a missing, foreign, newer or malformed one raises EvaluationError."""
        path, expected = Path(path), cls.model_fields["format"].default
        if not path.is_file():
            raise EvaluationError(f"{path} is missing: evaluate again (python -m trainer.linear_eval)")
        try:
            data = json.loads(path.read_bytes())
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise EvaluationError(f"{path} is not valid JSON: {e}") from None
        if not isinstance(data, dict) or data.get("format", expected) != expected:
            raise EvaluationError(f"{path} is not a {expected} file")
        version = data.get("format_version", FORMAT_VERSION)
        if isinstance(version, int) and version > FORMAT_VERSION:
            raise EvaluationError(f"{path} has {expected} format version {version}, newer than this trainer reads "
                                  f"({FORMAT_VERSION}): use the trainer that wrote it, or evaluate again with this one")
        try:
            return cls.model_validate(data)
        except ValidationError as e:
            raise EvaluationError(f"{path} does not hold what trainer.linear_eval writes ({describe(e)})") from None


class ClassResult(ClassScore):
    """One class's row: the fractions the manifest carries, and the counts behind them."""

    top1_correct: int = Field(ge=0)
    top3_correct: int = Field(ge=0)
    top5_correct: int = Field(ge=0)


class Choice(BaseModel):
    """One weight decay tried with a validation split, at its best epoch there."""

    weight_decay: float
    epoch: int = Field(ge=1)
    val_top1: Fraction


class EvaluationMetrics(Metrics, EvaluationFile):
    """metrics.json: the figures a bundle's manifest carries (Metrics; bundled() gives them), and what stays in the
    evaluation folder beside them: the counts, the confusion matrix, the weight decays tried, the familiarity
    figures (the bundle's own entry) and the head's training history."""

    format: Literal[METRICS_FORMAT] = METRICS_FORMAT
    units: Literal["fraction"]
    count: int = Field(gt=0, description="test images")
    top1_correct: int = Field(ge=0)
    top3_correct: int = Field(ge=0)
    top5_correct: int = Field(ge=0)
    per_class: list[ClassResult]
    confusion: list[list[int]] = Field(description="rows: the true class, columns: the predicted one")
    validation: list[Choice] | None = Field(None, description="none without a validation split")
    familiarity: Familiarity | None = Field(None, description="heads on frozen features with calibration images")
    history: list[dict[str, int | float | None]] = Field(description="the chosen head's epochs: loss, learning "
                                                         "rates (and validation top-1)")

    def bundled(self) -> Metrics:
        """What the manifest carries of these figures."""
        return Metrics.model_validate(self.model_dump(by_alias=True))


class EvaluationHead(EvaluationFile):
    """classifier.json: the head in classifier.safetensors (a head on frozen features only), and what the
    manifest's ClassifierSpec says of it (spec)."""

    format: Literal[HEAD_FORMAT] = HEAD_FORMAT
    input_dim: int = Field(gt=0)
    hidden_dims: list[int] = Field(max_length=1)
    classes: list[str] = Field(min_length=1)
    checkpoint: str = Field(description="the weights evaluated, as metrics.json names them")
    encoder_sha256: str | None = Field(None, description="sha256 of the evaluated encoder's weights: a checkpoint "
                                       "saved again under its name since (a stop inside an epoch, then the "
                                       "epoch's end) holds others, which the export refuses; evaluations from "
                                       "before it: none")
    temperature: float = Field(1.0, gt=0, description="fitted on the calibration images (evaluations from before "
                               "it: 1)")
    input: str = "the encoder's raw representation (feature standardisation is folded into the first layer)"

    @property
    def spec(self) -> ClassifierSpec:
        return ClassifierSpec(hidden_dims=self.hidden_dims, num_classes=len(self.classes),
                              temperature=self.temperature)
