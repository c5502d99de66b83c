# The two commands a newcomer needs: `make demo` and `make test`. Both set up .venv when missing.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test test-cluster install clean

$(STAMP): pyproject.toml scripts/install.sh
	PYTHON=$(PYTHON) bash scripts/install.sh $(VENV)
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/audit scan sample

test: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/python -m pytest -q

# The two-node Ray cluster on loopback (tests/test_ray_cluster.py): about 4 minutes, apart from `make test`.
test-cluster: $(STAMP)
	AUDIT_CLUSTER_TESTS=1 $(BIN)/python -m pytest -q tests/test_ray_cluster.py

clean:
	rm -rf $(VENV)
