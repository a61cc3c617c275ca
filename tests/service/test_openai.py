"""/v1/embeddings, /v1/models and /v1/models/{model} with the official openai package as the client, against a
real server."""

from __future__ import annotations

import base64

import httpx2
import numpy as np
import openai
import pytest
from factories import colour_images

from benchmarks.harness.images import png_bytes
from benchmarks.harness.load import Server
from conftest import KEY

IMAGES = colour_images(1, seed=4)[0][:3]


@pytest.fixture(scope="module")
def server(live_server) -> Server:
    return live_server


@pytest.fixture(scope="module")
def client(server) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key=KEY, max_retries=0)


def served_embeddings(server, images) -> np.ndarray:
    files = [("images", (f"{i}.png", png_bytes(image), "image/png")) for i, image in enumerate(images)]
    response = httpx2.post(f"{server.url}/embed", files=files, headers={"X-API-Key": KEY}, timeout=60)
    return np.array([e["representation"] for e in response.json()["embeddings"]])


def test_embeddings_as_the_openai_package_asks_for_them(server, client):
    (model,) = client.models.list().data
    inputs = [base64.b64encode(png_bytes(IMAGES[0])).decode(),
              "data:image/png;base64," + base64.b64encode(png_bytes(IMAGES[1])).decode()]
    answer = client.embeddings.create(model=model.id, input=inputs)  # the package asks for base64 by default
    assert answer.model == model.id and [d.index for d in answer.data] == [0, 1]
    assert answer.usage.prompt_tokens == answer.usage.total_tokens == 2
    vectors = np.array([d.embedding for d in answer.data])
    np.testing.assert_allclose(vectors, served_embeddings(server, IMAGES[:2]), atol=1e-6)  # /embed's vectors
    floats = client.embeddings.create(model=model.id, input=inputs[0], encoding_format="float")
    np.testing.assert_allclose(floats.data[0].embedding, vectors[0], atol=1e-6)


def test_problems_arrive_as_the_packages_exceptions(server, client):
    model = client.models.list().data[0].id
    image = base64.b64encode(png_bytes(IMAGES[2])).decode()
    with pytest.raises(openai.NotFoundError, match="not served here"):
        client.embeddings.create(model="text-embedding-3-small", input=image)
    assert client.models.retrieve(model) == client.models.list().data[0]
    with pytest.raises(openai.NotFoundError, match="not served here") as caught:
        client.models.retrieve("text-embedding-3-small")
    assert caught.value.code == "model_not_found"
    with pytest.raises(openai.UnprocessableEntityError, match=r"input\[1\] is not valid base64"):
        client.embeddings.create(model=model, input=[image, "not base64!"])
    with pytest.raises(openai.UnprocessableEntityError, match="cannot be shortened"):
        client.embeddings.create(model=model, input=image, dimensions=64)
    with pytest.raises(openai.APIStatusError, match=r"input\[0\]: not an image") as caught:
        client.embeddings.create(model=model, input=base64.b64encode(b"plain text").decode())
    assert caught.value.status_code == 415
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=f"{server.url}/v1", api_key="wrong", max_retries=0).models.list()
