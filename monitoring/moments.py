"""The moments a monitoring span is given by: ISO 8601 / RFC 3339 (what KFP's schedule-time placeholder
resolves to, 2026-01-09T13:00:00Z) or seconds since 1970, UTC where no zone is said."""
import datetime
import time
from typing import Callable, Optional, Tuple


def monitored_span(since_text: Optional[str], until_text: Optional[str], lookback_s: float,
                   now: Callable[[], float] = time.time) -> Tuple[float, float]:
    """(since, until): until as given, or now; since as given, or lookback_s before until. A text still holding
    an unresolved placeholder ({{...}}, what KFP up to 2.15 passes for the schedule time) counts as not given."""
    def given(text):
        return text if text and "{{" not in text else None
    until = parse_moment(given(until_text), "--until") if given(until_text) else now()
    since = parse_moment(given(since_text), "--since") if given(since_text) else until - lookback_s
    return since, until


def parse_moment(text: str, name: str) -> float:
    try:
        return float(text)
    except ValueError:
        pass
    try:
        # Python 3.10's fromisoformat takes no "Z".
        moment = datetime.datetime.fromisoformat(text[:-1] + "+00:00" if text.endswith("Z") else text)
    except ValueError:
        raise ValueError(f"{name} {text!r}: expected ISO 8601 (2026-12-02T08:00) or seconds since 1970") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=datetime.timezone.utc)
    return moment.timestamp()
