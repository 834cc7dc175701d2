#!/usr/bin/env bash
# The vendored crates are the pristine upstream release plus notifyd's patches, nothing else:
#   vendor/<name>/  = <name>-<version>.crate as published on the registry + patches/<name>.diff
# (what each patch does, why, and its upstream state: patches/<name>.md).
#
#   scripts/vendor.sh check     fetch each upstream .crate (cargo, from the registry), apply its
#                               patch, and fail on any difference from vendor/<name>/ (CI runs this)
#   scripts/vendor.sh apply     rewrite vendor/<name>/ from upstream + patch (after editing a .diff)
#   scripts/vendor.sh diff      rewrite patches/<name>.diff from the edited vendor/<name>/
#
# The .crate is fetched by `cargo fetch` in a scratch project that asks for exactly that version,
# so it comes from the same registry and checksum database as every other dependency.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD

# name version: one line per vendored crate (versions match Cargo.lock's [patch] entries).
crates=(
  "actix-http 3.20.0"
)

mode=${1:-check}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

# Unpacks the pristine upstream crate into $work/pristine/<name>.
pristine() {
  local name=$1 version=$2 scratch=$work/fetch-$1
  mkdir -p "$scratch/src" "$work/pristine"
  printf '[package]\nname = "vendor-fetch"\nversion = "0.0.0"\nedition = "2021"\n[dependencies]\n%s = { version = "=%s", default-features = false }\n' \
    "$name" "$version" >"$scratch/Cargo.toml"
  : >"$scratch/src/lib.rs"
  # Its own lockfile and target: the project's [patch] must not apply here.
  (cd "$scratch" && cargo fetch --quiet)
  local cache=${CARGO_HOME:-$HOME/.cargo}/registry/cache
  local crate
  crate=$(find "$cache" -name "$name-$version.crate" | head -n1)
  if [ -z "$crate" ]; then
    echo "vendor.sh: $name-$version.crate not found under $cache after cargo fetch" >&2
    exit 1
  fi
  tar -xzf "$crate" -C "$work/pristine"
  mv "$work/pristine/$name-$version" "$work/pristine/$name"
}

# Applies patches/<name>.diff to a copy of the pristine crate at $work/patched/<name>.
patched() {
  local name=$1
  mkdir -p "$work/patched"
  cp -a "$work/pristine/$name" "$work/patched/$name"
  if [ -s "patches/$name.diff" ]; then
    patch --quiet --batch --no-backup-if-mismatch -p1 -d "$work/patched/$name" <"patches/$name.diff"
  fi
}

status=0
for entry in "${crates[@]}"; do
  read -r name version <<<"$entry"
  pristine "$name" "$version"
  case $mode in
    check)
      patched "$name"
      if diff -r "$work/patched/$name" "vendor/$name" >"$work/$name.out"; then
        echo "vendor/$name: upstream $name $version + patches/$name.diff, no other difference"
      else
        echo "vendor/$name differs from upstream $name $version + patches/$name.diff:" >&2
        head -n 60 "$work/$name.out" >&2
        status=1
      fi
      ;;
    apply)
      patched "$name"
      rm -rf "vendor/$name"
      cp -a "$work/patched/$name" "vendor/$name"
      echo "vendor/$name rewritten from upstream $name $version + patches/$name.diff"
      ;;
    diff)
      # Paths a/... and b/..., so `patch -p1` inside the crate applies it; diff exits 1 when
      # there are differences, which is the point here.
      rm -rf "$work/a" "$work/b"
      mv "$work/pristine/$name" "$work/a"
      cp -a "vendor/$name" "$work/b"
      # No timestamps in the headers: a regenerated patch differs only where the code does.
      (cd "$work" && diff -ruN a b | sed -E 's/^((---|\+\+\+) [^\t]+)\t.*/\1/' \
        >"$root/patches/$name.diff") || true
      rm -rf "$work/a" "$work/b"
      echo "patches/$name.diff: $(grep -c '^@@' "patches/$name.diff") hunks in $(grep -c '^diff ' "patches/$name.diff") files"
      ;;
    *)
      echo "usage: scripts/vendor.sh [check|apply|diff]" >&2
      exit 2
      ;;
  esac
done
exit $status
