"""A client generated from the running service's /openapi.json by openapi-python-client, as a user's tooling
would make one, calls the service: what the document promises (operations, bodies, answers, problems, the API
key's scheme) is what the service does."""

from __future__ import annotations

import importlib
import io
import json
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from conftest import KEY
from factories import CLASSES, colour_images

from benchmarks.harness.images import png_bytes

IMAGES, _ = colour_images(2, seed=11)
PACKAGE = "simclr_generated_client"


@pytest.fixture(scope="module")
def api(live_server, tmp_path_factory):
    """The generated package, imported from a throwaway directory."""
    root = tmp_path_factory.mktemp("generated")
    spec = httpx.get(f"{live_server.url}/openapi.json", headers={"X-API-Key": KEY}, timeout=30).json()
    (root / "openapi.json").write_text(json.dumps(spec))
    done = subprocess.run([sys.executable, "-m", "openapi_python_client", "generate", "--path",
                           str(root / "openapi.json"), "--meta", "none", "--output-path", str(root / PACKAGE)],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    # Every operation and model parsed: a warning is a piece of the API the generated client lacks. The
    # thumbnail's image/jpeg answer is the one the generator cannot type (it still calls the route).
    warnings = [block for block in done.stdout.split("WARNING")[1:] if "GET /thumbnails/" not in block]
    assert not warnings, "\n".join(warnings)
    _import_unset(root / PACKAGE)
    sys.path.insert(0, str(root))
    try:
        yield importlib.import_module(PACKAGE)
    finally:
        sys.path.remove(str(root))
        for name in [m for m in sys.modules if m == PACKAGE or m.startswith(f"{PACKAGE}.")]:
            del sys.modules[name]


def _import_unset(package: Path) -> None:
    """Work around the generator's known bug (openapi-generators/openapi-python-client#1451, open): for a required
    body of several content types (POST /index/images) it writes `| Unset` without importing Unset. Only that
    import is added; the rest is tested as generated."""
    for module in (package / "api").rglob("*.py"):
        text = module.read_text()
        if "| Unset" in text and "Unset\n" not in text and ", Unset" not in text:
            module.write_text(text.replace("from ...types import UNSET, Response\n",
                                           "from ...types import UNSET, Response, Unset\n"))


def test_classify_search_add_and_remove_through_the_generated_client(live_server, api):
    from simclr_generated_client.api.index import add_images, get_image, remove_image
    from simclr_generated_client.api.model import classify
    from simclr_generated_client.api.search import search_images
    from simclr_generated_client.models import (AddImagesFilesBody, ClassifyFilesBody, ClassifyResponse,
                                                IndexChange, IndexedImage, ProblemDetail, SearchImagesFilesBody,
                                                SearchResponse)
    from simclr_generated_client.types import File

    def upload(i: int) -> File:
        return File(payload=io.BytesIO(png_bytes(IMAGES[i])), file_name=f"{i}.png", mime_type="image/png")

    with api.AuthenticatedClient(base_url=live_server.url, token=KEY, timeout=httpx.Timeout(60)) as client:
        answer = classify.sync(client=client, body=ClassifyFilesBody(images=[upload(0)]), k=2)
        assert isinstance(answer, ClassifyResponse)
        predictions = answer.classifications[0].predictions
        assert len(predictions) == 2 and predictions[0].class_name in CLASSES

        found = search_images.sync(client=client, body=SearchImagesFilesBody(images=[upload(1)]), k=3)
        assert isinstance(found, SearchResponse) and len(found.results[0].neighbours) == 3

        added = add_images.sync(client=client, body=AddImagesFilesBody(images=[upload(0)], ids=["generated/0"],
                                                                        metadata=['{"source": "generated"}']))
        assert isinstance(added, IndexChange) and added.ids == ["generated/0"] and added.added == 1
        indexed = get_image.sync("generated/0", client=client)
        assert isinstance(indexed, IndexedImage) and indexed.metadata["source"] == "generated"

        removed = remove_image.sync("generated/0", client=client)
        assert isinstance(removed, IndexChange) and removed.removed == 1
        missing = get_image.sync_detailed("generated/0", client=client)
        assert missing.status_code == 404 and isinstance(missing.parsed, ProblemDetail)
        assert missing.parsed.type_ == "/problems/not-found" and "generated/0" in missing.parsed.detail


def test_problems_and_the_key_are_typed(live_server, api):
    from simclr_generated_client.api.model import classify
    from simclr_generated_client.models import ClassifyFilesBody, ProblemDetail
    from simclr_generated_client.types import File

    text = File(payload=io.BytesIO(b"plain text"), file_name="notes.txt", mime_type="text/plain")
    with api.AuthenticatedClient(base_url=live_server.url, token=KEY) as client:
        refused = classify.sync_detailed(client=client, body=ClassifyFilesBody(images=[text]))
    assert refused.status_code == 415 and isinstance(refused.parsed, ProblemDetail)
    assert refused.parsed.type_ == "/problems/unsupported-image-format"
    with api.Client(base_url=live_server.url) as anonymous:  # no key
        refused = classify.sync_detailed(client=anonymous, body=ClassifyFilesBody(images=[text]))
    assert refused.status_code == 401 and refused.parsed.type_ == "/problems/unauthorized"
