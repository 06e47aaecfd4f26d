# Two commands do all the set-up (see README):
#   make app   - install and start the dashboard on the bundled sample data and weights
#   make test  - install everything (incl. Debian's Chromium for the browser tests), lint (ruff) and run the whole suite
PYTHON ?= python3
PORT ?= 8501

.PHONY: app test lint install install-test chromium

install:
	$(PYTHON) -m pip install -q -e .

install-test:
	$(PYTHON) -m pip install -q -e ".[test]"

chromium:
	@command -v chromium >/dev/null 2>&1 || { \
	  echo "Installing Debian's chromium for the browser tests (needs root/apt)"; \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) || \
	  (sudo apt-get update -qq && sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null); }

app: install
	$(PYTHON) -m streamlit run app.py --server.port $(PORT)

lint: install-test
	$(PYTHON) -m ruff check .
	$(PYTHON) -m ruff format --check .

test: install-test chromium lint
	$(PYTHON) -m pytest $(PYTEST_ARGS)
