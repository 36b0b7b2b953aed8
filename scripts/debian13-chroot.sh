#!/bin/bash
# debian13-chroot.sh: a Debian 13 (trixie) chroot with libtorch 2.6, for building and testing torchfit against
# libtorch 2.x on a Debian 12 host, and optionally the REAL Hugging Face Trainer (transformers v4.57.1) on
# Debian's python3-torch 2.6 for side-by-side checks. The host is not upgraded. Idempotent. Needs root.
#
#   debian13-chroot.sh setup                # chroot + libtorch-dev 2.6 toolchain + python3-torch/safetensors
#                                           #   (about 3 minutes the first time, seconds afterwards)
#   debian13-chroot.sh test DIR             # configure, build and ctest the project at DIR inside the chroot
#                                           #   (DIR is mounted at /src; build tree DIR/build-libtorch2)
#   debian13-chroot.sh run CMD...           # run a command inside, in /src = the current directory
#                                           #   (bind-mounted; `hf-python` = python3 with HF on its path)
#   debian13-chroot.sh hf                   # add transformers v4.57.1, accelerate v1.11.0, huggingface_hub
#                                           #   v0.36.0 from git mirrors: set TRANSFORMERS_GIT, ACCELERATE_GIT,
#                                           #   HF_HUB_GIT to bare git dirs holding those tags (the search
#                                           #   tool's fetch brings them; a fork that carries upstream's tags
#                                           #   serves when upstream is too large)
#
# Root: $TORCHFIT_CHROOT (default /tmp/torchfit-debian13). The Debian mirror is the one the host's apt uses.
# The one stub: `tokenizers` (a Rust extension Debian lacks) — transformers 4.57.1 imports it at import time
# but the Trainer paths used without a tokenizer never instantiate it. Nothing of HF's sources is edited.
set -euo pipefail
ROOT=${TORCHFIT_CHROOT:-/tmp/torchfit-debian13}
MIRROR=$(awk '/^URIs:/{print $2; exit}' /etc/apt/sources.list.d/debian.sources 2>/dev/null ||
         awk '/^deb /{print $2; exit}' /etc/apt/sources.list)
cmd=${1:-setup}; shift || true

mount_src() {  # DIR: bind it at /src inside the chroot (left as it is when DIR is there already, so that
               # several commands can run on one tree at once)
  mkdir -p "$ROOT/src"
  if mountpoint -q "$ROOT/src"; then
    [ "$(stat -c %d:%i "$ROOT/src")" = "$(stat -c %d:%i "$1")" ] && return
    umount "$ROOT/src"
  fi
  mount --bind "$1" "$ROOT/src"
}

mounts() {
  mountpoint -q "$ROOT/proc" || mount -t proc proc "$ROOT/proc"
  mountpoint -q "$ROOT/dev" || mount --bind /dev "$ROOT/dev"
  mountpoint -q "$ROOT/dev/pts" || mount --bind /dev/pts "$ROOT/dev/pts"
  mountpoint -q "$ROOT/sys" || mount --bind /sys "$ROOT/sys"
  cp -f /etc/resolv.conf "$ROOT/etc/resolv.conf"
}

setup() {
  if [ ! -f "$ROOT/.debootstrap_done" ]; then
    if command -v debootstrap >/dev/null; then DBS=debootstrap
    else
      mkdir -p /tmp/torchfit-dbs && (cd /tmp/torchfit-dbs && apt-get download debootstrap >/dev/null &&
        dpkg-deb -x debootstrap_*.deb root)
      export DEBOOTSTRAP_DIR=/tmp/torchfit-dbs/root/usr/share/debootstrap
      DBS=/tmp/torchfit-dbs/root/usr/sbin/debootstrap
    fi
    $DBS --variant=minbase trixie "$ROOT" "$MIRROR"
    touch "$ROOT/.debootstrap_done"
  fi
  mounts
  local pkgs="g++ cmake make ccache git ca-certificates libtorch-dev libopenblas0-pthread nlohmann-json3-dev
    libfmt-dev catch2 libgloo-dev libcsv-dev zlib1g-dev libsqlite3-dev libcurl4-openssl-dev python3 python3-torch
    python3-safetensors python3-numpy python3-yaml python3-regex python3-requests python3-tqdm python3-packaging python3-filelock
    python3-fsspec python3-psutil python3-typing-extensions"
  if [ ! -f "$ROOT/.pkgs_done" ] || ! chroot "$ROOT" dpkg -s $pkgs >/dev/null 2>&1; then
    chroot "$ROOT" env DEBIAN_FRONTEND=noninteractive apt-get update -q
    chroot "$ROOT" env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends $pkgs >/dev/null
    touch "$ROOT/.pkgs_done"
  fi
  cat > "$ROOT/usr/local/bin/hf-python" <<'EOF'
#!/bin/sh
export PYTHONPATH=/opt/hf/site:/opt/hf/stubs${PYTHONPATH:+:$PYTHONPATH} OPENBLAS_NUM_THREADS=1 OMP_NUM_THREADS=1
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_HOME=/tmp/hf_home TOKENIZERS_PARALLELISM=false
exec python3 "$@"
EOF
  chmod +x "$ROOT/usr/local/bin/hf-python"
  chroot "$ROOT" sh -c 'echo "libtorch $(dpkg-query -W -f="\${Version}" libtorch-dev), g++ $(g++ -dumpversion)"'
}

