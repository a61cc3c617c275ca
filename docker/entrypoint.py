"""The service container's start: check the bundle, build its index on first start, then serve.

- No usable bundle (missing, not a bundle, corrupt): one line saying so, exit status 1. An untrained or
  altered model is never served: nothing but a verified bundle, no fallback to an untrained network.
- The index lives under INDEX_ROOT/<bundle fingerprint> (a named volume), so it is built once per bundle and a
  changed bundle gets its own. It is built from INDEX_DATA_DIR with `python -m service.build_index`, whose
  progress goes to the log; meanwhile a stand-in server answers /healthz (alive) and 503 elsewhere, so the
  health check passes and /readyz stays false until the real service has loaded.
- Then `python -m service` replaces this process, with every SIMCLR_* setting from the environment.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from contract.bundle import BundleError, read_manifest


def log(message: str) -> None:
    print(f"entrypoint: {message}", file=sys.stderr, flush=True)


class NotReady(BaseHTTPRequestHandler):
    """Alive but not ready: what the service itself answers while it loads, here while the index is built."""

    def do_GET(self) -> None:
        if self.path == "/healthz":
            self._answer(200, "application/json", b'{"status":"ok"}')
        else:
            self._answer(503, "application/problem+json",
                         b'{"type":"about:blank","title":"Service Unavailable","status":503,'
                         b'"detail":"the search index is being built; see the container log"}')

    do_POST = do_GET

    def _answer(self, status: int, content_type: str, body: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args) -> None:  # the health check would fill the log
        pass


def relay(stream, every: float = 10.0) -> None:
    """Copy the build's output to the log: tqdm redraws its bar after a carriage return, which a container log
    would keep as one ever-growing line. Each redraw becomes a line of its own, at most one every `every` s."""
    last, pending = 0.0, b""
    for chunk in iter(lambda: stream.read1(4096), b""):
        *pieces, pending = re.split(rb"(\r\n|\r|\n)", pending + chunk)
        for text, end in zip(pieces[::2], pieces[1::2]):
            if text.strip() and (end != b"\r" or time.monotonic() - last >= every):
                print(text.decode(errors="replace"), file=sys.stderr, flush=True)
                last = time.monotonic()


def build_index(bundle: str, data_dir: str, out: Path, port: int) -> None:
    log(f"no index for this bundle yet: building {out} from {data_dir} (once; kept in the volume)")
    server = ThreadingHTTPServer((os.environ.get("SIMCLR_HOST", "0.0.0.0"), port), NotReady)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        build = subprocess.Popen([sys.executable, "-m", "service.build_index", "--bundle", bundle,
                                  "--data-dir", data_dir, "--out", str(out)],
                                 stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        relay(build.stdout)
        if build.wait() != 0:
            log(f"building the index failed (exit status {build.returncode}): see the lines above; "
                f"mount a CIFAR-10 image folder train/<class>/* with CIFAR10_DIR")
            sys.exit(1)
    finally:
        server.shutdown()
        server.server_close()


def main() -> None:
    bundle = os.environ.get("SIMCLR_BUNDLE", "/bundle")
    try:
        _, fingerprint = read_manifest(bundle)
    except BundleError as e:
        log(f"error: no usable model bundle, not serving: {e}; set BUNDLE_DIR to a bundle directory")
        sys.exit(1)
    except PermissionError as e:  # export writes its files 0600: the host user's, unreadable to this uid
        log(f"error: the model bundle is not readable by the container's user (uid {os.getuid()}): {e}; "
            f"make it readable with chmod -R a+rX on BUNDLE_DIR")
        sys.exit(1)
    if "SIMCLR_INDEX" not in os.environ:  # an index chosen by the user is served as it is
        index = Path(os.environ["INDEX_ROOT"]) / fingerprint[:16]
        if not (index / "index.json").is_file():  # written last: without it a build did not finish
            build_index(bundle, os.environ["INDEX_DATA_DIR"], index, int(os.environ.get("SIMCLR_PORT", "8000")))
        os.environ["SIMCLR_INDEX"] = str(index)
    log(f"serving bundle {bundle} with index {os.environ['SIMCLR_INDEX']}")
    os.execvp(sys.executable, [sys.executable, "-m", "service"])


if __name__ == "__main__":
    main()
