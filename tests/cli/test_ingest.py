"""`flask ingest rejected|mqtt`: listing what was set aside, refusing without config."""

from datetime import UTC, datetime, timedelta

from dacc.db import db
from dacc.models import RejectedMessage

NOW = datetime.now(UTC)


def reject(topic, *, age_days=0, error="payload: not valid JSON", payload=b"oops\n\x00"):
    db.session.add(RejectedMessage(topic=topic, org="org", received_at=NOW - timedelta(days=age_days),
                                   error=error, payload=payload, payload_size=len(payload) + 10))  # fmt: skip
    db.session.commit()


def listed(result) -> list[list[str]]:
    return [line.split("  ") for line in result.output.splitlines()[1:-1]]


def test_rejected_lists_newest_first_with_a_one_line_preview(runner, app):
    reject("dacc/measures/a", age_days=2)
    reject("dacc/measures/b", error='value: expected a finite number, got "x"', payload=b'{"value": "x"}')
    result = runner.invoke(args=["ingest", "rejected"])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0].split() == ["received", "topic", "org", "error", "bytes", "payload"]
    assert "dacc/measures/b" in lines[1] and '{"value": "x"}' in lines[1] and "24" in lines[1]
    assert "dacc/measures/a" in lines[2] and "oops\\n\\x00" in lines[2]
    assert lines[-1] == "2 rejected message(s)"


def test_rejected_filters_by_topic_prefix_and_date(runner, app):
    reject("dacc/measures/a", age_days=10)
    reject("dacc/measures/b")
    reject("dacc/measuresX")
    reject("other/topic")
    prefix = runner.invoke(args=["ingest", "rejected", "--topic", "dacc/measures/#"])
    assert prefix.exit_code == 0 and prefix.output.splitlines()[-1] == "2 rejected message(s)"
    exact = runner.invoke(args=["ingest", "rejected", "--topic", "other/topic"])
    assert exact.output.splitlines()[-1] == "1 rejected message(s)"
    since = (NOW - timedelta(days=1)).date().isoformat()
    recent = runner.invoke(args=["ingest", "rejected", "--topic", "dacc/measures/#", "--since", since])
    assert recent.output.splitlines()[-1] == "1 rejected message(s)" and "dacc/measures/b" in recent.output


def test_rejected_with_a_bad_date_is_a_usage_error(runner, app):
    result = runner.invoke(args=["ingest", "rejected", "--since", "yesterday"])
    assert result.exit_code == 2 and "expected an ISO 8601 date" in result.output


def test_mqtt_without_a_config_section_exits_1(runner, app):
    result = runner.invoke(args=["ingest", "mqtt"])
    assert result.exit_code == 1 and "no 'mqtt' section" in result.output
