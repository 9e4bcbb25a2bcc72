#!/usr/bin/env bash
# Run a real Triton Inference Server (CPU) on a model repository written by `rwkv-deploy package --triton`,
# on 127.0.0.1 only: the way to test a repository locally. Production runs NGC's container on the same
# repository (docs/deploy.md).
#
#   scripts/triton_server.sh REPO --http-port P --grpc-port Q [--metrics-port R] [-- TRITONSERVER_ARGS...]
#
# What it does, once per cache (later starts take a few seconds):
#   1. the server: PyPI's nvidia-pytriton wheel (pip download, pinned by version and sha256), unzipped, not
#      installed (installing it would pin numpy below 2). Its pytriton/tritonserver/bin/tritonserver is
#      Triton 2.51.0, the release of NGC's 24.10 container, with only the Python backend.
#   2. Triton's ONNX Runtime backend (r24.10), which no registry ships, built against the libonnxruntime.so
#      of the onnxruntime wheel installed in $PYTHON's environment (.venv by default), from
#      ../shared/vendor/triton-onnxruntime-backend when present, else from the upstream tags (git, online).
#      Needs cmake, make, g++ and Debian's rapidjson-dev; missing ones are installed with apt-get (as root,
#      else with sudo), as the Makefile does for chromium. The build is keyed by the sha256 of the backend
#      sources, the ONNX Runtime library and headers, the server wheel and this recipe: a change to any of
#      them builds again.
# Then it starts the server with the given ports on 127.0.0.1 (metrics are off unless --metrics-port is
# given), waits until the server is ready, prints `tritonserver pid PID` on stdout and stays in the
# foreground. SIGTERM or SIGINT stops the server cleanly: it refuses new sequences (UNAVAILABLE), lets live
# ones send their remaining requests for at most $RWKV_TRITON_EXIT_TIMEOUT seconds (default 5) and exits:
# status 0, or 1 when sequences were still live at the timeout (Triton counts each as in flight until its
# END). The script exits with the server's status.
# Server logs go to stderr. Arguments after `--` go to tritonserver as they are (e.g.
# --model-control-mode=explicit --load-model=*).
#
# Environment: RWKV_TRITON_CACHE (cache folder, default .triton-cache/ in the repository, git-ignored),
# PYTHON (the Python whose onnxruntime is used, default .venv/bin/python), RWKV_TRITON_VENDOR (default
# ../shared/vendor), RWKV_TRITON_READY_TIMEOUT (seconds, default 120), RWKV_TRITON_EXIT_TIMEOUT (default 5),
# RWKV_TRITON_GIT (upstream base URL, default https://github.com/triton-inference-server),
# RWKV_ORT_RELEASES (default https://github.com/microsoft/onnxruntime/releases/download).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
CACHE=${RWKV_TRITON_CACHE:-$ROOT/.triton-cache}
PYTHON=${PYTHON:-$ROOT/.venv/bin/python}
VENDOR=${RWKV_TRITON_VENDOR:-$ROOT/../shared/vendor}
READY_TIMEOUT=${RWKV_TRITON_READY_TIMEOUT:-120}
EXIT_TIMEOUT=${RWKV_TRITON_EXIT_TIMEOUT:-5}
TRITON_GIT=${RWKV_TRITON_GIT:-https://github.com/triton-inference-server}
ORT_RELEASES=${RWKV_ORT_RELEASES:-https://github.com/microsoft/onnxruntime/releases/download}

PYTRITON_VERSION=0.7.0  # tritonserver 2.51.0 = NGC 24.10
PYTRITON_SHA256=21f063ff93bb426d0c06b7a55e7eb9efcfe62c0dddd9a908e9877e18710128df
BACKEND_TAG=r24.10      # the backend release that matches the server
RECIPE=1                # bump when the build below changes: it is part of the cache key

die() { echo "triton_server.sh: $*" >&2; exit 2; }
log() { echo "triton_server.sh: $*" >&2; }

usage() { die "usage: scripts/triton_server.sh REPO --http-port P --grpc-port Q [--metrics-port R] [-- TRITONSERVER_ARGS...]"; }

# -- arguments ------------------------------------------------------------------------------------------------

REPO="" HTTP_PORT="" GRPC_PORT="" METRICS_PORT="" EXTRA=() CACHE_INFO=""
while [ $# -gt 0 ]; do
  case "$1" in
    --http-port) [ $# -ge 2 ] || usage; HTTP_PORT=$2; shift 2 ;;
    --grpc-port) [ $# -ge 2 ] || usage; GRPC_PORT=$2; shift 2 ;;
    --metrics-port) [ $# -ge 2 ] || usage; METRICS_PORT=$2; shift 2 ;;
    --http-port=*) HTTP_PORT=${1#*=}; shift ;;
    --grpc-port=*) GRPC_PORT=${1#*=}; shift ;;
    --metrics-port=*) METRICS_PORT=${1#*=}; shift ;;
    --cache-info) CACHE_INFO=1; shift ;;
    --) shift; EXTRA=("$@"); break ;;
    -h|--help) sed -n '2,30p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; exit 0 ;;
    -*) die "unknown option $1 (tritonserver's own options go after --)" ;;
    *) [ -z "$REPO" ] || usage; REPO=$1; shift ;;
  esac
