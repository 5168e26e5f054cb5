#!/bin/sh
# Build the crmsync image and a PostgreSQL image, for deploy/compose.yaml.
#
#   deploy/container/build.sh                  # podman; a Debian 12 base made with debootstrap
#   ENGINE=docker BASE=debian:bookworm-slim deploy/container/build.sh
#
# With no BASE, a minimal Debian 12 base image is made from Debian's packages (debootstrap, as
# root), so no registry is needed. The wheels of crmsync and its dependencies are built here,
# with this machine's pip, so the image build needs no package index either.
set -eu
cd "$(dirname "$0")/../.."
ENGINE=${ENGINE:-podman}
PYTHON=${PYTHON:-python3}
VERSION=$("$PYTHON" -c "import tomllib; print(tomllib.load(open('pyproject.toml','rb'))['project']['version'])")

if [ -z "${BASE:-}" ]; then
    BASE=localhost/crmsync-base:bookworm
    if ! "$ENGINE" image exists "$BASE" 2>/dev/null; then
        root=$(mktemp -d)
        trap 'rm -rf "$root"' EXIT
        debootstrap --variant=minbase bookworm "$root" http://deb.debian.org/debian
        tar -C "$root" -c . | "$ENGINE" import - "$BASE"
    fi
fi

rm -rf deploy/container/wheels
"$PYTHON" -m pip wheel --quiet --wheel-dir deploy/container/wheels .
"$ENGINE" build -f deploy/container/Containerfile --build-arg "BASE=$BASE" \
    -t "localhost/crmsync:$VERSION" -t localhost/crmsync:latest .
"$ENGINE" build -f deploy/container/postgres.Containerfile --build-arg "BASE=$BASE" \
    -t localhost/crmsync-postgres:15 .
rm -rf deploy/container/wheels
echo "built localhost/crmsync:$VERSION and localhost/crmsync-postgres:15"
