# Taming Exploding Gradients: set-up, book, tests, benchmarks.
#   make book    set up the environment and build the book (executes every chapter)
#   make test    set up the environment and run every test (what CI runs)
#   make bench   run the benchmarks, write JSON under benchmarks/results/<device>/
#   make robust  re-execute every chapter at its default size with seed=1 and 2 threads
#                (only the chapters' asserts judge it; part of make test)
# Other targets: notebooks (re-execute chapters into their .ipynb), nbval, lint,
# unit, student, clean.

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
CONSTRAINTS := .ci/constraints.txt
export PYTHONHASHSEED := 0
# No MPLBACKEND here: a Jupyter kernel that inherits MPLBACKEND=Agg draws no inline
# figures (the book once built without any). Headless matplotlib falls back to Agg by itself.
# Jupyter, IPython and matplotlib write under $HOME; keep them inside the build.
export JUPYTER_PLATFORM_DIRS := 1
# One thread: the book's models are small, and on a busy 2-core machine a second
# thread per kernel makes them 5-20x slower. Outputs are rounded to be thread-count stable.
export OMP_NUM_THREADS ?= 1

.PHONY: all setup book notebooks robust test lint unit browser-deps bench nbval student assignments lab floor clean

all: book

$(STAMP): pyproject.toml $(CONSTRAINTS)
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -c $(CONSTRAINTS) -e ".[test]"
	$(BIN)/python -m ipykernel install --sys-prefix --name python3 --display-name "Python 3 (ipykernel)" >/dev/null
	mkdir -p $(VENV)/etc/ipython
	echo 'c.IPKernelApp.log_level = "ERROR"' > $(VENV)/etc/ipython/ipython_kernel_config.py
	touch $(STAMP)

setup: $(STAMP)

# Build the HTML book in _build/html, executing every chapter at its default size.
book: $(STAMP)
	rm -rf _build/html _build/jupyter_execute _build/.doctrees
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/jupyter-book build . -W -n --keep-going

# Maintainers: re-execute chapters (default size, CPU) and store outputs in the paired .ipynb.
notebooks: $(STAMP)
	$(BIN)/python tools/nbtools.py execute

# Claims must hold on any machine: every chapter at its default size with another
# seed and thread count. Outputs go to _build/robust/ and are not compared with the
# stored ones; a cell that raises (one of the chapter's asserted claims) fails it.
ROBUST_SEEDS ?= 1
ROBUST_THREADS ?= 2
robust: $(STAMP)
	$(BIN)/python tools/nbtools.py robust --seeds $(ROBUST_SEEDS) --threads $(ROBUST_THREADS)

lint: $(STAMP)
	$(BIN)/ruff check lib tests tools benchmarks chapters

unit: $(STAMP)
	$(BIN)/python -m pytest tests/lib -q

# Headless Chromium for the reader tests (Debian package).
browser-deps:
	@command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1 || command -v google-chrome >/dev/null 2>&1 || { \
	  echo "installing Debian chromium for the browser tests"; \
	  (apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium fonts-dejavu-core) >/dev/null; }

# Every test: lint, unit/parity, the benchmarks' --quick smoke runs, pairing, quick
# papermill runs, the book build (the one default-size execution), output regression,
# and the browser checks.
test: $(STAMP) browser-deps lint
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/python -m pytest tests/lib tests/benchmarks tests/notebooks -q -m "not book and not browser" --durations=10
	$(MAKE) book
	$(MAKE) robust
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/python -m pytest tests/notebooks -q -m "book or browser"

bench: $(STAMP)
	$(BIN)/python benchmarks/run_all.py

# nbval itself on the stored notebooks (re-executes them; `make test` reuses the book's execution).
nbval: $(STAMP)
	$(BIN)/python -m pytest --nbval chapters/*.ipynb --nbval-sanitize-with tools/sanitize.cfg -q

clean:
	rm -rf _build

# Read and run the chapters locally in JupyterLab: the reader notebooks (chapters/X.ipynb)
# open as they do in Colab; jupyterlab-myst (and jupytext) render the MyST sources X.md too.
lab: $(STAMP)
	$(BIN)/jupyter lab chapters

# Instructors: solution-free notebooks (exercises and their stubs kept) in _build/student/.
student: $(STAMP)
	$(BIN)/python tools/nbtools.py student

# Instructors: an nbgrader course generated from the chapters (nbgrader_config.py and
# source/<chapter>/) in _build/course/; nbgrader's own commands take over from there.
assignments: $(STAMP)
	$(BIN)/python tools/assignments.py --out _build/course

# The declared floors (pyproject.toml) of numpy, scipy, matplotlib, scikit-learn and tqdm,
# with the pinned torch (tools/floors.py says why): the library's tests and every chapter in
# quick mode, in a virtualenv of its own. Slow; not part of make test.
FLOOR := .venv-floor
floor:
	rm -rf $(FLOOR)
	$(PYTHON) -m venv $(FLOOR)
	$(FLOOR)/bin/python -m pip install -q --upgrade pip
	$(FLOOR)/bin/python -m pip install -q $$($(PYTHON) tools/floors.py) pytest hypothesis papermill ipykernel jupytext nbformat pyyaml
	PYTHONPATH=$(CURDIR)/lib $(FLOOR)/bin/python -m pytest tests/lib -q -p no:cacheprovider
	PYTHONPATH=$(CURDIR)/lib $(FLOOR)/bin/python tools/nbtools.py robust --quick --seeds 0 --threads 1 --out _build/floor
