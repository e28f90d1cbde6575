"""Thin entry point: ``python serve.py --model models/streaming-en [--port 8000]``."""

import sys

from deepspeech.cli import main

if __name__ == "__main__":
    sys.exit(main(["serve", *sys.argv[1:]]))
