# imagine-bot: two commands for a new user, `make demo` and `make test`.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: demo dashboard test lint bench run sandbox clean screenshots constraints container-test mutate

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

# runtime dependencies at the versions pinned in constraints.txt (the image's); a pin that no longer fits
# pyproject.toml is not allowed to stop the install: `make test` then re-pins it
$(STAMP): $(BIN)/python pyproject.toml constraints.txt
	$(BIN)/pip install --quiet -c constraints.txt -e '.[dev]' || \
	  { echo "constraints.txt does not fit pyproject.toml: installing without it"; $(BIN)/pip install --quiet -e '.[dev]'; }
	touch $(STAMP)

## demo: one real /imagine end to end on the embedded sandbox gateway (no keys, no network); the image is
## saved in out/ (and as out/latest.png), the credits in data/imagine-bot.db, which every later command uses
demo: $(STAMP)
	$(BIN)/imagine-bot --sandbox imagine "a lighthouse at dusk --ar 16:9" </dev/null

## dashboard: the /admin dashboard alone (no Slack or Discord token needed); prints a one-time sign-in link
dashboard: $(STAMP)
	$(BIN)/imagine-bot dashboard

## test: lint and the whole suite (with CI=true: the tools the tests need installed first, and a skip fails)
test: $(STAMP)
	@if [ "$${CI:-}" = true ]; then .ci/tools; fi
	$(BIN)/python scripts/constraints.py
	$(BIN)/ruff check .
	$(BIN)/mypy
	$(BIN)/hadolint Dockerfile
	$(BIN)/python -m pytest -q

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check . || true

## screenshots: the dashboard screenshots in docs/ (a laptop's and a phone's), taken by its browser tests in
## headless Chromium
screenshots: $(STAMP)
	IMAGINE_SCREENSHOTS=docs $(BIN)/python -m pytest -q tests/test_dashboard_browser.py -k "sign_in or fits_phones_and_laptops[375]"

## bench: print measured figures (see benchmarks/)
bench: $(STAMP)
	$(BIN)/python -m benchmarks

## constraints: re-pin every runtime dependency at the version installed in .venv (then commit constraints.txt)
constraints: $(STAMP)
	$(BIN)/python scripts/constraints.py --upgrade

## mutate: mutation testing of the money code (mutmut; 40 minutes or more on 2 cores, not in CI): the share killed
mutate: $(STAMP)
	$(BIN)/python -c "import mutmut, pytest_timeout" 2>/dev/null || $(BIN)/pip install --quiet "mutmut==3.8.1" "pytest-timeout==2.4.0"
	$(BIN)/python scripts/mutate.py

## container-test: build the image with docker or podman, run it as the README says, check what operators rely on
container-test:
	$(PYTHON) scripts/container_test.py

run: $(STAMP)
	$(BIN)/imagine-bot run

sandbox: $(STAMP)
	$(BIN)/imagine-bot sandbox --port 8787

## clean: the venv, caches, images (out/) and everything the bot keeps (data/: the database, spool, sandbox)
clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache .mypy_cache out data mutants