done
if [ -z "$CACHE_INFO" ]; then
  [ -n "$REPO" ] && [ -n "$HTTP_PORT" ] && [ -n "$GRPC_PORT" ] || usage
  [ -d "$REPO" ] || die "$REPO: no such model repository directory"
  for port in "$HTTP_PORT" "$GRPC_PORT" ${METRICS_PORT:+"$METRICS_PORT"}; do
    [[ "$port" =~ ^[0-9]+$ ]] && [ "$port" -ge 1 ] && [ "$port" -le 65535 ] || die "port $port: expected 1-65535"
  done
  REPO=$(cd "$REPO" && pwd)
fi

# -- helpers --------------------------------------------------------------------------------------------------

sha256() { sha256sum "$@" | cut -d' ' -f1; }

APT_GET=(env DEBIAN_FRONTEND=noninteractive apt-get)
[ "$(id -u)" = 0 ] || APT_GET=(sudo "${APT_GET[@]}")

need_debian_packages() {  # need_debian_packages CHECK PACKAGE ...: install PACKAGEs when CHECK fails
  local check=$1; shift
  eval "$check" && return 0
  command -v apt-get >/dev/null || die "needs $* (not found, and no apt-get to install them)"
  log "installing $* with apt-get"
  "${APT_GET[@]}" update -q >&2 && "${APT_GET[@]}" install -y -q --no-install-recommends "$@" >&2 ||
    die "apt-get install $* failed"
}

# -- what the cache holds for this environment ---------------------------------------------------------------

[ -x "$PYTHON" ] || die "$PYTHON: no Python with onnxruntime (run \`make setup\`, or set PYTHON)"
ORT_VERSION=$("$PYTHON" -c 'import onnxruntime; print(onnxruntime.__version__)' 2>/dev/null) ||
  die "$PYTHON: cannot import onnxruntime (run \`make setup\`)"
ORT_CAPI=$("$PYTHON" -c 'import onnxruntime, os; print(os.path.join(os.path.dirname(onnxruntime.__file__), "capi"))')
ORT_LIB=$(ls "$ORT_CAPI"/libonnxruntime.so.* 2>/dev/null | head -n1 || true)
[ -n "$ORT_LIB" ] || die "$ORT_CAPI: no libonnxruntime.so.* in the onnxruntime wheel"

TARBALL=$VENDOR/triton-onnxruntime-backend/triton-$BACKEND_TAG-src.tar.gz
HEADERS=$VENDOR/onnxruntime-c-api
if [ -f "$TARBALL" ] && [ -f "$HEADERS/onnxruntime_c_api.h" ]; then
  SOURCE="vendor $(sha256 "$TARBALL") $(cat "$HEADERS"/*.h | sha256sum | cut -d' ' -f1)"
else
  SOURCE="upstream $BACKEND_TAG onnxruntime-headers-v$ORT_VERSION"
fi
KEY=$(printf '%s\n' "recipe $RECIPE" "$SOURCE" "ort $(sha256 "$ORT_LIB")" "pytriton $PYTRITON_SHA256" | sha256sum | cut -c1-16)
BACKENDS=$CACHE/backends-$KEY  # the --backend-directory: BACKENDS/onnxruntime/libtriton_onnxruntime.so

SERVER_DIR=$CACHE/pytriton-$PYTRITON_VERSION

if [ -n "$CACHE_INFO" ]; then  # what a start would use, and whether it is there yet; fetches and builds nothing
  echo "server $SERVER_DIR $([ -f "$SERVER_DIR/.complete" ] && echo ready || echo missing)"
  echo "backend $BACKENDS $([ -f "$BACKENDS/onnxruntime/libtriton_onnxruntime.so" ] && echo ready || echo missing)"
  echo "backend-source ${SOURCE%% *}"
  echo "onnxruntime $ORT_LIB"
  exit 0
fi

mkdir -p "$CACHE"
exec 9>"$CACHE/.lock"  # one fetch or build at a time per cache; released once the server is started
flock 9
rm -rf "$CACHE"/.build.* "$CACHE"/.server.* "$CACHE"/.req.*  # left by a start that was killed
trap 'exit 143' TERM
trap 'exit 130' INT

# -- 1. the server from the pytriton wheel --------------------------------------------------------------------

