#!/usr/bin/env bash
# Lints the protobuf contract in proto/ with the buf version pinned in package.json (rules in
# buf.yaml at the repository root), then, when SWITCHBORD_BUF_BREAKING_AGAINST names a git ref,
# checks proto/ for breaking changes against that ref. See docs/proto.md.
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"
buf="$here/node_modules/.bin/buf"

# Install the pinned buf (exactly the versions in package-lock.json) unless it is already there.
pinned="$(node -p "require('$here/package-lock.json').packages['node_modules/@bufbuild/buf'].version")"
if [[ ! -x "$buf" ]] || [[ "$("$buf" --version 2>/dev/null)" != "$pinned" ]]; then
  echo "buf: installing @bufbuild/buf@$pinned with npm ci"
  npm ci --prefix "$here" --no-audit --no-fund --loglevel=error
fi

cd "$root"
echo "buf: lint ($("$buf" --version))"
"$buf" lint

against="${SWITCHBORD_BUF_BREAKING_AGAINST:-}"
if [[ -z "$against" ]]; then
  echo "buf: breaking check skipped (set SWITCHBORD_BUF_BREAKING_AGAINST to a git ref, for example a release tag)"
  exit 0
fi

# The old contract is exported with git archive, which works in worktrees and shallow clones
# alike as long as the ref itself is present.
old="$(mktemp -d)"
trap 'rm -rf "$old"' EXIT
if ! git rev-parse --verify --quiet "$against^{commit}" >/dev/null; then
  echo "buf: SWITCHBORD_BUF_BREAKING_AGAINST=$against is not a commit in this repository (fetch it first)" >&2
  exit 1
fi
git archive "$against" proto | tar -x -C "$old"
echo "buf: breaking against $against"
"$buf" breaking --against "$old/proto"
