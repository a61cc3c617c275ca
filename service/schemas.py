"""Request and response bodies of the API (pydantic): what /docs shows and what the routes return."""

from __future__ import annotations

import math
from typing import Annotated, Any, Literal

from pydantic import (AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, StrictFloat, StrictInt,
                      StringConstraints, model_validator)

MAX_CLASSIFY_K = 10
MAX_SEARCH_K = 100
MAX_METADATA_KEYS = 32

# An indexed image's id: chosen by the caller (a path, a database key ...), any printable text.
ImageId = Annotated[str, StringConstraints(min_length=1, max_length=512, pattern=r"^[^\x00-\x1f\x7f]+$")]
MetadataKey = Annotated[str, StringConstraints(pattern=r"^[A-Za-z_][A-Za-z0-9_.-]{0,63}$")]


def _finite(value: float) -> float:
    if not math.isfinite(value):
        raise ValueError("must be a finite number")
    return value


# Integers as SQLite stores them; a larger one goes on to the float branches (a double, as JSON numbers often
# are) rather than overflowing in the index, a 500.
Int64 = Annotated[StrictInt, Field(ge=-2**63, le=2**63 - 1)]
MetadataValue = Annotated[str, StringConstraints(max_length=1024)] | Int64 | \
    Annotated[StrictFloat, AfterValidator(_finite)]
Metadata = Annotated[dict[MetadataKey, MetadataValue], Field(max_length=MAX_METADATA_KEYS)]
# A 2 x 2 red PNG: the request bodies' examples in /openapi.json, small enough to paste into /docs and send.
EXAMPLE_IMAGE = ("iVBORw0KGgoAAAANSUhEUgAAAAIAAAACCAIAAAD91JpzAAAAFklEQVR42mM8ISfHwMDAxMDAwMDAAAANBAEIf62CUQAAAABJRU5Er"
                 "kJggg==")


class ImagesJSON(BaseModel):
    """The JSON way to send images: each a base64 string (a data: URL prefix is accepted)."""

    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [{"images": [EXAMPLE_IMAGE]}]})

    images: list[str] = Field(min_length=1, description="base64-encoded image files (JPEG, PNG, ...)")


class Condition(BaseModel):
    """Conditions on one metadata key, all of which must hold: in (any of these values), not (none of them; an
    image without the key passes), and numeric bounds (only numbers pass them)."""

    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [{"gte": 2020, "lt": 2025},
                                                                             {"not": ["draft", "private"]}]})

    in_: list[MetadataValue] | None = Field(None, alias="in", min_length=1)
    not_: list[MetadataValue] | None = Field(None, alias="not", min_length=1)
    gt: StrictFloat | Int64 | None = None
    gte: StrictFloat | Int64 | None = None
    lt: StrictFloat | Int64 | None = None
    lte: StrictFloat | Int64 | None = None

    @model_validator(mode="after")
    def _some(self) -> Condition:
        if not self.model_dump(exclude_none=True):
            raise ValueError("a condition needs at least one of in, not, gt, gte, lt, lte")
        return self


def _as_condition(value: Any) -> Any:
    """An object is validated as a Condition first, so that its mistakes are named as such (not as failures to
    be a string or a list)."""
    return Condition.model_validate(value) if isinstance(value, dict) else value


# A metadata filter in JSON: per key, a value, a list (any of them), or a Condition.
Filter = Annotated[dict[MetadataKey, Annotated[MetadataValue | list[MetadataValue] | Condition,
                                               BeforeValidator(_as_condition)]], Field(min_length=1)]


class SearchJSON(BaseModel):
    """/search's JSON body: query images, or query embeddings as /embed returns them (exactly one of the two)."""

    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [
        {"images": [EXAMPLE_IMAGE], "k": 5, "filter": {"class": ["cat", "dog"]}}]})

    images: list[str] | None = Field(None, min_length=1, description="base64-encoded image files")
    embeddings: list[list[float]] | None = Field(None, min_length=1, description="representations, as /embed "
                                                 "returns them (normalised here)")
    # The query string's parameters may come here instead (not both: a conflict is refused).
    k: int | None = Field(None, ge=1, le=MAX_SEARCH_K)
    offset: int | None = Field(None, ge=0, le=10_000)
    min_score: float | None = Field(None, ge=-1, le=1)
    class_name: str | None = None
    filter: Filter | None = Field(
        None, description="only images whose metadata has these values (a list: any of them; or conditions: in, "
        "not, gt, gte, lt, lte), every key")

    @model_validator(mode="after")
    def _one_kind(self) -> SearchJSON:
        if (self.images is None) == (self.embeddings is None):
            raise ValueError("give either images or embeddings")
        return self


