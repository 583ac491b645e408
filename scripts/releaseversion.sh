#!/usr/bin/env bash
# Release the current X.Y.Z-dev: commit X.Y.Z, tag vX.Y.Z, then commit X.Y.(Z+1)-dev.
# CHANGELOG.md's "## Unreleased" section becomes "## X.Y.Z (date)", and a new empty
# one is opened for the next version.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"

fail() {
    echo "error: $*" >&2
    exit 1
}

# A release is exactly a commit: nothing uncommitted, staged or untracked may slip in
# or be left out.
if [[ -n "$(git status --porcelain)" ]]; then
    fail "the work tree is not clean (commit or stash first):"$'\n'"$(git status --short)"
fi
current="$(cat dacc/VERSION)"
if ! [[ $current =~ ^([0-9]+)\.([0-9]+)\.([0-9]+)-dev$ ]]; then
    fail "dacc/VERSION is '$current', expected X.Y.Z-dev (see scripts/nextversion.sh)"
fi
release="${current%-dev}"
next="${BASH_REMATCH[1]}.${BASH_REMATCH[2]}.$((BASH_REMATCH[3] + 1))-dev"
if git rev-parse -q --verify "refs/tags/v$release" >/dev/null; then
    fail "tag v$release exists already"
fi

files=(dacc/VERSION)
if [[ -f CHANGELOG.md ]]; then
    files+=(CHANGELOG.md)
fi

echo "$release" > dacc/VERSION
if [[ -f CHANGELOG.md ]]; then
    sed -i "s/^## Unreleased\$/## $release ($(date -u +%Y-%m-%d))/" CHANGELOG.md
fi
git add "${files[@]}"
git commit -q -m "Release $release"
git tag -a "v$release" -m "DACC $release"

echo "$next" > dacc/VERSION
if [[ -f CHANGELOG.md ]]; then
    # The new section goes above the first release heading.
    awk 'done == 0 && /^## / { print "## Unreleased\n"; done = 1 } { print }' CHANGELOG.md > CHANGELOG.md.new
    mv CHANGELOG.md.new CHANGELOG.md
fi
git add "${files[@]}"
git commit -q -m "Start $next"
echo "released $release (tag v$release); now at $next"
echo "publish with: git push --follow-tags"
