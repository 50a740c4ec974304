"""``python -m services.common.audit``."""

import sys

from services.common.audit.cli import main

sys.exit(main())
