"""``python -m deepspeech.cli``: the ``deepspeech`` command (torchrun needs a module to run)."""

import sys

from deepspeech.cli import main

sys.exit(main())
