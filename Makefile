# The two commands of the README. Both set up .venv/ first (a no-op when it is up to date).
.PHONY: setup demo test bench lint

setup:
	@scripts/setup.sh dev

# The main job: train the default model (digits-en) on the shipped FSDD audio, evaluate it, transcribe.
demo: setup
	@recipes/digits_en.sh

# The test suite, on CPU.
test: setup
	.venv/bin/python -m pytest -q

bench: setup
	.venv/bin/python bench/run.py

lint: setup
	.venv/bin/ruff check .