class IndexImage(BaseModel):
    model_config = ConfigDict(extra="forbid")

    id: ImageId = Field(description="the caller's id for the image; an indexed id is replaced")
    image: str = Field(description="the image file, base64-encoded (a data: URL prefix is accepted)")
    metadata: Metadata = Field({}, description="strings and numbers to filter on and to get back with hits")


class IndexImagesJSON(BaseModel):
    """POST /index/images's JSON body."""

    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [
        {"images": [{"id": "photos/red.png", "image": EXAMPLE_IMAGE, "metadata": {"album": "tests", "year": 2026}}]}]})

    images: list[IndexImage] = Field(min_length=1)


class IndexVector(BaseModel):
    model_config = ConfigDict(extra="forbid")

    id: ImageId = Field(description="the caller's id; an indexed id is replaced")
    vector: list[Annotated[StrictFloat | Int64, AfterValidator(_finite)]] = Field(
        description="a representation as /embed returns it (any length-preserving scale: it is normalised)")
    metadata: Metadata = Field({}, description="strings and numbers to filter on and to get back with hits")


class IndexVectorsJSON(BaseModel):
    """POST /index/vectors's body: vectors embedded already (by this model: /embed, or an export)."""

    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [
        {"vectors": [{"id": "photos/red.png", "vector": [0.03] * 4, "metadata": {"album": "tests"}}]}]})

    vectors: list[IndexVector] = Field(min_length=1, max_length=10_000)


class IndexDeleteJSON(BaseModel):
    """POST /index/delete's body: the ids to remove, or a filter whose matches are removed (one of the two)."""

    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [
        {"ids": ["photos/red.png", "photos/blue.png"]}, {"filter": {"album": "tests", "year": {"lt": 2020}}}]})

    ids: list[ImageId] | None = Field(None, min_length=1, max_length=10_000)
    filter: Filter | None = Field(
        None, description="remove the images whose metadata matches (as search's filter)")

    @model_validator(mode="after")
    def _one_of(self) -> IndexDeleteJSON:
        if (self.ids is None) == (self.filter is None):
            raise ValueError("give either ids or filter")
        return self


class MetadataPatch(BaseModel):
    """PATCH /index/images/{id}'s body: keys to set, or with null to remove (a JSON merge patch, RFC 7396)."""

    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [
        {"metadata": {"album": "holidays", "draft": None}}]})

    metadata: dict[MetadataKey, MetadataValue | None] = Field(min_length=1, max_length=MAX_METADATA_KEYS)


class IndexChange(BaseModel):
    added: int = Field(description="images new to the index")
    replaced: int = Field(description="images whose id was indexed already, now replaced")
    removed: int = Field(0, description="images removed")
    ids: list[str]
    count: int = Field(description="images in the index after the change")


class IndexedImage(BaseModel):
    id: str
    metadata: dict[str, str | int | float]
    image_url: str = Field(description="the image's thumbnail (JPEG)")
    added: float = Field(description="when it was indexed (Unix time)")


class Familiar(BaseModel):
    """How like the training images an image is (bundles exported before familiarity: both null)."""

    training_distance: float | None = Field(None, description="Mahalanobis distance of the image's normalised "
                                            "representation to the nearest class mean of the training images "
                                            "(GET /version: familiarity); lower is more familiar")
    unlike_training_data: bool | None = Field(None, description="training_distance is beyond the threshold fixed at "
                                              "export (95% of held-out training images are within it): the answer "
                                              "is less to be trusted")


class Embedding(Familiar):
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


class Classification(Familiar):
    predictions: list[Prediction] = Field(description="the top-k classes, best first, with calibrated "
                                          "probabilities (GET /version: evaluation.calibration)")


class ClassifyResponse(BaseModel):
    model: str
    classifications: list[Classification]


class Neighbour(BaseModel):
    id: str = Field(description="the indexed image's id")
    score: float = Field(description="cosine similarity to the query")
    metadata: dict[str, str | int | float] = Field(description="the indexed image's metadata (CIFAR-10's: class "
                                                   "and split)")
    image_url: str = Field(description="the image's thumbnail (JPEG)")


class IndexPage(BaseModel):
    images: list[IndexedImage] = Field(description="in the order they were added")
    next: str | None = Field(description="the cursor of the next page (its `after`), null on the last page")


class SearchResult(BaseModel):
    neighbours: list[Neighbour] = Field(description="the k most similar indexed images, best first")


class SearchResponse(BaseModel):
    model: str
    index_size: int
    results: list[SearchResult]


