# One entry point for a fresh machine: `make demo` (main job) and `make test` (test suite).
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: setup interfaces demo test test-fast bench colcon-check config clean

# Generated message packages (tf2_msgs, cmirl_ros_interfaces): see interfaces/build.sh.
IFACE_STAMP := build/interfaces/install/.built
IFACE_SRC := interfaces/build.sh $(wildcard interfaces/cmake/*.cmake interfaces/*/package.xml interfaces/*/CMakeLists.txt interfaces/*/msg/*.msg)

setup: $(STAMP) $(IFACE_STAMP)

interfaces: $(IFACE_STAMP)

$(STAMP): requirements.txt setup.py
	test -d $(VENV) || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q -r requirements.txt
	$(BIN)/pip install -q --no-deps --no-build-isolation -e .
	touch $(STAMP)

$(IFACE_STAMP): $(STAMP) $(IFACE_SRC)
	bash interfaces/build.sh $(VENV)

demo: $(STAMP) $(IFACE_STAMP)
	$(BIN)/cmirl demo --json out/demo/summary.json

test: $(STAMP) $(IFACE_STAMP)
	$(BIN)/python -m pytest -q test

test-fast: $(STAMP) $(IFACE_STAMP)
	$(BIN)/python -m pytest -q -m "not slow" test

# config/localize.yaml is generated from the option tree (cmirl_ros/options.py); a test keeps it current.
config: $(STAMP)
	$(BIN)/cmirl config localize-yaml --out config/localize.yaml

colcon-check: $(STAMP)
	bash test/colcon_check.sh

# The README's figures (the 1M-entry map figure: see docs/mapdb.md, it takes ~10 min).
bench: $(STAMP)
	mkdir -p out/bench
	$(BIN)/cmirl bench geometry --json out/bench/geometry.json
	for c in cmirl_b4 cmirl_lite modalink cmirl_no_acma cmirl_no_cmaf cmirl_single_scale; do \
		$(BIN)/cmirl bench model --config $$c --height 128 --width 800 --threads 1 --json out/bench/model_$$c.json || exit 1; done
	$(BIN)/cmirl bench mapdb --entries 100000 --dim 256 --index hnsw,flat --e2e --json out/bench/mapdb_100k.json
	$(BIN)/cmirl bench sim --json out/bench/sim.json
	$(BIN)/cmirl bench inputs --json out/bench/inputs.json
	$(BIN)/cmirl bench node --json out/bench/node.json

clean:
	rm -rf build install log out .pytest_cache
