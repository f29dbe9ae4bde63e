"""The moments a monitoring span is given by: ISO 8601 / RFC 3339 (what KFP's schedule-time placeholder
resolves to, 2026-01-09T13:00:00Z) or seconds since 1970, UTC where no zone is said."""
import datetime


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
