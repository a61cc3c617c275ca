"""The container passes every service setting through: one added to Settings but not to compose.yaml would be
silently ignored by `docker compose up`. The names come from Settings itself (its fields and env prefix), not
from a list kept by hand."""

from __future__ import annotations

import re
from pathlib import Path

import yaml
from pydantic_settings import BaseSettings

from service.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
# Deliberately not passed through, each with why. The image fixes them (its ENV, checked below) to match what
# compose.yaml mounts and publishes; a value from the shell (a host path, another port) would break that, and
# compose has its own variables for them.
FIXED_BY_THE_IMAGE = {
    "host": "0.0.0.0, so that the published port reaches the service",
    "port": "8000, the container port compose.yaml publishes (PORT chooses the host's)",
    "grpc_port": "8001, Triton's, published as GRPC_PORT chooses (the image has the [grpc] extra)",
    "bundle": "/bundle, where BUNDLE_DIR is mounted",
    "index_root": "/opt/simclr/indexes, the indexes volume",
    "data_dir": "/opt/simclr/data/cifar10, where CIFAR10_DIR is mounted",
}


def env_names(settings: type[BaseSettings]) -> dict[str, str]:
    """{field: the environment variable pydantic-settings reads it from}."""
    config = settings.model_config
    names = {}
    for field, info in settings.model_fields.items():
        alias = info.validation_alias if isinstance(info.validation_alias, str) else info.alias
        name = alias or f"{config.get('env_prefix', '')}{field}"
        names[field] = name if config.get("case_sensitive") else name.upper()
    return names


def service_environment() -> list[str]:
    environment = yaml.safe_load((ROOT / "compose.yaml").read_text())["services"]["service"]["environment"]
    assert isinstance(environment, list), "environment: as a list of names passed through"
    return environment


def test_compose_passes_exactly_the_settings_the_image_does_not_fix():
    names = env_names(Settings)
    assert names["max_images"] == "SIMCLR_MAX_IMAGES" and len(names) == len(Settings.model_fields) > 20
    assert set(FIXED_BY_THE_IMAGE) <= set(names), "an exclusion that is no setting (renamed?)"
    environment = service_environment()
    # Bare names: compose passes the shell's (or .env's) value when there is one, and nothing otherwise, so the
    # service's own default applies; a value written here would override every user's.
    assert all("=" not in entry for entry in environment), environment
    assert len(environment) == len(set(environment)), "a name listed twice"
    expected = {names[field] for field in names if field not in FIXED_BY_THE_IMAGE}
    assert set(environment) - expected == set(), "passed through, but no setting (or one the image fixes)"
    assert expected - set(environment) == set(), "settings that docker compose up would drop"


def test_the_settings_compose_leaves_out_are_those_the_image_sets():
    dockerfile = (ROOT / "docker" / "service.Dockerfile").read_text()
    set_by_image = set(re.findall(r"\b(SIMCLR_\w+)=", dockerfile))
    names = env_names(Settings)
    assert set_by_image == {names[field] for field in FIXED_BY_THE_IMAGE}


def test_docker_md_lists_the_settings_compose_passes():
    docs = (ROOT / "docs" / "docker.md").read_text()
    row = next(line for line in docs.splitlines() if line.startswith("| `SIMCLR_*` |"))
    assert set(re.findall(r"`(SIMCLR_\w+)`", row)) == set(service_environment())
