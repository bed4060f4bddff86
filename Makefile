# Thin wrappers; README and docs/ show these exact commands. Logic lives in scripts/ and vitscope/ (the model in vitscope/model/, so the .mar ships one package).
SHELL   := /bin/bash
PY      := .venv/bin/python
STAMP   := .venv/.installed

# A hub name (dino_vits8, dinov2_vits14_reg, dinov3_vits16, ...: docs/models.md's table), or DINO's
# vit_tiny|vit_small|vit_base with PATCH=8|16 (default 8), or timm:<model name> / open_clip:<config> (docs/models.md). Empty: vit_small, or what WEIGHTS' config.json says.
MODEL   ?=
PATCH   ?=
MODEL_ARGS = $(if $(MODEL),--model $(MODEL)) $(if $(PATCH),--patch $(PATCH))
# A checkpoint: a .pth/.pt or .safetensors file, a Hugging Face model directory, or random.
WEIGHTS ?=
# Where `make weights` caches the official checkpoints (git-ignored).
WEIGHTS_DIR ?= weights
CHECKPOINT ?=
# A head's class names (one per line, or a JSON list) and a text tower's tokenizer folder, where the checkpoint lacks them;
# DINOv2's official linear-classifier head file (dinov2_vits14_linear4_head.pth) for a DINOv2 backbone.
LABELS  ?=
HEAD    ?=
TOKENIZER ?=
IMG     ?= data/samples/astronaut.jpg
OUT     ?= out/$(basename $(notdir $(IMG))).json
RENDER_ARGS ?= --mask 0.6
# The served name: model_store/$(NAME).mar, /predictions/$(NAME). Default: the hub name of MODEL (the
# variants table in vitscope/model/variants.py), or a Hugging Face directory's name.
NAME    ?= $(shell $(PY) -m scripts.archive $(MODEL_ARGS) $(if $(WEIGHTS),--weights "$(WEIGHTS)") --print-name)
URL      = http://127.0.0.1:8080/predictions/$(NAME)
# TorchServe config: config.properties (localhost, no auth) or config.production.properties (token auth).
CONFIG  ?= config.properties
# Ports of make viewer and make serve-kserve: empty means the defaults in scripts/__init__.py.
VIEWER_PORT ?=
KSERVE_PORT ?=
# With token auth on, TorchServe writes key_file.json here; predict sends its inference key.
KEY      = $(shell test -f key_file.json && $(PY) -m scripts.serve key)

.PHONY: install weights archive serve serve-kserve viewer stop predict render test browser lint docs bench kserve-bundle demo clean

install: $(STAMP)

$(STAMP): requirements.txt requirements-core.txt requirements-kserve.txt pyproject.toml
	@python3 -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))' || { \
	  echo "needs Python 3.11 (the pinned torch 2.14.1 wheels); python3 is $$(python3 -V 2>&1)"; exit 1; }
	@java -version 2>&1 | grep -Eq 'version "(1[7-9]|[2-9][0-9])' || { \
	  echo "TorchServe needs Java 17+: apt-get install openjdk-17-jre-headless (or set JAVA_HOME)"; exit 1; }
	python3 -m venv .venv
	$(PY) -m pip install --upgrade --quiet pip
	$(PY) -m pip install --quiet -r requirements.txt -r requirements-kserve.txt
	touch $@

weights: install
	$(PY) -m scripts.weights fetch $(MODEL_ARGS) --cache-dir $(WEIGHTS_DIR) $(if $(CHECKPOINT),--checkpoint $(CHECKPOINT))

archive: install
	$(PY) -m scripts.archive $(MODEL_ARGS) --weights "$(WEIGHTS)" --cache-dir $(WEIGHTS_DIR) --export-path model_store $(if $(CHECKPOINT),--checkpoint $(CHECKPOINT)) $(if $(filter command line,$(origin NAME)),--name $(NAME)) $(if $(LABELS),--labels "$(LABELS)") $(if $(HEAD),--head "$(HEAD)") $(if $(TOKENIZER),--tokenizer "$(TOKENIZER)")

serve: install
	$(PY) -m scripts.serve start --model-name $(NAME) --config $(CONFIG)

# The same archive on KServe's model server (kserve_engine, no TorchServe), in the background.
serve-kserve: install
	$(PY) -m scripts.serve_kserve start --model-name $(NAME) $(if $(KSERVE_PORT),--port $(KSERVE_PORT))

# The static attention viewer (viewer/) on 127.0.0.1 (port 8090), in the background; it talks to `make serve`.
viewer: install
	$(PY) -m scripts.viewer start $(if $(VIEWER_PORT),--port $(VIEWER_PORT))

stop: install
	$(PY) -m scripts.serve stop
	$(PY) -m scripts.viewer stop
	$(PY) -m scripts.serve_kserve stop

predict: install
	@mkdir -p $(dir $(OUT))
	@echo 'curl -sS --fail-with-body $(if $(KEY),-H "Authorization: Bearer <key_file.json>") -T "$(IMG)" "$(URL)" -o "$(OUT)"'
	@curl -sS --fail-with-body $(if $(KEY),-H "Authorization: Bearer $(KEY)") -T "$(IMG)" "$(URL)" -o "$(OUT)" || { cat "$(OUT)"; echo; exit 1; }
	@echo "saved $(OUT)"

render: install
	$(PY) client/render_attention.py --from-file "$(OUT)" --image "$(IMG)" --out $(dir $(OUT)) $(RENDER_ARGS)

# Debian's chromium + chromium-driver for the viewer's browser tests (installed when running as root).
browser:
	@scripts/install_browser.sh

test: install browser
	$(PY) -m pytest -q --durations=10 -n auto --dist loadscope --no-loadscope-reorder tests

# ruff (style, imports, bugbear) and mypy (types), settings in pyproject.toml; CI runs it before the tests.
lint: install
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .
	$(PY) -m mypy

# The documentation site (mkdocs.yml: docs/ -> build/site/); --strict fails on any broken link, anchor or nav entry.
docs: install
	NO_MKDOCS_2_WARNING=1 $(PY) -m mkdocs build --strict

# About an hour on 2 cores with every section; BENCH_ARGS=--quick for 224/480 only, or --sections ... Writes bench/results/bench.{md,json,png}.
bench: install
	$(PY) -m bench $(BENCH_ARGS)

# KServe storage layout in build/kserve (config/ + model-store/) for deploy/kserve/inferenceservice*.yaml.
kserve-bundle: install
	$(PY) -m scripts.kserve_bundle --model-name $(NAME)

# Tries to fetch the official weights; without them (offline) it goes on with random ones, loudly.
demo: install
	-$(MAKE) weights
	$(PY) -m scripts.archive $(MODEL_ARGS) --weights "$(WEIGHTS)" --cache-dir $(WEIGHTS_DIR) --export-path model_store --fallback-random
	$(MAKE) serve
	$(MAKE) predict
	$(MAKE) render

clean:
	rm -rf build logs out model_store/*.mar
