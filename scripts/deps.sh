#!/usr/bin/env bash
# Installs, with apt-get, the tools that `cargo test` needs besides the Rust toolchain, gcc and
# python3 when any is missing: make, g++, pkg-config, cmake, clang and binutils (the packaging
# tests build installed consumers with them, tests/packaging.rs). Run as root, or with sudo
# available. Exits 0 when everything is there, 1 when something is missing and cannot be
# installed (it says which).
set -euo pipefail

tools=(make g++ pkg-config cmake clang clang++ readelf nm)
packages=(make g++ pkg-config cmake clang binutils)

missing=()
for tool in "${tools[@]}"; do
  command -v "$tool" >/dev/null 2>&1 || missing+=("$tool")
done
((${#missing[@]} == 0)) && exit 0

echo "deps: missing ${missing[*]}; installing ${packages[*]} with apt-get"
if [[ $(id -u) == 0 ]]; then
  sudo=()
elif command -v sudo >/dev/null 2>&1; then
  sudo=(sudo)
else
  echo "deps: not root and no sudo; run as root: apt-get install ${packages[*]}" >&2
  exit 1
fi
"${sudo[@]}" apt-get update -qq
DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -qq "${packages[@]}"
