"""``python -m detserve.runlog``: print the JSON Schema of one run-log line (``make schemas``)."""

import json
import sys

from detserve.runlog.schema import run_log_json_schema

sys.stdout.write(json.dumps(run_log_json_schema(), indent=2, sort_keys=True) + "\n")
