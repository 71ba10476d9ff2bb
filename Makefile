# ctvlp entry points. Every target bootstraps .venv on first use.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.ctvlp-installed
export HF_HUB_OFFLINE ?= 1
export TRANSFORMERS_OFFLINE ?= 1

NAME ?= colipri_c
PROFILE ?=
ARGS ?=
RESUME ?=
PHANTOM_DIR ?= data/phantom_ct_rate
# 800 scans (about 2 min to write and cache): the same 600 steps generalise better than on 300
# (COLIPRI-C val / test R@5 2.6x / 2.6x chance against 2.2x / 2.0x) and the test split has 156
# volumes. The image-only phantom (12 patients) is the MAE steps' NLST stand-in.
PHANTOM_N ?= 800
IMAGE_ONLY_DIR ?= data/phantom_image_only
# COLIPRI-CRM, the paper's final recipe (CLIP + report generation + MAE); DEMO_EXPERIMENT=colipri_c
# is the CLIP-only demo (about 6.5 min from nothing).
DEMO_EXPERIMENT ?= colipri_crm
# TensorBoard (make tb) serves on this machine only; TB_HOST=0.0.0.0 exposes it to the network.
TB_HOST ?= 127.0.0.1

.PHONY: demo test test-all exp sweep compare bench-train bench-gpu bench-data bench-annotate bench-demo tb lint format clean distclean venv

venv: $(STAMP)

# torch/torchvision first, pinned to the builds on this disk (a CUDA build: the same
# environment runs on GPUs); then the project with its dev extra.
$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install torch==2.14.1 torchvision==0.29.1
	$(BIN)/pip install -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/ctvlp phantom --out $(PHANTOM_DIR) --n $(PHANTOM_N) --seed 0
	$(BIN)/ctvlp phantom --source image_only --out $(IMAGE_ONLY_DIR) --n 12 --seed 0
	$(BIN)/ctvlp preprocess --source ct_rate --root $(PHANTOM_DIR) --spacing 6 --workers 2
	$(BIN)/ctvlp tiny-lm --reports $(PHANTOM_DIR)/radiology_text_reports/train_reports.csv --out data/tiny_lm
	$(BIN)/ctvlp fit $(DEMO_EXPERIMENT) --profile cpu_demo trainer.cpu_keep_freed_memory=true

# The import layers first (seconds; .importlinter), then the default suite.
test: $(STAMP)
	$(BIN)/lint-imports
	$(BIN)/pytest -m "not slow" -q

test-all: $(STAMP)
	$(BIN)/lint-imports
	$(BIN)/pytest -q

exp: $(STAMP)
	$(BIN)/ctvlp fit $(NAME) $(if $(PROFILE),--profile $(PROFILE)) $(if $(RESUME),--resume $(RESUME)) $(ARGS)

sweep: $(STAMP)
	$(BIN)/ctvlp sweep $(NAME) $(if $(PROFILE),--profile $(PROFILE)) $(ARGS)

# Every recipe under one protocol (experiments/compare/$(COMPARE).yaml; docs/compare.md): after
# make demo (its phantoms and tiny LM); writes the phantom MSD liver of the segmentation column.
# Table, JSON, per-label tables and plots in runs/compare/$(COMPARE)/. PROFILE=none: the paper configs.
COMPARE ?= recipes
MSD_DIR ?= data/phantom_msd_liver
compare: $(STAMP)
	$(BIN)/ctvlp phantom --source msd_liver --out $(MSD_DIR) --n 10 --seed 0
	$(BIN)/ctvlp compare $(COMPARE) $(if $(PROFILE),--profile $(PROFILE)) $(ARGS)

bench-train: $(STAMP)
	$(BIN)/python -m ctvlp.bench.train $(ARGS)

# On a GPU: COLIPRI's Primus-M and GreenRFM's R3D-18 at their recipes' batch and bf16, activation
# checkpointing and torch.compile each on and off: SDPA kernel, s/step, MFU, peak memory, to
# runs/bench/bench_gpu.{json,md}. Refuses on a CPU; ARGS=--smoke runs a tiny CPU version of the same code.
bench-gpu: $(STAMP)
	$(BIN)/python -m ctvlp.bench.gpu $(ARGS)

# Data loading: the cache (mmap crop + augmentation) against on-the-fly torchio preprocessing of
# 512x512x300 NIfTI phantoms, in the same run (ARGS="--volumes 5" etc., see --help).
bench-data: $(STAMP)
	$(BIN)/python -m ctvlp.bench.data $(ARGS)

# LLM annotation: reports/s against a local OpenAI-compatible server with 200 ms latency, at
# concurrency 1 and 32 (ARGS="--latency 0.5 --reports 128" etc., see --help).
bench-annotate: $(STAMP)
	$(BIN)/python -m ctvlp.bench.annotate $(ARGS)

# The demo fit before and after its speed-ups (glibc's default allocator, the text cache off and
# unlimited augmentation, against the cpu_demo profile; ctvlp/bench/demo.py), 150 steps of each case
# on make demo's phantom, to runs/bench/bench_demo.{json,md} (ARGS="--steps 600 --cases before,after").
bench-demo: $(STAMP)
	$(BIN)/python -m ctvlp.bench.demo --data-root $(PHANTOM_DIR) --experiment $(DEMO_EXPERIMENT) $(ARGS)

tb: $(STAMP)
	$(BIN)/tensorboard --logdir runs --host $(TB_HOST)

lint: $(STAMP)
	$(BIN)/lint-imports
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: $(STAMP)
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

clean:
	rm -rf runs cache lightning_logs .pytest_cache .ruff_cache .import_linter_cache
	find . -name __pycache__ -not -path './$(VENV)/*' -prune -exec rm -rf {} +

distclean: clean
	rm -rf $(VENV) data