class Health(BaseModel):
    status: str


class Readiness(BaseModel):
    ready: bool = Field(description="/embed and /classify can be served (and /search, when --index was named)")
    bundle: bool = Field(description="the model bundle is loaded")
    index: bool = Field(description="the similar-image index is loaded")
    search: Literal["loading", "building", "ready", "off"] = Field(
        description="similar-image search: the index is loading, being built (search answers 503 with "
                    "Retry-After meanwhile), ready, or off (search_detail says why)")
    search_detail: str | None = Field(None, description="what the index is doing, or why search is off")
    error: str | None = Field(None, description="why loading the model failed, if it did")


class ProblemDetail(BaseModel):
    """RFC 9457 problem details, sent as application/problem+json."""

    type: str = "about:blank"
    title: str
    status: int
    detail: str
    instance: str | None = None
    request_id: str | None = Field(None, description="the request's X-Request-ID, which the server's log names")


# -- OpenAI-compatible embeddings (/v1): the shapes the openai package sends and reads -----------------------

class EmbeddingsRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [
        {"input": f"data:image/png;base64,{EXAMPLE_IMAGE}", "model": "simclr-resnet18-epoch65-67cac1393604"}]})

    input: str | list[str] = Field(description="an image as a base64 string or a data: URL, or a list of them")
    model: str = Field(description="the served model's id, as GET /v1/models lists it")
    encoding_format: Literal["float", "base64"] = Field("float", description="a list of floats, or base64 of "
                                                       "little-endian float32 (what the openai package asks for)")
    dimensions: int | None = Field(None, description="accepted only as the representation's own size")
    user: str | None = Field(None, description="ignored (accepted for compatibility)")


class EmbeddingObject(Familiar):
    """OpenAI's embedding object; training_distance and unlike_training_data are this service's additions
    (clients that do not know them ignore them)."""

    object: Literal["embedding"] = "embedding"
    index: int
    embedding: list[float] | str = Field(description="the L2-normalised representation")


class Usage(BaseModel):
    prompt_tokens: int = Field(description="images embedded (an image counts as one token)")
    total_tokens: int


class EmbeddingsResponse(BaseModel):
    object: Literal["list"] = "list"
    data: list[EmbeddingObject]
    model: str
    usage: Usage


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int = Field(description="when the bundle's manifest was written (Unix time)")
    owned_by: str = "simclr-cifar"


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


class RuntimeCheckSummary(BaseModel):
    runtime: str
    top1: float = Field(description="its linear top-1 on the test set")
    knn_top1: float | None = Field(description="its kNN top-1 (measured for onnx-int8)")
    top1_agreement: float = Field(description="test images given fp32's first class")
    top3_agreement: float = Field(description="test images given fp32's three classes")
    top3_order_agreement: float = Field(description="test images given fp32's top 3 in fp32's order")
    passed: bool


class CalibrationSummary(BaseModel):
    temperature: float = Field(description="probabilities are softmax(logits / temperature)")
    images: int = Field(description="held-out training images it was fitted on")
    test_ece_before: float = Field(description="expected calibration error (15 bins) on the test set at temperature 1")
    test_ece_after: float


class FamiliaritySummary(BaseModel):
    images: int = Field(description="training images the class means and covariance were estimated on")
    threshold: float = Field(description="training_distance beyond this is unlike_training_data")
    heldout_accepted: float = Field(description="held-out training images within the threshold")
    test_accepted: float | None = Field(description="test images within the threshold")
    rejected: dict[str, float] = Field(description="per set of synthetic images, the share flagged")


class Evaluation(BaseModel):
    """The bundled model's evaluation on its test set (accuracies as fractions), as the manifest records it."""

    protocol: str
    data: str = Field(description="the data evaluated on, by name (its folder's name, never the trainer's path, "
                      "where the evaluation named none)")
    top1: float
    top3: float
    top5: float
    knn_top1: float | None
    runtime_checks: list[RuntimeCheckSummary] = Field([], description="each fast runtime against fp32 on the same "
                                                      "test set, measured at export; auto serves one only if passed")
    calibration: CalibrationSummary | None = Field(None, description="null: the probabilities are not calibrated")


class IndexSummary(BaseModel):
    type: str = Field(description="the FAISS index factory string (Flat: exact search)")
    count: int
    dim: int
    classes: list[str] = Field(description="the values of the metadata key class (at most 100)")
    runtime: str = Field(description="the runtime that embedded the index")
    thumbnail_size: int
    read_only: bool


