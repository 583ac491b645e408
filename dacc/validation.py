"""Small checks shared by the modules that validate client input."""

import json
from datetime import timedelta

FUTURE_TOLERANCE = timedelta(hours=24)
"""How far in the future a measure's startDate may be (clock skew between a client and
this server): no stored start date is ever later than ingestion time plus this."""


def storable_text(value: str) -> bool:
    """Whether PostgreSQL text can hold `value`: no NUL character, no lone surrogate."""
    if "\x00" in value:
        return False
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def shown(value) -> str:
    """A client's value quoted in an error message, cut to 40 characters."""
    try:
        text = json.dumps(value, allow_nan=True, default=str)
    except RecursionError:  # a value nested ~1000 levels deep (the JSON parser allows it)
        return "a value nested too deeply"
    except ValueError:  # e.g. an int past Python's digit limit for str()
        return "a value that cannot be shown"
    return text if len(text) <= 40 else text[:37] + "..."
