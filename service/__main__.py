"""Run the service with uvicorn.

    python -m service --bundle bundles/r18 --index indexes/cifar10-train --port 8000
    SIMCLR_BUNDLE=bundles/r18 SIMCLR_PORT=8000 python -m service       # the same, from the environment

Every setting (python -m service --help) is a flag or a SIMCLR_* environment variable; flags win. The bundle
and index are checked before the server starts, so a bad path or a mismatched pair is one line of error.
"""

from __future__ import annotations

import logging
import sys

import uvicorn
from pydantic import ValidationError

from contract.bundle import BundleError, read_manifest
from service.app import create_app
from service.index import SearchIndexError, read_info
from service.settings import Settings


def main() -> int:
    try:
        settings = Settings(_cli_parse_args=True)
        _, fingerprint = read_manifest(settings.bundle)
        if settings.index is not None:
            read_info(settings.index, fingerprint)
    except ValidationError as e:
        problems = "; ".join(f"--{'-'.join(map(str, err['loc']))}: {err['msg']}" for err in e.errors())
        print(f"error: {problems}", file=sys.stderr)
        return 2
    except (BundleError, SearchIndexError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.INFO, format="%(levelname)s:     %(message)s")
    uvicorn.run(create_app(settings), host=settings.host, port=settings.port, root_path=settings.root_path,
                log_level="info")
    return 0


if __name__ == "__main__":
    sys.exit(main())
