# Two entry points: `make run` starts the local 3-node cluster, `make test` runs every test.
# Both create or refresh the virtualenv .venv first.
PYTHON ?= python3
VENV := .venv
STAMP := $(VENV)/.installed-stamp

.PHONY: run test fuzz venv lint clean

venv: $(STAMP)

$(STAMP): setup.cfg pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/python -m pip install --quiet --upgrade pip
	$(VENV)/bin/python -m pip install --quiet -e '.[test]'
	touch $(STAMP)

run: $(STAMP)
	$(VENV)/bin/python bin/caddy-node topologies/local-3.yaml

# pytest's status 5 ("no tests collected") is a failure here, like any other.
test: $(STAMP)
	$(VENV)/bin/python -m pytest -q; status=$$?; \
	if [ $$status -eq 5 ]; then echo "make test: no tests collected" >&2; exit 1; fi; exit $$status

# A fuzz run against a live 3-node cluster (tests/fuzz/run.py): `make fuzz SEED=7 DURATION=600`;
# ONLY=raw_flooder,frames runs some attackers only (names in tests/fuzz/attack.py).
SEED ?= 1
DURATION ?= 300
ONLY ?=
fuzz: $(STAMP)
	$(VENV)/bin/python -m tests.fuzz.run --seed $(SEED) --duration $(DURATION) $(if $(ONLY),--only $(ONLY))

lint: $(STAMP)
	$(VENV)/bin/ruff check caddy actors bin tests bench

clean:
	rm -rf $(VENV) build *.egg-info
