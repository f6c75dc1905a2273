#!/usr/bin/env bash
# Builds both images (fuserank-api:local, fuserank-batch:local) from the repository's Dockerfiles and runs
# them the way production does, on a user-defined Docker network:
#   Redis (noeviction) <- batch image: ingest + train (bundled 2020 slice) + precompute + publish, as uid 10001
#   API image: read-only root, uid 10001, --tmpfs /tmp, no capabilities -> HEALTHCHECK healthy, /readyz ready,
#   a `precomputed` answer with names; batch image: the nightly entrypoint's --help and `dvc --version`.
# Every container, the network and the volume it made are removed at the end, pass or fail.
#
# Docker: uses the engine that answers; else installs Debian's docker.io if needed, starts dockerd and stops
# that one (only that one) at the end. The legacy builder (DOCKER_BUILDKIT=0): Debian's docker.io has no buildx.
# Base images: the Dockerfiles' production defaults (ARG PYTHON_BASE / BEAM_BASE) when present or pullable;
# otherwise clearly named local stand-ins (debootstrap bookworm + Debian's python3.11; Beam's boot stubbed,
# scripts/images/beam-boot-stub.sh), passed through those ARGs. This machine's package settings (its CA
# bundle, pip's index and certificate) go into the stand-in base only, never into layers over a production base.
#
#   bash scripts/images.sh                 build + run the checks
#   bash scripts/images.sh --update-locks  regenerate locks/api.txt and locks/batch.txt (uv, with hashes)
set -euo pipefail
cd "$(dirname "$0")/.."

