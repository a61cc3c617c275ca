"""benchmarks/runtime_accuracy.py end to end on a small bundle and image folder: it runs, honours --bank, and
prints the runtime's kNN and linear top-1."""

import re
import sys

from benchmarks import runtime_accuracy


def test_runtime_accuracy_prints_a_row_per_runtime(bundle_dir, image_folder, monkeypatch, capsys):
    monkeypatch.setattr(sys, "argv", ["runtime_accuracy", "--bundle", str(bundle_dir), "--data-dir",
                                      str(image_folder), "--bank", "8", "--runtimes", "torch-fp32"])
    runtime_accuracy.main()
    out = capsys.readouterr().out
    assert "8 test images, kNN bank of 8" in out
    row = re.search(r"^torch-fp32\s+([\d.]+)%\s+([\d.]+)%", out, re.MULTILINE)
    assert row, out
    assert all(0 <= float(v) <= 100 for v in row.groups())
