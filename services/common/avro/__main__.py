"""``python -m services.common.avro``."""

import sys

from services.common.avro.cli import main

sys.exit(main())
