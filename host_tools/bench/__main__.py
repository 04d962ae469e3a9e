"""`python -m host_tools.bench` (make bench): every benchmark, figures not pass/fail."""

import sys

from host_tools.bench import main

sys.exit(main())
