"""`python -m belle.training ARGS` runs `belle train ARGS`: the form `accelerate launch -m` takes."""

import sys

from .cli_train import main_module

sys.exit(main_module())
