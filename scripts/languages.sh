#!/usr/bin/env bash
# Builds the example transforms written in Python and JavaScript into
# transforms/target/languages/: installs their toolchains (componentize-py
# from PyPI into a virtual environment, componentize-js from npm) at the
# versions the folders pin, runs their unit tests, and builds each component
# against wit/v0.2 (the 0.2.0 world, which they prove still works). A step whose inputs have not changed since it last ran is
# skipped, so a second run takes seconds.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

out=transforms/target/languages
venv=transforms/target/py-venv
py=transforms/python/mask-email
js=transforms/javascript/mask-email
mkdir -p "$out"
export PYTHONDONTWRITEBYTECODE=1

# True when $1 is missing or older than any file under the other arguments.
stale() {
    local target=$1
    shift
    [ ! -e "$target" ] || [ -n "$(find "$@" -newer "$target" -not -path '*/node_modules/*' -print -quit)" ]
}

if stale "$venv/installed" "$py/requirements.txt"; then
    echo "languages: installing $(cat "$py/requirements.txt") into $venv"
    python3 -m venv "$venv"
    "$venv/bin/pip" install --quiet --disable-pip-version-check -r "$py/requirements.txt"
    touch "$venv/installed"
fi
if stale "$out/mask-email-py.wasm" "$py" wit/v0.2 "$venv/installed"; then
    echo "languages: testing the Python logic ($py)"
    (cd "$py" && python3 -m unittest --quiet)
    echo "languages: building $out/mask-email-py.wasm with $("$venv/bin/componentize-py" --version)"
    "$venv/bin/componentize-py" -d wit/v0.2 -w transformer componentize -p "$py" app -o "$out/mask-email-py.wasm" >/dev/null
fi

if stale "$js/node_modules/.installed" "$js/package-lock.json"; then
    echo "languages: installing $js's pinned packages (npm ci)"
    (cd "$js" && npm ci --no-audit --no-fund --loglevel=error)
    touch "$js/node_modules/.installed"
fi
if stale "$out/mask-email-js.wasm" "$js" wit/v0.2 "$js/node_modules/.installed"; then
    echo "languages: testing the JavaScript logic ($js)"
    (cd "$js" && node --test --test-reporter=dot)
    echo "languages: building $out/mask-email-js.wasm with componentize-js $("$js/node_modules/.bin/componentize-js" --version)"
    (cd "$js" && npm run --silent build)
fi

for wasm in "$out"/mask-email-py.wasm "$out"/mask-email-js.wasm; do
    echo "languages: $wasm ($(( $(stat -c %s "$wasm") / 1048576 )) MiB)"
done
