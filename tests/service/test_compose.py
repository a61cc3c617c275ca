"""The container passes every service setting through: one added to Settings but not to compose.yaml would be
silently ignored by `docker compose up`."""

from __future__ import annotations

import re
from pathlib import Path

from service.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
# Fixed by the image (docker/service.Dockerfile), or meaningful only with an --index the compose file never sets.
SET_BY_THE_IMAGE = {"host", "port", "bundle", "index_root", "data_dir", "index", "index_mmap", "download"}


def test_every_other_setting_is_passed_through_by_compose():
    passed = set(re.findall(r"^\s+- (SIMCLR_\w+)$", (ROOT / "compose.yaml").read_text(), re.MULTILINE))
    image = set(re.findall(r"(SIMCLR_\w+)=", (ROOT / "docker" / "service.Dockerfile").read_text()))
    expected = {f"SIMCLR_{name.upper()}" for name in Settings.model_fields} - {
        f"SIMCLR_{name.upper()}" for name in SET_BY_THE_IMAGE}
    assert expected - passed == set(), "settings that docker compose up would drop"
    assert passed <= {f"SIMCLR_{name.upper()}" for name in Settings.model_fields}, "passed through, but no setting"
    assert image <= {f"SIMCLR_{name.upper()}" for name in Settings.model_fields}
