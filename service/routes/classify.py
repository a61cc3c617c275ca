from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query

from service.dependencies import TO_MODEL, Ready
from service.problems import Problem
from service.routes import PROBLEMS
from service.schemas import MAX_CLASSIFY_K, Classification, ClassifyResponse, Prediction
from service.uploads import OPENAPI_BODY, Images

router = APIRouter(tags=["model"])


@router.post("/classify", response_model=ClassifyResponse, responses=PROBLEMS, openapi_extra=OPENAPI_BODY,
             dependencies=[TO_MODEL])
async def classify(images: Images, state: Ready,
                   k: Annotated[int, Query(ge=1, le=MAX_CLASSIFY_K, description="classes per image")] = 3
                   ) -> ClassifyResponse:
    """Per image the k most probable classes (all of them when there are fewer than k), best first, with calibrated
    probabilities, and how like the training images it is (training_distance, unlike_training_data)."""
    if state.model.bundle.classifier is None:
        raise Problem(501, "this bundle has no classifier: its run was not evaluated (run python -m "
                      "trainer.linear_eval, then export again); /embed and /search still work", "no-classifier")
    out = await state.batcher.submit(images)
    top = out.probabilities.topk(min(k, out.probabilities.shape[1]), dim=1)
    classes = state.model.bundle.manifest.classes
    return ClassifyResponse(model=state.model.bundle.name, classifications=[
        Classification(predictions=[Prediction(class_id=c, class_name=classes[c], probability=p)
                                    for p, c in zip(probs, ids)], **familiar)
        for probs, ids, familiar in zip(top.values.tolist(), top.indices.tolist(),
                                        out.familiar(state.model.familiarity_threshold))])
