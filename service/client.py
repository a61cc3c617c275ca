"""A Python client for the service, on httpx2: typed results (the service's own response models) and every
problem raised as a ServiceError; and a command line on it.

    from service.client import Client
    with Client("http://127.0.0.1:8000", api_key=None) as client:
        client.classify(["cat.jpg"], k=3).classifications[0].predictions[0].class_name
        client.search(["cat.jpg"], k=5).results[0].neighbours

    python -m service.client classify cat.jpg dog.png        # top-3 classes per image
    python -m service.client search cat.jpg -k 5             # the most similar indexed images
    python -m service.client embed photos/ --json            # a folder: batched, with a progress bar
    python -m service.client index add photos/ --metadata '{"owner": "me"}'   # ids: paths under photos/
    python -m service.client index remove photos/cat.jpg

The URL and key come from --url / SIMCLR_URL (default http://127.0.0.1:8000) and --api-key / SIMCLR_API_KEY.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import quote

import httpx2
from pydantic import BaseModel
from tqdm import tqdm

from contract.images import EXTENSIONS, list_images
from service.schemas import (ClassifyResponse, EmbedResponse, IndexChange, IndexedImage, IndexSummary, Readiness,
                             SearchResponse)

M = TypeVar("M", bound=BaseModel)
T = TypeVar("T")
Image = str | Path | bytes


class ServiceError(Exception):
    """An answer other than 2xx: status, the problem's detail, and Retry-After (seconds) where the service sent
    one (503 while the model loads or the index builds)."""

    def __init__(self, status: int, detail: str, retry_after: float | None = None):
        super().__init__(f"{status}: {detail}")
        self.status, self.detail, self.retry_after = status, detail, retry_after


class Client:
    def __init__(self, url: str = "http://127.0.0.1:8000", api_key: str | None = None, timeout: float = 60):
        headers = {"X-API-Key": api_key} if api_key else {}
        self.http = httpx2.Client(base_url=url, headers=headers, timeout=timeout)

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.http.close()

    def embed(self, images: list[Image], normalize: bool = True, projection: bool = False) -> EmbedResponse:
        return self._post("/embed", images, EmbedResponse, normalize=normalize, projection=projection)

    def classify(self, images: list[Image], k: int = 3) -> ClassifyResponse:
        return self._post("/classify", images, ClassifyResponse, k=k)

    def search(self, images: list[Image], k: int = 10, class_name: str | None = None, offset: int = 0,
               min_score: float | None = None, filter: dict[str, str | float] | None = None) -> SearchResponse:
        """The k most similar indexed images per image; filter: only those whose metadata has these values."""
        return self._post("/search", images, SearchResponse, k=k, class_name=class_name, offset=offset,
                          min_score=min_score, filter=_filter(filter))

    def search_embeddings(self, embeddings: list[list[float]], k: int = 10, class_name: str | None = None,
                          offset: int = 0, min_score: float | None = None,
                          filter: dict[str, str | float] | None = None) -> SearchResponse:
        """Search with vectors, as embed() returns them."""
        params = _params(k=k, class_name=class_name, offset=offset, min_score=min_score, filter=_filter(filter))
        return self._parse(self.http.post("/search", json={"embeddings": embeddings}, params=params), SearchResponse)

    def search_by_id(self, id: str, k: int = 10, class_name: str | None = None, offset: int = 0,
                     min_score: float | None = None, filter: dict[str, str | float] | None = None) -> SearchResponse:
        params = _params(id=id, k=k, class_name=class_name, offset=offset, min_score=min_score, filter=_filter(filter))
        return self._parse(self.http.get("/search", params=params), SearchResponse)

    def thumbnail(self, id: str) -> bytes:
        """An indexed image's thumbnail, as JPEG bytes."""
        response = self.http.get(f"/thumbnails/{quote(id, safe='/')}")
        _check(response)
        return response.content

    def index_add(self, images: list[Image], ids: list[str] | None = None,
                  metadata: list[dict[str, Any]] | dict[str, Any] | None = None) -> IndexChange:
        """Add images to the index (replacing those with the same ids); ids default to the files' names,
        metadata is one object per image or one for all."""
        files = [("images", (_name(image, i), _read(image))) for i, image in enumerate(images)]
        metadata = [metadata] if isinstance(metadata, dict) else metadata or []
        fields = [("ids", id) for id in ids or []] + [("metadata", json.dumps(m)) for m in metadata]
        return self._parse(self.http.post("/index/images", files=files, data=_form(fields)), IndexChange)

    def index_remove(self, id: str) -> IndexChange:
        return self._parse(self.http.delete(f"/index/images/{quote(id, safe='/')}"), IndexChange)

    def index_get(self, id: str) -> IndexedImage:
        return self._parse(self.http.get(f"/index/images/{quote(id, safe='/')}"), IndexedImage)

    def index_summary(self) -> IndexSummary:
        return self._parse(self.http.get("/index"), IndexSummary)

    def readiness(self) -> Readiness:
        response = self.http.get("/readyz")  # 503 until ready: an answer, not an error
        return Readiness.model_validate_json(response.content)

    def _post(self, path: str, images: list[Image], model: type[M], **params: Any) -> M:
        files = [("images", (_name(image, i), _read(image))) for i, image in enumerate(images)]
        return self._parse(self.http.post(path, files=files, params=_params(**params)), model)

    @staticmethod
    def _parse(response: httpx2.Response, model: type[M]) -> M:
        _check(response)
        return model.model_validate_json(response.content)


