"""Request and response bodies of the API (pydantic): what /docs shows and what the routes return."""

from __future__ import annotations

from pydantic import BaseModel, Field

MAX_CLASSIFY_K = 10
MAX_SEARCH_K = 100


class ImagesJSON(BaseModel):
    """The JSON way to send images: each a base64 string (a data: URL prefix is accepted)."""

    images: list[str] = Field(min_length=1, description="base64-encoded image files (JPEG, PNG, ...)")


class Embedding(BaseModel):
    representation: list[float] = Field(description="the encoder's representation (L2-normalised unless "
                                        "normalize=false)")
    projection: list[float] | None = Field(None, description="the projection head's output (with projection=true)")


class EmbedResponse(BaseModel):
    model: str
    representation_dim: int
    projection_dim: int
    normalized: bool
    embeddings: list[Embedding]


class Prediction(BaseModel):
    class_id: int
    class_name: str
    probability: float


class Classification(BaseModel):
    predictions: list[Prediction] = Field(description="the top-k classes, best first")


class ClassifyResponse(BaseModel):
    model: str
    classifications: list[Classification]


class Neighbour(BaseModel):
    id: int
    score: float = Field(description="cosine similarity to the query")
    label: int = Field(description="class id, -1 for unlabelled images")
    class_name: str | None
    split: str
    source: str = Field(description="the image's path inside the folder it was indexed from")
    image_url: str


class SearchResult(BaseModel):
    neighbours: list[Neighbour] = Field(description="the k most similar indexed images, best first")


class SearchResponse(BaseModel):
    model: str
    index_size: int
    results: list[SearchResult]


class Health(BaseModel):
    status: str


class Readiness(BaseModel):
    ready: bool
    bundle: bool = Field(description="the model bundle is loaded")
    index: bool = Field(description="the index is loaded (true when none is configured)")
    error: str | None = Field(None, description="why loading failed, if it did")


class ProblemDetail(BaseModel):
    """RFC 9457 problem details, sent as application/problem+json."""

    type: str = "about:blank"
    title: str
    status: int
    detail: str
    instance: str | None = None
