# The two commands a newcomer needs: `make demo` and `make test`. Both set up on first use.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin

.PHONY: venv demo test generate version clean

venv: $(VENV)/.installed

# Reinstalled when the dependencies change; the package itself is editable.
$(VENV)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[test]'
	touch $@

demo: venv
	$(BIN)/python -m mlferry.demo

# Two workers (pytest-xdist), each with its own MLflow and S3 servers; a file's tests stay together.
test: venv
	$(BIN)/pytest -n 2 --dist loadfile

# The Argo YAML the chart embeds, regenerated from the Hera definitions (a test fails when stale).
generate: venv
	$(BIN)/mlferry generate --out charts/mlferry/generated

# One version for the package, both charts and every image tag: make version V=0.2.0
version: venv
	@test -n "$(V)" || { echo "usage: make version V=MAJOR.MINOR.PATCH" >&2; exit 2; }
	$(BIN)/python tools/set_version.py $(V)

clean:
	-$(BIN)/mlferry stack down
	rm -rf .mlferry
