from __future__ import annotations

from fastapi import APIRouter

from service.dependencies import TO_MODEL, Ready
from service.routes import PROBLEMS
from service.schemas import Embedding, EmbedResponse
from service.uploads import OPENAPI_BODY, Images

router = APIRouter(tags=["model"])


@router.post("/embed", response_model=EmbedResponse, responses=PROBLEMS, openapi_extra=OPENAPI_BODY,
             dependencies=[TO_MODEL])
async def embed(images: Images, state: Ready, normalize: bool = True, projection: bool = False) -> EmbedResponse:
    """Per image the encoder's representation (L2-normalised unless normalize=false), with projection=true the
    projection head's output, and how like the training images it is (training_distance, unlike_training_data)."""
    out = await state.batcher.submit(images)
    h = out.unit if normalize else out.representation
    z = out.projection.tolist() if projection else [None] * len(h)
    arch = state.model.bundle.manifest.architecture
    return EmbedResponse(model=state.model.bundle.name, representation_dim=arch.representation_dim,
                         projection_dim=arch.projection.out_dim, normalized=normalize,
                         embeddings=[Embedding(representation=r, projection=p, **familiar) for r, p, familiar in
                                     zip(h.tolist(), z, out.familiar(state.model.familiarity_threshold))])
