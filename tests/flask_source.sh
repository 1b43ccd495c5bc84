#!/usr/bin/env bash
# Run the whole suite against Flask installed from a source checkout, such as Flask's
# main branch, to see a Flask release break us before it ships:
#
#     git clone https://github.com/pallets/flask /tmp/flask
#     tests/flask_source.sh /tmp/flask                 # the whole suite
#     tests/flask_source.sh /tmp/flask -x tests/test_context.py
#
# The virtualenv is .venv-flask-source (VENV=... to choose another), made afresh on
# every run so nothing of an earlier Flask is left in it. Werkzeug and the other
# dependencies are the newest releases Flask's checkout accepts.
set -euo pipefail
if [[ $# -lt 1 || ! -f "$1/pyproject.toml" ]]; then
    echo "usage: $0 PATH_TO_FLASK_CHECKOUT [PYTEST_ARGS...]" >&2
    exit 2
fi
flask_source=$(cd "$1" && pwd)
shift
root=$(cd "$(dirname "$0")/.." && pwd)
venv=${VENV:-$root/.venv-flask-source}
python=${PYTHON:-python3}

"$python" -m venv --clear "$venv"
"$venv/bin/python" -m pip install --quiet --upgrade pip
"$venv/bin/python" -m pip install --quiet -e "$root[tests]" "$flask_source"
"$venv/bin/python" -c 'import importlib.metadata as m; print("flask", m.version("flask"), "werkzeug", m.version("werkzeug"))'
cd "$root"
exec "$venv/bin/python" -m pytest "$@"
