"""What the services' logs say about a refused request: one line, not a traceback."""

from __future__ import annotations

import logging
import re

# nameko logs each expected exception (a refused request: a user error) as
# "(expected) error handling worker <WorkerContext [scheduler.submit_job] at 0x...>: message".
_EXPECTED = re.compile(r"\(expected\) error handling worker <WorkerContext \[([^\]]+)\][^>]*>")


class OneLineRefusals(logging.Filter):
    """Rewrites nameko's record of an expected exception as `refused scheduler.submit_job:
    message`, without the traceback: the user was already told, the operator needs one line."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.name == "nameko.containers" and str(record.msg).startswith("(expected)"):
            text = _EXPECTED.sub(r"refused \1", record.getMessage())
            record.msg, record.args = text, None
            record.exc_info, record.exc_text = None, None
        return True
