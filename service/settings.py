"""Service settings: defaults < environment variables (SIMCLR_*) < command-line flags (python -m service)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


# models/reference beside the packages: there in a clone (an editable install), not in a wheel.
REFERENCE_BUNDLE = Path(__file__).resolve().parents[1] / "models" / "reference"
LogFormat = Literal["text", "json"]


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="SIMCLR_", cli_kebab_case=True, cli_prog_name="python -m service")

    bundle: Path = Field(REFERENCE_BUNDLE, description="model bundle directory (python -m trainer.export); "
                         "unless given, the reference model committed with the project")
    index: Path | None = Field(None, description="index directory to serve (python -m service.build_index); "
                               "without it, the bundle's index in --index-root is served, built there first when "
                               "missing")
    index_uri: str | None = Field(None, pattern=r"^(milvus|milvus\+https|milvus-lite):", description="keep the "
                                  "index in Milvus instead of a folder: milvus://HOST:PORT[?collection=NAME] (the "
                                  "bundle's collection by default; milvus+https:// for TLS, milvus://USER:PASSWORD@"
                                  "HOST:PORT with credentials), or Milvus Lite as milvus-lite:FOLDER; a missing "
                                  "collection is made, and filled from --data-dir, as a missing folder index is")
    index_root: Path = Field(Path("indexes"), description="where indexes built by the service are kept, one "
                             "folder per bundle")
    data_dir: Path | None = Field(Path("data/cifar10"), description="images the service indexes when the bundle "
                                  "has no index yet: CIFAR-10 (torchvision's layout, downloaded into an empty or "
                                  "missing folder) or an image folder; embeddings and classes are served while "
                                  "it builds; null: start an empty index, for images added through the API")
    download: bool = Field(True, description="download CIFAR-10 into an empty or missing --data-dir")
    thumbnail_size: int = Field(128, ge=16, le=1024, description="longest side of the thumbnails an index made "
                                "by the service keeps (python -m service.build_index has its own flag)")
    index_mmap: bool = Field(False, description="open --index's vectors memory-mapped and read-only: less memory "
                             "for a large index, and additions and deletions are refused (409)")

    @model_validator(mode="after")
    def _one_index(self) -> Settings:
        if self.index is not None and self.index_uri is not None:
            raise ValueError("give --index (a folder) or --index-uri (Milvus), not both")
        return self

    @field_validator("data_dir", mode="before")
    @classmethod
    def _empty_is_none(cls, value: object) -> object:
        """SIMCLR_DATA_DIR= (empty), like --data-dir null, means: start an empty index."""
        return None if value == "" else value
    host: str = Field("127.0.0.1", description="address to listen on")
    root_path: str = Field("", pattern=r"^(/[^/]+)*$", description="the path prefix a reverse proxy serves the "
                           "service under (e.g. /simclr): the URLs it hands out (image_url, the page's) carry it")
    port: int = Field(8000, ge=0, le=65535, description="port to listen on")
    grpc_port: int | None = Field(None, ge=0, le=65535, description="also serve the Open Inference Protocol over "
                                  "gRPC (KServe v2, as Triton does on 8001) on this port; needs pip install "
                                  "'.[grpc]'; off by default")
    workers: int = Field(1, ge=1, le=64, description="service processes, each with its own copy of the model, "
                         "sharing the port and the index (a folder's on this host, or Milvus); each gets "
                         "--torch-threads cores / workers unless that is given")
    max_request_bytes: int = Field(16 * 2**20, gt=0, description="largest request body; larger ones get 413")
    max_images: int = Field(64, gt=0, description="most images in one request")
    max_image_pixels: int = Field(40_000_000, gt=0, description="largest image (width x height) decoded; "
                                  "larger ones get 413, which also stops decompression bombs")
    max_batch_size: int | None = Field(None, gt=0, description="most images in one inference batch (default: 64 "
                                       "on a CPU, 256 on a GPU)")
    max_wait_ms: float = Field(2.0, ge=0, description="how long a batch waits at most for requests still being read")
    max_queue_images: int = Field(256, gt=0, description="most images waiting for the model; past it requests "
                                  "get a fast 503 with Retry-After")
    max_queue_wait_ms: float = Field(2000, gt=0, description="longest a request waits for the model before it "
                                     "gets a 503 with Retry-After instead of a late answer")
    device: Literal["auto", "cpu", "cuda"] = Field("auto", description="where torch runs the model (auto: a CUDA "
                                                   "GPU when torch sees one)")
    runtime: Literal["auto", "torch-fp32", "torch-bf16", "torch-fp16", "onnx-fp32", "onnx-int8"] = Field(
        "auto", description="what runs the model: torch in fp32 or bf16 (about 2x faster on CPUs with fast bf16, "
        "slower elsewhere), or ONNX Runtime on the bundle's fp32 or int8 graph; auto times those the bundle offers "
        "at start and takes the fastest of those that passed the export's accuracy gate (runtime_checks)")
    # Inference gets every core: one batch runs at a time and torch parallelises inside it.
    torch_threads: int = Field(os.cpu_count() or 1, gt=0, description="torch intra-op threads")
    # One thread per search: a single query is too small to split, and more threads would fight torch for cores.
    faiss_threads: int = Field(1, gt=0, description="FAISS OpenMP threads")
    api_key: SecretStr | None = Field(None, min_length=1, description="when set, every route but /healthz, "
                                      "/readyz and /metrics needs it as the X-API-Key header or Authorization: "
                                      "Bearer (prefer SIMCLR_API_KEY to the flag: flags show in the process list)")
    log_format: LogFormat = Field("text", description="text lines as uvicorn writes them, or json: one JSON "
                                  "object a line (time, level, logger, message, request_id; access lines also "
                                  "method, path, status) for log pipelines")
    # Closed by default: browsers may only call the API from the page it serves itself.
    cors_origins: list[str] = Field([], description="origins allowed to call the API from a browser (CORS); "
                                    "none by default")
