# Quick start on a fresh machine:  make run   (install + default experiment)   make test   (install + tests)
PY      ?= python3.11
VENV    ?= .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.installed
PIP     := $(BIN)/python -m pip
export PIP_DISABLE_PIP_VERSION_CHECK=1

.PHONY: install tools run test test-full bench lint clean lock gpu-check gpu-wheels

install: $(STAMP)

# dciodvfy (Debian's dicom3tools) checks that decoded DICOM is a valid object; the tests need it.
tools:
	@command -v dciodvfy >/dev/null 2>&1 || { echo "installing dicom3tools (dciodvfy)"; \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dicom3tools) >/dev/null 2>&1 \
	  || echo "could not install dicom3tools: the DICOM validity test will fail (apt-get install dicom3tools)"; }

# Idempotent: re-runs only when the pins change. torch + torchvision first (they lie on this machine's disk),
# then everything else constrained by requirements.lock so pip never pulls another torch.
$(STAMP): pyproject.toml requirements.lock
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(PIP) install -q torch==2.14.1 torchvision==0.29.1
	$(PIP) install -q -c requirements.lock -e '.[dev]'
	touch $(STAMP)

run: install
	$(BIN)/python run.py

test: install tools
	$(BIN)/python -m pytest -q

test-full: install tools
	MEDCOMP_FUZZ_FULL=1 $(BIN)/python -m pytest -q -m "slow or not slow"

bench: install
	$(BIN)/python experiments/classical_rd.py
	OMP_NUM_THREADS=1 $(BIN)/python experiments/unicompress_rd.py --inputs abdomen_ct isbi_em --budget-s 30 --name unicompress_rd
	OMP_NUM_THREADS=1 $(BIN)/python experiments/unicompress_rd.py --inputs thorax_cta_b thorax_cta_a --budget-s 30 --name unicompress_rd_cta
	OMP_NUM_THREADS=1 $(BIN)/python experiments/unicompress_prior_ablation.py --inputs abdomen_ct thorax_cta_a --name unicompress_prior_ablation
	OMP_NUM_THREADS=1 $(BIN)/python experiments/unicompress_prior_ablation.py --inputs thorax_cta_b isbi_em --name unicompress_prior_ablation_cta
	$(BIN)/python experiments/codecs2d_rd.py
	$(BIN)/python experiments/codec2d_speed.py
	$(BIN)/python experiments/codecs2d_budget.py --minutes 3
	$(BIN)/python experiments/analysis_auroc.py
	$(BIN)/python experiments/scale.py --learned siren:75,150,300 unicompress:75@256 --fit-steps 20
	$(BIN)/python experiments/inr_decode_speed.py

# One prepared check for a machine with a GPU (issue 34): experiments/results/gpu_check.json. `--dry-run` runs its
# CPU-side parts anywhere (every config composed, every flag parsed, inputs prepared small).
gpu-check: install
	$(BIN)/python experiments/gpu_check.py

# What the device machine lacks (its python3 is 3.12 with torch, Lightning, timm), as wheels in .whl (git-ignored), to
# carry there: see experiments/gpu_check.py. pydicom-data, PyAV, SimpleITK and wandb stay behind (too large, unused).
GPU_WHEELS := hydra-core==1.3.8 omegaconf==2.3.1 monai==1.6.1 pydicom==3.0.2 nibabel==5.4.2 PyWavelets==1.9.0 \
              imagecodecs==2026.1.14
gpu-wheels: install
	mkdir -p .whl
	$(PIP) download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
	  --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
	  --platform manylinux2014_x86_64 -d .whl $(GPU_WHEELS)
	$(PIP) wheel -q --no-deps -w .whl antlr4-python3-runtime==4.9.3
	$(PIP) download -q --no-deps --no-binary=:all: -d .whl compressai==1.2.8
	du -sh .whl

lint: install
	$(BIN)/ruff check medcomp tests experiments run.py

lock: install
	$(PIP) freeze --exclude-editable | grep -v -E '^(torch|torchvision|triton|nvidia-|cuda-)' > requirements.lock

clean:
	rm -rf logs .pytest_cache .ruff_cache build *.egg-info .medcomp_tmp
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
