"""What the services' logs say about a refused request (one line, not a traceback), and never a
broker password."""

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


_BROKER_PASSWORD = re.compile(r"(amqps?://[^:/@;\s]*:)[^@;\s]+@")


class NoBrokerPasswords(logging.Filter):
    """Masks the password of every broker URL in a record: nameko masks the first only, and on
    a cluster `AMQP_URI` names several (its "Error connecting to broker at ..." lines)."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            text = record.getMessage()
        except Exception:  # a record whose arguments do not fit: logging reports it itself
            return True
        masked = _BROKER_PASSWORD.sub(r"\1********@", text)
        if masked != text:
            record.msg, record.args = masked, None
        return True