def _check(response: httpx2.Response) -> None:
    if response.is_success:
        return
    try:
        detail = response.json()["detail"]
    except (ValueError, KeyError, TypeError):
        detail = response.text[:300] or response.reason_phrase
    retry = response.headers.get("retry-after")
    raise ServiceError(response.status_code, detail, float(retry) if retry else None)


def _filter(filter: dict[str, str | float] | None) -> list[str] | None:
    return [f"{key}:{value}" for key, value in filter.items()] if filter else None


def _form(fields: list[tuple[str, str]]) -> dict[str, list[str]]:
    form: dict[str, list[str]] = {}
    for name, value in fields:
        form.setdefault(name, []).append(value)
    return form


def _params(**params: Any) -> dict[str, Any]:
    return {k: str(v).lower() if isinstance(v, bool) else v for k, v in params.items() if v is not None}


def _name(image: Image, i: int) -> str:
    return Path(image).name if isinstance(image, (str, Path)) else f"image-{i}"


def _read(image: Image) -> bytes:
    return image if isinstance(image, bytes) else Path(image).read_bytes()


# -- the command line ----------------------------------------------------------------------------------------

def expand(paths: list[str]) -> list[Path]:
    """Files as given, folders as the image files under them."""
    found = []
    for path in map(Path, paths):
        if path.is_dir():
            found += list_images(path)
        elif path.is_file():
            found.append(path)
        else:
            raise ServiceError(0, f"{path} is neither a file nor a folder")
    return found


