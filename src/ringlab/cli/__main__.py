"""``python -m ringlab.cli ...``: the ``ringlab`` command."""

import sys

from ringlab.cli.main import main

sys.exit(main())