install_src() {  # git_dir tag package dist_name
  local git=$1 tag=$2 pkg=$3 dist=$4 ver=${2#v} site=$ROOT/opt/hf/site tmp
  [ -f "$site/$dist-$ver.dist-info/METADATA" ] && return
  [ -n "$git" ] && git -C "$git" rev-parse -q --verify "$tag^{commit}" >/dev/null ||
    { echo "need a git dir with tag $tag for $dist (see the header)"; exit 2; }
  tmp=$(mktemp -d); mkdir -p "$site"; rm -rf "$site/$pkg"
  git -C "$git" archive "$tag" "src/$pkg" | tar -x -C "$tmp" && mv "$tmp/src/$pkg" "$site/$pkg"; rm -rf "$tmp"
  mkdir -p "$site/$dist-$ver.dist-info"  # transformers checks its dependencies' versions through metadata
  printf 'Metadata-Version: 2.1\nName: %s\nVersion: %s\n' "$dist" "$ver" >"$site/$dist-$ver.dist-info/METADATA"
}

hf() {
  setup >/dev/null
  install_src "${TRANSFORMERS_GIT:-}" v4.57.1 transformers transformers
  install_src "${ACCELERATE_GIT:-}" v1.11.0 accelerate accelerate
  install_src "${HF_HUB_GIT:-}" v0.36.0 huggingface_hub huggingface_hub
  local stub=$ROOT/opt/hf/stubs/tokenizers
  mkdir -p "$stub" "$ROOT/opt/hf/stubs/tokenizers-0.22.1.dist-info"
  cat > "$stub/__init__.py" <<'EOF'
"""Stub of `tokenizers` (not in Debian): importable, but every name raises when instantiated."""
import importlib
_SUB = {"decoders", "normalizers", "pre_tokenizers", "processors", "models", "trainers"}
class _Unavailable:
    def __init__(self, *a, **k):
        raise ImportError("tokenizers is a stub in this chroot")
def __getattr__(name):
    if name.startswith("__"):
        raise AttributeError(name)
    return importlib.import_module("." + name, __name__) if name in _SUB else type(name, (_Unavailable,), {})
EOF
  for m in decoders normalizers pre_tokenizers processors models trainers; do
    printf 'from . import _Unavailable\ndef __getattr__(name):\n    if name.startswith("__"):\n        raise AttributeError(name)\n    return type(name, (_Unavailable,), {})\n' >"$stub/$m.py"
  done
  printf 'Metadata-Version: 2.1\nName: tokenizers\nVersion: 0.22.1\n' \
    >"$ROOT/opt/hf/stubs/tokenizers-0.22.1.dist-info/METADATA"
  chroot "$ROOT" hf-python -c 'import transformers, torch; from transformers import Trainer
print("transformers", transformers.__version__, "torch", torch.__version__)'
}

case $cmd in
  setup) setup ;;
  hf) hf ;;
  run) mounts; mount_src "$PWD"; chroot "$ROOT" sh -c 'cd /src && exec "$@"' sh "$@" ;;
  test)
    dir=$(realpath "${1:?usage: debian13-chroot.sh test DIR}")
    setup >/dev/null
    mount_src "$dir"
    chroot "$ROOT" sh -c "cd /src && cmake -S . -B build-libtorch2 -DCMAKE_CXX_COMPILER_LAUNCHER=ccache \
      -DTORCHFIT_WERROR=ON >/dev/null && cmake --build build-libtorch2 -j\$(nproc) &&
      cd build-libtorch2 && ctest --output-on-failure -j\$(nproc)" ;;
  *) echo "usage: debian13-chroot.sh setup|test DIR|run CMD...|hf"; exit 2 ;;
esac