class TrainingSummary(BaseModel):
    """What trained the served model, as its manifest records it."""

    epochs: float
    checkpoint_epoch: int
    hours: float | None = Field(description="wall-clock hours of its training epochs, over every start; null if "
                                "unrecorded")
    median_pace_hours: float | None = Field(None, description="the same epochs at their median time per view size "
                                            "(pauses and sharing taken out); null if unrecorded")
    machines: list[str] = Field(description="the machines its training ran on")
    commits: list[str] = Field(description="the git commits of the trainer's code that ran")


class Version(BaseModel):
    """What a client needs to know of the served model and index (no server paths)."""

    model: str
    bundle_fingerprint: str = Field(description="sha256 of the bundle's manifest: its identity")
    runtime: str
    backbone: str
    representation_dim: int
    projection_dim: int
    input_size: int
    classes: list[str]
    classifier: bool = Field(description="whether /classify is served")
    checkpoint_epoch: int
    training: TrainingSummary
    evaluation: Evaluation | None
    familiarity: FamiliaritySummary | None = Field(description="what training_distance is measured against; null "
                                                   "for bundles without it")
    index: IndexSummary | None


class ProblemType(BaseModel):
    """A problem type URI's meaning."""

    type: str
    kind: str
    description: str


# -- The Open Inference Protocol (KServe v2 REST, /v2): the shapes tritonclient, KServe and Seldon send and read --

# A request's or answer's parameters: names to booleans, numbers or strings (the protocol's $parameters).
Parameters = dict[str, bool | int | float | str]


class ServerMetadata(BaseModel):
    name: str
    version: str
    extensions: list[str] = Field(description="the protocol's extensions served (binary_tensor_data)")


class ServerLive(BaseModel):
    live: bool


class ServerReady(BaseModel):
    ready: bool = Field(description="the model is loaded and answers inference requests")


class ModelReady(BaseModel):
    name: str
    ready: bool


class TensorMetadata(BaseModel):
    name: str
    datatype: str = Field(description="UINT8, BYTES, FP32 or BOOL")
    shape: list[int] = Field(description="-1: any size (the batch dimension)")


class ModelMetadata(BaseModel):
    name: str
    versions: list[str]
    platform: str = Field(description="what runs the model: pytorch or onnxruntime (GET /version says which runtime)")
    inputs: list[TensorMetadata] = Field(description="send exactly one of them")
    outputs: list[TensorMetadata] = Field(description="all of them unless the request's outputs choose")
    parameters: dict[str, str | int | list[str]] = Field(
        description="this service's addition: the classes (in the order of probabilities' columns), input size, "
                    "runtime and bundle fingerprint")


class InferenceInput(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str
    shape: list[Annotated[int, Field(ge=0)]]
    datatype: str
    parameters: Parameters | None = Field(None, description="binary_data_size: the tensor's bytes follow the JSON "
                                          "(the binary tensor extension)")
    data: list[Any] | None = Field(None, description="the values in row-major order, flat or nested (absent when "
                                   "the tensor is sent as binary data)")


class InferenceRequestedOutput(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str
    parameters: Parameters | None = Field(None, description="binary_data: true for the values as binary data; "
                                          "classification: k, for the top k classes as BYTES "
                                          "\"probability:index:label\" (on probabilities; the classification "
                                          "extension)")


class InferenceRequest(BaseModel):
    """POST /v2/models/{name}/infer's JSON body (with the binary tensor extension: the JSON first, its length in
    the Inference-Header-Content-Length header, then the tensors' bytes)."""

    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [
        {"id": "example",
         "inputs": [{"name": "image_files", "datatype": "BYTES", "shape": [1], "data": [EXAMPLE_IMAGE]}],
         "outputs": [{"name": "embedding"}, {"name": "probabilities", "parameters": {"classification": 3}}]}]})

    id: str | None = Field(None, description="echoed in the answer")
    parameters: Parameters | None = Field(None, description="binary_data_output: true for every output as binary "
                                          "data; others are ignored")
    inputs: list[InferenceInput] = Field(min_length=1)
    outputs: list[InferenceRequestedOutput] | None = Field(None, description="the outputs to answer (default: all)")


class InferenceOutput(BaseModel):
    name: str
    shape: list[int]
    datatype: str
    parameters: Parameters | None = Field(None, description="binary_data_size: the values are binary data after "
                                          "the JSON, in the order of the outputs")
    data: list[Any] | None = Field(None, description="the values in row-major order, flat")


class InferenceResponse(BaseModel):
    model_name: str
    model_version: str | None = None
    id: str | None = None
    parameters: Parameters | None = None
    outputs: list[InferenceOutput]