if [ ! -f "$SERVER_DIR/.complete" ]; then
  mkdir -p "$CACHE/wheels"
  wheel=$(ls "$CACHE"/wheels/nvidia_pytriton-$PYTRITON_VERSION-*.whl 2>/dev/null | head -n1 || true)
  if [ -z "$wheel" ]; then
    log "downloading nvidia-pytriton $PYTRITON_VERSION from PyPI (55 MB, once)"
    req=$(mktemp "$CACHE/.req.XXXXXX")
    echo "nvidia-pytriton==$PYTRITON_VERSION --hash=sha256:$PYTRITON_SHA256" >"$req"
    "$PYTHON" -m pip download -q --disable-pip-version-check --no-deps --only-binary=:all: \
      --require-hashes -r "$req" -d "$CACHE/wheels" >&2 || { rm -f "$req"; die "pip download of nvidia-pytriton failed"; }
    rm -f "$req"
    wheel=$(ls "$CACHE"/wheels/nvidia_pytriton-$PYTRITON_VERSION-*.whl | head -n1)
  fi
  [ "$(sha256 "$wheel")" = "$PYTRITON_SHA256" ] || die "$wheel: sha256 is not $PYTRITON_SHA256 (delete it to fetch again)"
  tmp=$(mktemp -d "$CACHE/.server.XXXXXX") && chmod 755 "$tmp"
  unzip -q "$wheel" 'pytriton/tritonserver/*' 'nvidia_pytriton.libs/*' -d "$tmp"
  touch "$tmp/.complete"
  rm -rf "$SERVER_DIR" && mv "$tmp" "$SERVER_DIR"
fi
TRITONSERVER=$SERVER_DIR/pytriton/tritonserver/bin/tritonserver
LIBTRITONSERVER=$(cd "$SERVER_DIR/nvidia_pytriton.libs" && ls libtritonserver-*.so | head -n1)

# -- 2. the ONNX Runtime backend ------------------------------------------------------------------------------

fetch_upstream() {  # fetch_upstream DIR: the four repositories at $BACKEND_TAG and ONNX Runtime's headers
  local dir=$1 repo
  command -v git >/dev/null || die "no ../shared/vendor and no git to fetch the backend sources"
  for repo in onnxruntime_backend backend core common; do
    git clone -q --depth 1 --branch "$BACKEND_TAG" "$TRITON_GIT/$repo.git" "$dir/$repo" >&2 ||
      die "cannot fetch $TRITON_GIT/$repo.git ($BACKEND_TAG): no ../shared/vendor and no network?"
  done
  local tgz=onnxruntime-linux-x64-$ORT_VERSION.tgz
  "$PYTHON" - "$ORT_RELEASES/v$ORT_VERSION/$tgz" "$dir/$tgz" <<'EOF' || die "cannot fetch ONNX Runtime $ORT_VERSION's headers"
import sys, urllib.request
urllib.request.urlretrieve(sys.argv[1], sys.argv[2])
EOF
  mkdir -p "$dir/ort-include"
  tar -xzf "$dir/$tgz" -C "$dir/ort-include" --strip-components=2 --wildcards "*/include/*.h"
}

