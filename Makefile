# batchd — the two commands a newcomer needs are `make run` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install run test test-sqlite test-full lint bench bench-controls clean

install: $(STAMP)

$(STAMP): requirements.lock pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -r requirements.lock
	$(BIN)/python -m pip install --quiet --no-deps -e .
	@touch $(STAMP)

run: install
	$(BIN)/batchd serve --demo

# Runs the suite on SQLite + the in-process runner and, when BATCH_TEST_DATABASE_URL and
# BATCH_TEST_REDIS_URL are set, again on PostgreSQL + Redis + arq — the two side by side
# (each waits on its database as much as it computes: about half the time of one after
# the other on two cores). The PostgreSQL run's output follows the SQLite run's.
test: install
	@if [ -n "$$BATCH_TEST_DATABASE_URL" ] && [ -n "$$BATCH_TEST_REDIS_URL" ]; then \
		out=$$(mktemp); \
		$(BIN)/pytest -p no:cacheprovider > "$$out" 2>&1 & pg=$$!; \
		echo "== SQLite + in-process runner (PostgreSQL + Redis + arq alongside) =="; \
		env -u BATCH_TEST_DATABASE_URL -u BATCH_TEST_REDIS_URL $(BIN)/pytest -p no:cacheprovider; \
		sqlite=$$?; wait $$pg; postgres=$$?; \
		echo "== again on $$BATCH_TEST_DATABASE_URL + $$BATCH_TEST_REDIS_URL =="; \
		cat "$$out"; rm -f "$$out"; \
		[ $$sqlite -eq 0 ] && [ $$postgres -eq 0 ]; \
	else \
		env -u BATCH_TEST_DATABASE_URL -u BATCH_TEST_REDIS_URL $(BIN)/pytest; \
		echo "(BATCH_TEST_DATABASE_URL / BATCH_TEST_REDIS_URL not set: PostgreSQL + Redis run skipped)"; \
	fi

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check app workers tests bench
	$(BIN)/mypy app workers tests
	$(BIN)/lint-imports

bench: install
	$(BIN)/python -m bench.run

bench-controls: install
	$(BIN)/python -m bench.controls

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache batchd.db*

# Refresh the README's console screenshots (the browser tests, writing to docs/).
screenshots: install
	BATCHD_SCREENSHOTS=docs/screenshots env -u BATCH_TEST_DATABASE_URL -u BATCH_TEST_REDIS_URL $(BIN)/pytest tests/test_console.py
