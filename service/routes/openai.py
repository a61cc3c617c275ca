"""OpenAI-compatible embeddings, so that the openai package (client.embeddings.create) and tools built on it
work unchanged: an input is an image as base64 or a data: URL, the key comes as Authorization: Bearer."""

from __future__ import annotations

import base64

from fastapi import APIRouter

from service.dependencies import TO_MODEL, Ready
from service.problems import Problem
from service.routes import PROBLEMS
from service.schemas import EmbeddingObject, EmbeddingsRequest, EmbeddingsResponse, ModelCard, ModelList, Usage
from service.state import ServiceState
from service.uploads import base64_files, decode_files

router = APIRouter(prefix="/v1", tags=["openai-compatible"])


@router.get("/models", response_model=ModelList)
async def list_models(state: Ready) -> ModelList:
    """The served model, as the one entry."""
    return ModelList(data=[_card(state)])


@router.get("/models/{model}", response_model=ModelCard, responses={404: PROBLEMS[422]})
async def retrieve_model(model: str, state: Ready) -> ModelCard:
    """The served model by its id (OpenAI's client.models.retrieve); another id is 404 model_not_found."""
    return _served(model, state)


@router.post("/embeddings", response_model=EmbeddingsResponse, responses=PROBLEMS | {404: PROBLEMS[422]},
             dependencies=[TO_MODEL])
async def create_embeddings(body: EmbeddingsRequest, state: Ready) -> EmbeddingsResponse:
    """The L2-normalised representation of each input image, as OpenAI's embeddings endpoint answers."""
    card = _served(body.model, state)
    dim = state.model.bundle.manifest.architecture.representation_dim
    if body.dimensions is not None and body.dimensions != dim:
        raise Problem(422, f"dimensions {body.dimensions}: this model's embeddings have {dim} (they cannot be "
                      f"shortened)")
    inputs = [body.input] if isinstance(body.input, str) else body.input
    if not inputs:
        raise Problem(422, "input is empty: send an image, or a list of them, as base64 or data: URLs")
    files = base64_files(inputs, "input")
    with state.batcher.incoming():
        images = await decode_files(files, state)
    out = await state.batcher.submit(images)
    vectors = out.unit.numpy().astype("<f4")
    data = [EmbeddingObject(index=i, embedding=base64.b64encode(v.tobytes()).decode() if body.encoding_format ==
                            "base64" else v.tolist(), **familiar)
            for i, (v, familiar) in enumerate(zip(vectors, out.familiar(state.model.familiarity_threshold)))]
    return EmbeddingsResponse(data=data, model=card.id, usage=Usage(prompt_tokens=len(data), total_tokens=len(data)))


def _served(model: str, state: ServiceState) -> ModelCard:
    card = _card(state)
    if model != card.id:
        raise Problem(404, f"model {model!r} is not served here: GET /v1/models lists {card.id!r}",
                      "model-not-found", code="model_not_found")
    return card


def _card(state: ServiceState) -> ModelCard:
    bundle = state.model.bundle
    return ModelCard(id=bundle.name, created=int((bundle.path / "manifest.json").stat().st_mtime))
