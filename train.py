"""Thin entry point: ``python train.py --preset digits-en`` or
``torchrun --standalone --nproc_per_node=2 train.py --preset tiny --set data.train=...``."""

import sys

from deepspeech.cli import main

if __name__ == "__main__":
    sys.exit(main(["train", *sys.argv[1:]]))
