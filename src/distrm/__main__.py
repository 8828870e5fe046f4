"""``python -m distrm``: the ``distrm`` command line, so launchers that run a module
(``accelerate launch -m distrm ...``, ``torchrun -m distrm ...``) start it directly."""

import sys

from distrm.cli import main

if __name__ == "__main__":
    sys.exit(main())