def batches(files: list[T], size: int) -> Iterator[list[T]]:
    with tqdm(total=len(files), unit="img", disable=len(files) <= size, file=sys.stderr) as bar:
        for start in range(0, len(files), size):
            yield files[start:start + size]
            bar.update(len(files[start:start + size]))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m service.client", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", default=os.environ.get("SIMCLR_URL", "http://127.0.0.1:8000"))
    parser.add_argument("--api-key", default=os.environ.get("SIMCLR_API_KEY"))
    parser.add_argument("--json", action="store_true", help="print each answer as a JSON line")
    parser.add_argument("--batch", type=int, default=16, help="images per request (default: 16)")
    commands = parser.add_subparsers(dest="command", required=True)
    for name, what in [("embed", "the representation of each image"), ("classify", "the top-k classes"),
                       ("search", "the most similar indexed images")]:
        command = commands.add_parser(name, help=what)
        command.add_argument("paths", nargs="+", help=f"image files or folders ({', '.join(EXTENSIONS)})")
        if name != "embed":
            command.add_argument("-k", type=int, default=3 if name == "classify" else 10)
        if name == "search":
            command.add_argument("--class-name", help="only neighbours of this class")
    index = commands.add_parser("index", help="add images to the index, remove them, or show it")
    actions = index.add_subparsers(dest="action", required=True)
    add = actions.add_parser("add", help="add (or replace) images; ids are their paths under a folder given, "
                             "or their file names")
    add.add_argument("paths", nargs="+", help="image files or folders")
    add.add_argument("--metadata", type=json.loads, default=None, help="a JSON object given to every image")
    actions.add_parser("remove", help="remove images by id").add_argument("ids", nargs="+")
    actions.add_parser("info", help="what the index is and holds")
    args = parser.parse_args(argv)
    try:
        with Client(args.url, args.api_key) as client:
            if args.command == "index":
                return _index(client, args)
            files = expand(args.paths)
            for batch in batches(files, args.batch):
                for file, answer in zip(batch, _ask(client, args, batch)):
                    print(json.dumps({"file": str(file), **answer}) if args.json else _line(file, args.command, answer))
    except ServiceError as e:
        print(f"error: {e.detail if e.status == 0 else e}", file=sys.stderr)
        return 2
    except (httpx2.TransportError, OSError) as e:
        print(f"error: {args.url}: {e}", file=sys.stderr)
        return 2
    return 0


def _index(client: Client, args: argparse.Namespace) -> int:
    if args.action == "info":
        print(client.index_summary().model_dump_json(indent=2))
    elif args.action == "remove":
        for id in args.ids:
            print(f"removed {id}: {client.index_remove(id).count} images in the index")
    else:
        files = [(path, id) for given in map(Path, args.paths) for path, id in _with_ids(given)]
        if not files:
            raise ServiceError(0, f"no images in {', '.join(args.paths)}")
        for batch in batches(files, args.batch):
            change = client.index_add([path for path, _ in batch], [id for _, id in batch], args.metadata)
            if args.json:
                print(change.model_dump_json())
        print(f"added {len(files)} images: {change.count} in the index", file=sys.stderr)
    return 0


def _with_ids(path: Path) -> list[tuple[Path, str]]:
    """(file, id) pairs: a folder's images with their paths under it as ids, a file with its name."""
    if path.is_dir():
        return [(file, file.relative_to(path).as_posix()) for file in list_images(path)]
    if path.is_file():
        return [(path, path.name)]
    raise ServiceError(0, f"{path} is neither a file nor a folder")


def _ask(client: Client, args: argparse.Namespace, batch: list[Path]) -> list[dict]:
    if args.command == "embed":
        return [e.model_dump() for e in client.embed(batch).embeddings]
    if args.command == "classify":
        return [c.model_dump() for c in client.classify(batch, args.k).classifications]
    return [r.model_dump() for r in client.search(batch, args.k, args.class_name).results]


def _line(file: Path, command: str, answer: dict) -> str:
    unlike = " (unlike the training data)" if answer.get("unlike_training_data") else ""
    if command == "classify":
        return (f"{file}: " + ", ".join(f"{p['class_name']} {p['probability']:.3f}" for p in answer["predictions"])
                + unlike)
    if command == "search":
        return f"{file}: " + ", ".join(f"{n['id']} ({n['metadata'].get('class', '-')}) {n['score']:.3f}"
                                      for n in answer["neighbours"])
    vector = answer["representation"]
    return f"{file}: {len(vector)}-d [{', '.join(f'{x:.4f}' for x in vector[:4])}, ...]{unlike}"


if __name__ == "__main__":
    sys.exit(main())