build_backend() {
  need_debian_packages 'command -v cmake >/dev/null && command -v make >/dev/null && command -v g++ >/dev/null' \
    cmake make g++
  need_debian_packages '[ -f /usr/include/rapidjson/rapidjson.h ]' rapidjson-dev
  local work include
  work=$(mktemp -d "$CACHE/.build.XXXXXX")
  trap 'rm -rf "$work"' EXIT
  if [ "${SOURCE%% *}" = vendor ]; then
    log "building Triton's ONNX Runtime backend ($BACKEND_TAG, from $VENDOR) against $ORT_LIB (about a minute, once)"
    tar -xzf "$TARBALL" -C "$work"
    include=$HEADERS
  else
    log "building Triton's ONNX Runtime backend ($BACKEND_TAG, from $TRITON_GIT) against $ORT_LIB (once)"
    fetch_upstream "$work"
    include=$work/ort-include
  fi
  # common's CMakeLists always adds its tests, which download googletest: not needed for the backend
  sed -i 's/^\([[:space:]]*\)add_subdirectory(test)/\1# add_subdirectory(test)/' "$work/common/src/CMakeLists.txt"
  mkdir -p "$work/ortlib" "$work/build" "$work/out/onnxruntime"
  ln -s "$ORT_LIB" "$work/ortlib/libonnxruntime.so"  # what the backend links (its SONAME is libonnxruntime.so.1)
  (cd "$work/build" &&
    cmake ../onnxruntime_backend -DCMAKE_BUILD_TYPE=Release -DTRITON_ENABLE_GPU=OFF \
      -DTRITON_ENABLE_ONNXRUNTIME_TENSORRT=OFF -DTRITON_ENABLE_ONNXRUNTIME_OPENVINO=OFF \
      -DTRITON_ONNXRUNTIME_INCLUDE_PATHS="$include" -DTRITON_ONNXRUNTIME_LIB_PATHS="$work/ortlib" \
      -DFETCHCONTENT_FULLY_DISCONNECTED=ON -DFETCHCONTENT_SOURCE_DIR_REPO-COMMON="$work/common" \
      -DFETCHCONTENT_SOURCE_DIR_REPO-CORE="$work/core" -DFETCHCONTENT_SOURCE_DIR_REPO-BACKEND="$work/backend" &&
    make -j"$(nproc)" triton-onnxruntime-backend) >"$work/build.log" 2>&1 || {
      tail -n 30 "$work/build.log" >&2; die "building the ONNX Runtime backend failed (log above)"; }
  # the backend's RUNPATH is $ORIGIN: next to it go the ONNX Runtime library (by its SONAME) and the
  # server's libtritonserver.so, which the wheel ships renamed (a link, so that the dynamic loader finds
  # the copy the server has already loaded rather than a second one)
  cp "$work/build/libtriton_onnxruntime.so" "$work/out/onnxruntime/"
  cp "$ORT_LIB" "$work/out/onnxruntime/libonnxruntime.so.1"
  printf '%s\n' "recipe $RECIPE" "$SOURCE" "ort $ORT_LIB $ORT_VERSION" "pytriton $PYTRITON_VERSION" \
    >"$work/out/BUILD-INFO"
  rm -rf "$BACKENDS" && mv "$work/out" "$BACKENDS"
  rm -rf "$work"
  trap - EXIT
  for old in "$CACHE"/backends-*; do  # earlier builds (another onnxruntime, sources or recipe)
    [ "$old" = "$BACKENDS" ] || rm -rf "$old"
  done
}

[ -f "$BACKENDS/onnxruntime/libtriton_onnxruntime.so" ] || build_backend
ln -sfn "$SERVER_DIR/nvidia_pytriton.libs/$LIBTRITONSERVER" "$BACKENDS/onnxruntime/libtritonserver.so"
flock -u 9

# -- 3. run -------------------------------------------------------------------------------------------------

args=(--model-repository="$REPO" --backend-directory="$BACKENDS"
      --http-address=127.0.0.1 --http-port="$HTTP_PORT" --grpc-address=127.0.0.1 --grpc-port="$GRPC_PORT"
      --exit-timeout-secs="$EXIT_TIMEOUT" --pinned-memory-pool-byte-size=0 --allow-gpu-metrics=false)
if [ -n "$METRICS_PORT" ]; then
  args+=(--allow-metrics=true --metrics-address=127.0.0.1 --metrics-port="$METRICS_PORT")
else
  args+=(--allow-metrics=false)
fi

listening() {  # something accepts TCP connections on 127.0.0.1:$1
  { exec 4<>"/dev/tcp/127.0.0.1/$1"; } 2>/dev/null || return 1
  exec 4>&-
}
for port in "$HTTP_PORT" "$GRPC_PORT" ${METRICS_PORT:+"$METRICS_PORT"}; do
  # checked first: the readiness probe below must not take another server's answer for this one's
  ! listening "$port" || die "port $port on 127.0.0.1 is already in use"
done

"$TRITONSERVER" "${args[@]}" "${EXTRA[@]}" >&2 9>&- &
SERVER_PID=$!
STOPPING=""
stop() { STOPPING=1; kill -TERM "$SERVER_PID" 2>/dev/null || true; }
trap stop TERM INT

ready() {  # HTTP GET /v2/health/ready on 127.0.0.1 with bash's /dev/tcp: 200 when the server is ready
  local status
  { exec 3<>"/dev/tcp/127.0.0.1/$HTTP_PORT"; } 2>/dev/null || return 1
  printf 'GET /v2/health/ready HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n' >&3
  read -r -t 2 _ status _ <&3 || status=""
  exec 3>&-
  [ "$status" = 200 ]
}

deadline=$((SECONDS + READY_TIMEOUT))
until ready; do
  if ! kill -0 "$SERVER_PID" 2>/dev/null; then
    wait "$SERVER_PID" && status=0 || status=$?
    [ -z "$STOPPING" ] || exit "$status"
    die "tritonserver exited ($status) before it was ready (its log is above)"
  fi
  if [ "$SECONDS" -ge "$deadline" ]; then
    stop; wait "$SERVER_PID" || true
    die "tritonserver was not ready after ${READY_TIMEOUT}s (its log is above)"
  fi
  sleep 0.2
done
echo "tritonserver pid $SERVER_PID"

status=0
while kill -0 "$SERVER_PID" 2>/dev/null; do  # wait returns early when a trapped signal arrives
  wait "$SERVER_PID" && status=0 || status=$?
done
exit "$status"
