"""service.model: the inference path (channels-last, fp32 or bf16 encoder) and how its precision is chosen."""

from __future__ import annotations

import time

import pytest
import torch
import torch.nn.functional as F
from factories import colour_images

from contract.bundle import load_bundle
from service.model import Model, pick_precision

IMAGES = torch.from_numpy(colour_images(3, seed=2)[0]).permute(0, 3, 1, 2)


def test_bf16_gives_the_fp32_answers_within_rounding(bundle_dir):
    fp32 = Model(load_bundle(bundle_dir), "fp32").infer(IMAGES)
    bf16 = Model(load_bundle(bundle_dir), "bf16").infer(IMAGES)
    assert bf16.representation.dtype == torch.float32 and bf16.probabilities.dtype == torch.float32
    assert F.cosine_similarity(fp32.representation, bf16.representation).min() > 0.99
    assert not torch.equal(fp32.representation, bf16.representation)  # bf16 really ran
    assert (fp32.probabilities - bf16.probabilities).abs().max() < 0.05


def test_any_input_layout_gives_the_same_answer(bundle_dir):
    model = Model(load_bundle(bundle_dir), "fp32")
    torch.testing.assert_close(model.infer(IMAGES.contiguous()).representation, model.infer(IMAGES).representation)


@pytest.mark.parametrize("bf16_seconds, expected", [(0.001, "bf16"), (0.02, "fp32")])
def test_auto_picks_bf16_only_where_it_is_faster(bundle_dir, monkeypatch, bf16_seconds, expected):
    model = Model(load_bundle(bundle_dir))
    monkeypatch.setattr(model, "infer", lambda images: time.sleep(bf16_seconds if model.precision == "bf16"
                                                                   else 0.01))
    precision, why = pick_precision(model, "auto")
    assert precision == expected == model.precision and why.startswith("auto: bf16 measured")
    other = "fp32" if expected == "bf16" else "bf16"
    assert pick_precision(model, other) == (other, "as asked") and model.precision == other
