# TARS Self-Coding developer entry points. `make help` lists them.
SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# Built binaries live outside the repository so that a fresh clone reuses them.
export TARS_TOOLS_CACHE ?= $(or $(XDG_CACHE_HOME),$(HOME)/.cache)/tars-selfcoding

.PHONY: help install bubblewrap tools node kube-router ollama images kind dev-up dev-down crds test test-kind demo kind-demo

help: ## List the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-10s %s\n", $$1, $$2}'

install: $(VENV)/.installed bubblewrap ## Create .venv with the project and everything its tests need

bubblewrap: ## Install Debian's bubblewrap (bwrap), the sandbox of every test run, when missing
	@hack/install-bubblewrap.sh

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip setuptools wheel
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $@

tools: ## Build the pinned control plane (kube-apiserver, kube-controller-manager, kubectl, etcd, helm)
	@hack/build-tools.sh

node: ## Build the dev node that runs pods as containers (kubelet, kube-scheduler, containerd, runc, crictl)
	@hack/build-node.sh

kube-router: ## Build kube-router, whose network policy controller enforces NetworkPolicy on the dev node
	@hack/build-kube-router.sh

ollama: install ## Build the pinned Ollama server and prepare the small test model (tars-gemma3-270m)
	@PYTHON=$(PY) hack/build-ollama.sh

images: ## Build tars-replica and tars-operator with docker or podman (a local base where no registry answers)
	@hack/build-images.sh

kind: ## Build kind, kubeadm and CoreDNS, and a kind node image from this project's binaries
	@hack/kind/build-kind.sh

# The node holds the machine's node lock until dev-down: tests that need the node fail meanwhile.
dev-up: install tools node images ## Start a local cluster with a real node and the images loaded; writes .dev/kubeconfig
	@TARS_TOOLS_DIR="$$(hack/build-tools.sh | tail -n 1)" \
	TARS_NODE_DIR="$$(hack/build-node.sh | tail -n 1)" \
	TARS_IMAGES_DIR="$$(hack/build-images.sh | tail -n 1)" \
	$(PY) -m tests.harness.devcluster up --state-dir .dev

dev-down: ## Stop what dev-up started: the node's pods and processes, then the control plane
	@$(PY) -m tests.harness.devcluster down --state-dir .dev

crds: install ## Regenerate crds/*.yaml from the API models
	$(PY) -m tars_api.crdgen crds

# The kind test (pytest -m kind) runs after the others, in a session of its own: it holds the
# machine's node lock, which their node holds until they end. KIND=0 leaves it out.
KIND ?= 1
test: install tools node kube-router ollama images $(if $(filter 1,$(KIND)),kind) ## Run the test suite against a real control plane and node, Ollama and the images, then test-kind (KIND=0: without it)
	$(VENV)/bin/lint-imports
	TARS_TOOLS_DIR="$$(hack/build-tools.sh | tail -n 1)" \
	TARS_NODE_DIR="$$(hack/build-node.sh | tail -n 1)" \
	TARS_KUBE_ROUTER_DIR="$$(hack/build-kube-router.sh | tail -n 1)" \
	TARS_OLLAMA_DIR="$$(PYTHON=$(PY) hack/build-ollama.sh | tail -n 1)" \
	TARS_IMAGES_DIR="$$(hack/build-images.sh | tail -n 1)" \
	$(PY) -m pytest -m "not kind" $(PYTEST_ARGS)
	$(if $(filter 1,$(KIND)),$(MAKE) --no-print-directory test-kind)

test-kind: install tools images kind ## The kind demo's test: tarscli demo self-code-demo --kind in a kind cluster of its own
	TARS_TOOLS_DIR="$$(hack/build-tools.sh | tail -n 1)" \
	TARS_IMAGES_DIR="$$(hack/build-images.sh | tail -n 1)" \
	TARS_KIND_DIR="$$(hack/kind/build-kind.sh | tail -n 1)" \
	$(PY) -m pytest -m kind $(PYTEST_ARGS)

# kind, its node image (kind's own cannot be pulled everywhere) and helm are built here;
# CONTAINERS_CONF gives kind's podman the runtime and ulimits that work on this machine.
kind-demo: install kind ## The demo in a new kind cluster (docker, else podman): images, kind node, chart, a volume run
	@kind_dir="$$(hack/kind/build-kind.sh | tail -n 1)" && \
	images_dir="$$(hack/build-images.sh | tail -n 1)" && \
	CONTAINERS_CONF="$$images_dir/containers.conf" \
	PATH="$$kind_dir/bin:$$(hack/build-tools.sh | tail -n 1):$$PATH" \
	$(VENV)/bin/tarscli demo self-code-demo --kind --kind-node-image "$$(cat "$$kind_dir/node-image")"

demo: install ## Run the self-coding demo locally (no cluster, no Ollama needed)
	$(VENV)/bin/tarscli demo self-code-demo
