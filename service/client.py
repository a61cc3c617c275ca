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
    python -m service.client index remove photos/cat.jpg                    # or: index remove --filter owner=me
    python -m service.client index update photos/cat.jpg '{"album": "pets"}'
    python -m service.client index list                                     # every id and its metadata

The URL and key come from --url / SIMCLR_URL (default http://127.0.0.1:8000) and --api-key / SIMCLR_API_KEY.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import quote

import httpx2
from pydantic import BaseModel
from tqdm import tqdm

from contract.images import EXTENSIONS, list_images
from service.schemas import (ClassifyResponse, EmbedResponse, IndexChange, IndexedImage, IndexPage, IndexSummary,
                             Readiness, SearchResponse)

M = TypeVar("M", bound=BaseModel)
T = TypeVar("T")
Image = str | Path | bytes
# A metadata filter: per key a value, a list (any of them) or conditions ({"gte": 2020, "not": ["draft"]}).
Filter = dict[str, str | float | list[str | float] | dict[str, Any]]
SYMBOLS = {"gt": ">", "gte": ">=", "lt": "<", "lte": "<="}


class ServiceError(Exception):
    """An answer other than 2xx: status, the problem's detail, Retry-After (seconds) where the service sent one
    (503 while the model loads or the index builds), and the request's id (X-Request-ID: the server's log names
    it)."""

    def __init__(self, status: int, detail: str, retry_after: float | None = None, request_id: str | None = None):
        super().__init__(f"{status}: {detail}")
        self.status, self.detail, self.retry_after, self.request_id = status, detail, retry_after, request_id


class Client:
    """The service's API as typed calls. A 503 that says when to retry (Retry-After: the model loading, the index
    building, an overload) is retried up to `retries` times, waiting as asked but at most `max_wait` seconds
    each time; any other problem raises ServiceError at once."""

    def __init__(self, url: str = "http://127.0.0.1:8000", api_key: str | None = None, timeout: float = 60,
                 retries: int = 3, max_wait: float = 30, sleep: Callable[[float], None] = time.sleep):
        headers = {"X-API-Key": api_key} if api_key else {}
        self.http = httpx2.Client(base_url=url, headers=headers, timeout=timeout)
        self.retries, self.max_wait, self._sleep = retries, max_wait, sleep

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.http.close()

    def embed(self, images: list[Image], normalize: bool = True, projection: bool = False) -> EmbedResponse:
        return self._post("/embed", images, EmbedResponse, normalize=normalize, projection=projection)

    def classify(self, images: list[Image], k: int = 3) -> ClassifyResponse:
        return self._post("/classify", images, ClassifyResponse, k=k)

    def search(self, images: list[Image], k: int = 10, class_name: str | None = None, offset: int = 0,
               min_score: float | None = None, filter: Filter | None = None) -> SearchResponse:
        """The k most similar indexed images per image; filter: only those whose metadata has these values."""
        return self._post("/search", images, SearchResponse, k=k, class_name=class_name, offset=offset,
                          min_score=min_score, filter=_filter(filter))

    def search_embeddings(self, embeddings: list[list[float]], k: int = 10, class_name: str | None = None,
                          offset: int = 0, min_score: float | None = None,
                          filter: Filter | None = None) -> SearchResponse:
        """Search with vectors, as embed() returns them."""
        params = _params(k=k, class_name=class_name, offset=offset, min_score=min_score, filter=_filter(filter))
        return self._parse(self._request("POST", "/search", json={"embeddings": embeddings}, params=params),
                           SearchResponse)

    def search_by_id(self, id: str, k: int = 10, class_name: str | None = None, offset: int = 0,
                     min_score: float | None = None, filter: Filter | None = None) -> SearchResponse:
        params = _params(id=id, k=k, class_name=class_name, offset=offset, min_score=min_score, filter=_filter(filter))
        return self._parse(self._request("GET", "/search", params=params), SearchResponse)

    def thumbnail(self, id: str) -> bytes:
        """An indexed image's thumbnail, as JPEG bytes."""
        response = self._request("GET", f"/thumbnails/{quote(id, safe='/')}")
        _check(response)
        return response.content

    def index_add(self, images: list[Image], ids: list[str] | None = None,
                  metadata: list[dict[str, Any]] | dict[str, Any] | None = None) -> IndexChange:
        """Add images to the index (replacing those with the same ids); ids default to the files' names,
        metadata is one object per image or one for all."""
        files = [("images", (_name(image, i), _read(image))) for i, image in enumerate(images)]
        metadata = [metadata] if isinstance(metadata, dict) else metadata or []
        fields = [("ids", id) for id in ids or []] + [("metadata", json.dumps(m)) for m in metadata]
        return self._parse(self._request("POST", "/index/images", files=files, data=_form(fields)), IndexChange)

    def index_add_vectors(self, ids: list[str], vectors: list[list[float]],
                          metadata: list[dict[str, Any]] | None = None) -> IndexChange:
        """Add vectors embedded already (embed()'s representations), with ids and metadata, without images."""
        rows = [{"id": id, "vector": list(vector), "metadata": m}
                for id, vector, m in zip(ids, vectors, metadata or [{}] * len(ids), strict=True)]
        return self._parse(self._request("POST", "/index/vectors", json={"vectors": rows}), IndexChange)

    def index_remove(self, id: str) -> IndexChange:
        return self._parse(self._request("DELETE", f"/index/images/{quote(id, safe='/')}"), IndexChange)

    def index_delete(self, ids: list[str] | None = None,
                     filter: Filter | None = None) -> IndexChange:
        """Remove many images in one request: these ids, or every image whose metadata matches filter."""
        body = {"ids": ids} if ids is not None else {"filter": filter}
        return self._parse(self._request("POST", "/index/delete", json=body), IndexChange)

    def index_update(self, id: str, metadata: dict[str, str | float | None]) -> IndexedImage:
        """Set these metadata keys of an indexed image (None removes a key), without sending the image."""
        return self._parse(self._request("PATCH", f"/index/images/{quote(id, safe='/')}",
                                         json={"metadata": metadata}), IndexedImage)

    def index_get(self, id: str) -> IndexedImage:
        return self._parse(self._request("GET", f"/index/images/{quote(id, safe='/')}"), IndexedImage)

    def index_images(self, filter: Filter | None = None, page_size: int = 500) -> Iterator[IndexedImage]:
        """Every indexed image (whose metadata matches filter), in the order they were added, a page at a time."""
        after = None
        while True:
            params = _params(after=after, limit=page_size, filter=_filter(filter))
            page = self._parse(self._request("GET", "/index/images", params=params), IndexPage)
            yield from page.images
            if page.next is None:
                return
            after = page.next

    def index_summary(self) -> IndexSummary:
        return self._parse(self._request("GET", "/index"), IndexSummary)

    def readiness(self) -> Readiness:
        response = self.http.get("/readyz")  # 503 until ready: an answer, not an error
        return Readiness.model_validate_json(response.content)

    def _post(self, path: str, images: list[Image], model: type[M], **params: Any) -> M:
        files = [("images", (_name(image, i), _read(image))) for i, image in enumerate(images)]
        return self._parse(self._request("POST", path, files=files, params=_params(**params)), model)

    def _request(self, method: str, path: str, **kwargs: Any) -> httpx2.Response:
        """The answer, after waiting out up to `retries` 503s that carry a Retry-After."""
        attempts = 0
        while True:
            response = self.http.request(method, path, **kwargs)
            retry = response.headers.get("retry-after", "")
            if response.status_code != 503 or not retry.isdigit() or attempts == self.retries:
                return response
            attempts += 1
            self._sleep(min(float(retry), self.max_wait))

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
    raise ServiceError(response.status_code, detail, float(retry) if retry else None,
                       response.headers.get("x-request-id"))


def _filter(filter: Filter | None) -> list[str] | None:
    """A filter as the query string's key:value strings: {"tag": "a"}, {"tag": ["a", "b"]} (any of them) or
    conditions, {"year": {"gte": 2020, "lt": 2025}, "tag": {"not": ["draft"]}}."""
    if not filter:
        return None
    texts = []
    for key, value in filter.items():
        conditions = value if isinstance(value, dict) else {"in": value}
        for op, operand in conditions.items():
            if op in SYMBOLS:
                texts.append(f"{key}{SYMBOLS[op]}{operand}")
            else:
                separator = {"in": ":", "not": "!="}[op]
                texts += [f"{key}{separator}{v}" for v in (operand if isinstance(operand, list) else [operand])]
    return texts


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
    remove = actions.add_parser("remove", help="remove images: these ids, or those whose metadata matches --filter")
    remove.add_argument("ids", nargs="*")
    remove.add_argument("--filter", action="append", metavar="KEY=VALUE", help="metadata to match (repeat for more "
                        "keys; a key given twice matches either value)")
    update = actions.add_parser("update", help="change an image's metadata (null removes a key), not its image")
    update.add_argument("id")
    update.add_argument("metadata", type=json.loads, help='a JSON object, e.g. \'{"album": "x", "draft": null}\'')
    actions.add_parser("list", help="every indexed image: id and metadata, one per line")
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
        if bool(args.ids) == bool(args.filter):
            raise ServiceError(0, "give the ids to remove, or --filter KEY=VALUE, not both")
        change = client.index_delete(args.ids or None, _key_values(args.filter) if args.filter else None)
        print(f"removed {change.removed} images: {change.count} in the index")
    elif args.action == "update":
        print(client.index_update(args.id, args.metadata).model_dump_json())
    elif args.action == "list":
        for image in client.index_images():
            print(json.dumps({"id": image.id, "metadata": image.metadata}))
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


def _key_values(pairs: list[str]) -> dict[str, list[str | float]]:
    """KEY=VALUE strings as a filter: each key with the values given for it."""
    filter: dict[str, list[str | float]] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise ServiceError(0, f"--filter {pair!r} is not KEY=VALUE")
        filter.setdefault(key, []).extend([value, *_number(value)])  # "3" matches the text and the number
    return filter


def _number(text: str) -> list[float]:
    try:
        return [int(text)]
    except ValueError:
        try:
            return [float(text)]
        except ValueError:
            return []


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