API_IMAGE=fuserank-api:local
BATCH_IMAGE=fuserank-batch:local
STANDIN_PYTHON=fuserank-standin-python:3.11-bookworm
STANDIN_BEAM_REPO=fuserank-standin-beam
STANDIN_REDIS=fuserank-standin-redis:bookworm
PROD_REDIS=redis:7.0.15-bookworm
DEBIAN_MIRROR=${FUSERANK_DEBIAN_MIRROR:-http://deb.debian.org/debian}
API_OWN_LIMIT_MB=300
APP_UID=10001
export DOCKER_BUILDKIT=0

say() { printf 'images: %s\n' "$*"; }
die() { printf 'images: FAILED: %s\n' "$*" >&2; exit 1; }
logged() {  # logged WHAT CMD...: the command's output goes to a log, shown (its end) only if it fails
  local what=$1 log
  shift
  log=$(mktemp /tmp/fuserank-images.XXXXXX)
  "$@" >"$log" 2>&1 || { tail -40 "$log"; rm -f "$log"; die "$what"; }
  rm -f "$log"
}

update_locks() {
  local uv
  uv=$(command -v uv || true)
  [ -n "$uv" ] || { [ -x .venv/bin/uv ] || .venv/bin/python -m pip install -q uv; uv=.venv/bin/uv; }
  local common=(--generate-hashes --python-version 3.11 --python-platform x86_64-manylinux_2_28 --no-header)
  "$uv" pip compile --quiet setup.py locks/api.in "${common[@]}" -o locks/api.txt
  "$uv" pip compile --quiet setup.py locks/batch.in --extra train --extra batch "${common[@]}" -o locks/batch.txt
  say "locks regenerated: $(grep -c '^[a-z]' locks/api.txt) pins in locks/api.txt, $(grep -c '^[a-z]' locks/batch.txt) in locks/batch.txt"
}

if [ "${1:-}" = "--update-locks" ]; then update_locks; exit 0; fi
[ $# -eq 0 ] || die "unknown argument $1 (expected nothing or --update-locks)"

# ---- the engine -------------------------------------------------------------------------------------------
STARTED_DOCKERD=
RUN_ID=fuserank-check-$$
cleanup() {
  local rc=$?
  if command -v docker >/dev/null 2>&1 && docker info >/dev/null 2>&1; then
    for c in $(docker ps -aq --filter "name=^${RUN_ID}-"); do docker rm -f "$c" >/dev/null || true; done
    docker network rm "$RUN_ID-net" >/dev/null 2>&1 || true
    docker volume rm "$RUN_ID-work" >/dev/null 2>&1 || true
    [ -z "$(docker ps -aq --filter "name=^${RUN_ID}-")" ] && say "containers of this run removed"
  fi
  if [ -n "$STARTED_DOCKERD" ]; then
    kill "$STARTED_DOCKERD" 2>/dev/null || true
    wait "$STARTED_DOCKERD" 2>/dev/null || true
    say "stopped the dockerd this script started (pid $STARTED_DOCKERD)"
  fi
  exit "$rc"
}
trap cleanup EXIT

apt_install() {
  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" >/dev/null) \
    || die "could not install $* from Debian"
}

if ! docker info >/dev/null 2>&1; then
  command -v dockerd >/dev/null 2>&1 && command -v docker >/dev/null 2>&1 || { say "installing Debian's docker.io"; apt_install docker.io; }
  dockerd >/tmp/fuserank-dockerd.log 2>&1 &
  STARTED_DOCKERD=$!
  for _ in $(seq 120); do docker info >/dev/null 2>&1 && break; kill -0 "$STARTED_DOCKERD" 2>/dev/null || break; sleep 0.5; done
  docker info >/dev/null 2>&1 || die "dockerd did not start: $(tail -5 /tmp/fuserank-dockerd.log)"
  say "started dockerd (pid $STARTED_DOCKERD, log /tmp/fuserank-dockerd.log)"
fi
say "engine: $(docker version --format 'server {{.Server.Version}}, client {{.Client.Version}}')"

# ---- base images ------------------------------------------------------------------------------------------
have_or_pull() { docker image inspect "$1" >/dev/null 2>&1 || timeout 300 docker pull -q "$1" >/dev/null 2>&1; }

pip_settings() {
  # This machine's pip settings that reach the index: its certificate (-> the copied bundle), index, timeout.
  echo "[global]"
  echo "cert = /etc/ssl/certs/ca-certificates.crt"
  local index=${PIP_INDEX_URL:-$(python3 -m pip config get global.index-url 2>/dev/null || true)}
  [ -z "$index" ] || echo "index-url = $index"
  [ -z "${PIP_DEFAULT_TIMEOUT:-}" ] || echo "timeout = $PIP_DEFAULT_TIMEOUT"
}

build_standin_python() {
  command -v debootstrap >/dev/null 2>&1 || apt_install debootstrap
  local root
  root=$(mktemp -d /tmp/fuserank-standin.XXXXXX)
  say "building $STANDIN_PYTHON: debootstrap bookworm + Debian's python3.11 (in $root)"
  logged "debootstrap bookworm" debootstrap --variant=minbase bookworm "$root" "$DEBIAN_MIRROR"
  cat >"$root/etc/apt/sources.list" <<EOF
deb $DEBIAN_MIRROR bookworm main
deb $DEBIAN_MIRROR bookworm-updates main
deb ${DEBIAN_MIRROR%/debian}/debian-security bookworm-security main
EOF
  logged "installing python3.11 into the stand-in" chroot "$root" sh -c 'apt-get update -qq \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends python3.11 python3.11-venv \
         python-is-python3 ca-certificates && apt-get clean && rm -rf /var/lib/apt/lists/*'
  local bundle=${PIP_CERT:-${SSL_CERT_FILE:-/etc/ssl/certs/ca-certificates.crt}}
  [ -f "$bundle" ] && cp "$bundle" "$root/etc/ssl/certs/ca-certificates.crt"
  pip_settings >"$root/etc/pip.conf"
  tar -C "$root" -c . | docker import --change 'ENV LANG=C.UTF-8' --change 'CMD ["python3"]' \
    --message "FuseRank stand-in for python:3.11-slim-bookworm (debootstrap + Debian python3.11)" - "$STANDIN_PYTHON" >/dev/null
  rm -rf "$root"
}

default_arg() { sed -n "s/^ARG $1=//p" "$2" | head -1; }
PYTHON_BASE=$(default_arg PYTHON_BASE Dockerfile.api)
BEAM_BASE=$(default_arg BEAM_BASE Dockerfile.batch)
[ "$PYTHON_BASE" = "$(default_arg PYTHON_BASE Dockerfile.batch)" ] || die "Dockerfile.api and Dockerfile.batch name different PYTHON_BASE"
beam_locked=$(sed -n 's/^apache-beam==\([^ ]*\).*/\1/p' locks/batch.txt)
[ "${BEAM_BASE##*:}" = "$beam_locked" ] || die "BEAM_BASE $BEAM_BASE is not the locked apache-beam $beam_locked"

if have_or_pull "$PYTHON_BASE"; then
  say "base $PYTHON_BASE: the production image"
else
  say "base $PYTHON_BASE cannot be pulled here: using the local stand-in $STANDIN_PYTHON"
  docker image inspect "$STANDIN_PYTHON" >/dev/null 2>&1 || build_standin_python
  PYTHON_BASE=$STANDIN_PYTHON
fi
if have_or_pull "$BEAM_BASE"; then
  say "base $BEAM_BASE: the production image"
else
  standin_beam=$STANDIN_BEAM_REPO:$beam_locked
  say "base $BEAM_BASE cannot be pulled here: using $standin_beam (a stub boot that only execs its arguments)"
  logged "building $standin_beam" docker build -f scripts/images/Dockerfile.beam-standin \
    --build-arg PYTHON_BASE="$PYTHON_BASE" -t "$standin_beam" scripts/images
  BEAM_BASE=$standin_beam
fi
if have_or_pull "$PROD_REDIS"; then
  REDIS_IMAGE=$PROD_REDIS
else
  logged "building $STANDIN_REDIS" docker build -f scripts/images/Dockerfile.redis-standin \
    --build-arg PYTHON_BASE="$PYTHON_BASE" -t "$STANDIN_REDIS" scripts/images
  REDIS_IMAGE=$STANDIN_REDIS
  say "redis: $PROD_REDIS cannot be pulled here: using $STANDIN_REDIS (Debian's redis-server)"
fi

# ---- the two images ---------------------------------------------------------------------------------------
build() {
  local image=$1 dockerfile=$2 start=$SECONDS
  shift 2
  logged "docker build -f $dockerfile" docker build -f "$dockerfile" --build-arg PYTHON_BASE="$PYTHON_BASE" "$@" -t "$image" .
  say "built $image in $((SECONDS - start)) s"
}
build "$API_IMAGE" Dockerfile.api
build "$BATCH_IMAGE" Dockerfile.batch --build-arg BEAM_BASE="$BEAM_BASE"

mb() { echo $(( $1 / 1000000 )); }
size() { docker image inspect -f '{{.Size}}' "$1"; }
api_own=$(( $(size "$API_IMAGE") - $(size "$PYTHON_BASE") ))
say "sizes (MB): $API_IMAGE $(mb "$(size "$API_IMAGE")") (own layers $(mb $api_own)), $BATCH_IMAGE $(mb "$(size "$BATCH_IMAGE")") (own layers $(mb $(( $(size "$BATCH_IMAGE") - $(size "$PYTHON_BASE") )))), base $PYTHON_BASE $(mb "$(size "$PYTHON_BASE")")"
[ "$(mb $api_own)" -lt "$API_OWN_LIMIT_MB" ] || die "$API_IMAGE's own layers are $(mb $api_own) MB (limit $API_OWN_LIMIT_MB MB)"

# ---- run them like production -----------------------------------------------------------------------------
# The Deployment's and CronJob's security contexts (k8s/base): uid/gid 10001, read-only root, no capabilities,
# no privilege escalation, the runtime's default seccomp profile, /tmp (and the job's /work) writable volumes.
SECURE=(--user "$APP_UID:$APP_UID" --read-only --cap-drop ALL --security-opt no-new-privileges --tmpfs /tmp)
NET=$RUN_ID-net
docker network create "$NET" >/dev/null
docker volume create "$RUN_ID-work" >/dev/null
REDIS_URL=redis://$RUN_ID-redis:6379/0

docker run -d --name "$RUN_ID-redis" --network "$NET" "$REDIS_IMAGE" \
  redis-server --bind 0.0.0.0 --protected-mode no --save '' --appendonly no --maxmemory-policy noeviction >/dev/null

start=$SECONDS
say "batch image: ingest + train (bundled 2020 slice) + precompute into Redis, as uid $APP_UID"
logged "batch run" docker run --rm --name "$RUN_ID-batch" --network "$NET" "${SECURE[@]}" -v "$RUN_ID-work:/work" \
  --entrypoint sh "$BATCH_IMAGE" -c "set -e
    fuserank ingest --ratings data/sample/mal2020/rating_complete_head100k.csv --anime data/sample/mal2020/anime_reduced.csv \
      --out /work/data --min-user-ratings 20
    fuserank train --data /work/data --out /work/model --epochs 2
    fuserank precompute --model /work/model --redis-url $REDIS_URL"
current=$(docker exec "$RUN_ID-redis" redis-cli get fuserank:current)
[ -n "$current" ] || die "the batch run published no list version"
say "published list version $current"
say "batch run done in $((SECONDS - start)) s"

docker run -d --name "$RUN_ID-api" --network "$NET" "${SECURE[@]}" -v "$RUN_ID-work:/data:ro" \
  -e REDIS_URL="$REDIS_URL" "$API_IMAGE" \
  serve --model /data/model --host 0.0.0.0 --port 8000 --workers 2 >/dev/null
start=$SECONDS
health=starting
while [ $((SECONDS - start)) -lt 240 ]; do
  health=$(docker inspect -f '{{.State.Health.Status}}' "$RUN_ID-api")
  [ "$health" = starting ] || break
  [ "$(docker inspect -f '{{.State.Running}}' "$RUN_ID-api")" = true ] || break
  sleep 2
done
[ "$health" = healthy ] || { docker logs --tail 30 "$RUN_ID-api"; die "API container is $health, not healthy"; }
say "API container healthy (its HEALTHCHECK) after $((SECONDS - start)) s"
docker exec "$RUN_ID-api" python -P -c "
import json, urllib.request
from fuserank.artifacts import ModelArtifact
def get(path):
    with urllib.request.urlopen('http://127.0.0.1:8000' + path, timeout=10) as r:
        return r.status, json.loads(r.read())
status, ready = get('/readyz')
print('images: /readyz', status, json.dumps(ready))
assert status == 200 and ready.get('ready') is True and ready.get('redis') == 'up', ready
uid = int(ModelArtifact.load('/data/model').user_ids[0])
status, body = get(f'/v1/users/{uid}/recommendations?n=5')
names = [item['name'] for item in body['items']]
print('images: user', uid, status, body['source'], names)
assert status == 200 and body['source'] == 'precomputed' and len(names) == 5 and all(names), body
" || { docker logs --tail 30 "$RUN_ID-api"; die "API answers"; }
! docker logs "$RUN_ID-api" 2>&1 | grep -i 'control server' || die "gunicorn's control socket error in the API log"
[ "$(docker exec "$RUN_ID-api" id -u)" = "$APP_UID" ] || die "API does not run as $APP_UID"

say "batch image as uid $APP_UID: nightly --help and dvc --version"
docker run --rm "${SECURE[@]}" --entrypoint python "$BATCH_IMAGE" -m fuserank.batch.nightly run --help | head -3
docker run --rm "${SECURE[@]}" --entrypoint dvc "$BATCH_IMAGE" --version
say "all container checks passed"
