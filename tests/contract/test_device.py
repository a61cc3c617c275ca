"""contract.device.pick_device: the trainer's and the service's one choice of device."""

from __future__ import annotations

import pytest
import torch

from contract.device import pick_device


def test_pick_device(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert pick_device(None) == pick_device("auto") == pick_device("cpu") == torch.device("cpu")
    with pytest.raises(LookupError, match="--device cuda was asked for but torch sees no CUDA GPU"):
        pick_device("cuda", LookupError)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert pick_device(None) == pick_device("auto") == torch.device("cuda")
