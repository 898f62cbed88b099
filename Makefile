# The whole set-up on a fresh machine is `make demo` or `make test`.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: demo test bench clean fashion-mnist

$(PY):
	$(PYTHON) -m venv $(VENV)

# Reinstall when the dependency list changes.
$(STAMP): pyproject.toml | $(PY)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

# Fashion-MNIST comes from Debian's package where apt is available (offline machines have
# the package mirror); elsewhere torchvision downloads it on first use.
fashion-mnist:
	@if [ -f /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz ]; then :; \
	elif command -v apt-get >/dev/null && [ "$$(id -u)" = 0 ]; then \
		(apt-get install -y -q dataset-fashion-mnist >/dev/null 2>&1 || \
		 (apt-get update -q >/dev/null && apt-get install -y -q dataset-fashion-mnist >/dev/null)); \
	else echo "Fashion-MNIST will be downloaded by torchvision into ./data"; fi

# Train with condensing, then export the run's last checkpoint: verify, measure, write export/.
# measure=true: the demo times each learned layer's forms (the default picks them by a fixed rule).
demo: $(STAMP) fashion-mnist
	@DL=$$([ -f /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz ] && echo false || echo true); \
	RUN=outputs/quickstart/demo_$$(date +%Y-%m-%d_%H-%M-%S); \
	$(VENV)/bin/learnsparse-train experiment=quickstart data.dataset.download=$$DL hydra.run.dir=$$RUN && \
	$(VENV)/bin/learnsparse-export checkpoint=$$RUN/checkpoints/last.pt formats=[pt,pt2,onnx] threads=2 measure=true

# One test process per core (pytest-xdist); each runs torch on one thread (tests/conftest.py).
test: $(STAMP)
	$(PY) -m pytest -q -n auto

bench: $(STAMP)
	$(PY) scripts/bench_trainer_overhead.py

clean:
	rm -rf $(VENV) outputs .pytest_cache
