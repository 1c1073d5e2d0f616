"""`python -m talkstream.cli ...`, as the `talkstream` script (worker processes start this way)."""

import sys

from talkstream.cli.main import main

sys.exit(main())
