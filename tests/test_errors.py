"""Every HTTP error is JSON {"error": ...}, never HTML."""

import pytest
import sqlalchemy as sa
from sqlalchemy.exc import DataError

from dacc import create_app
from dacc.db import db
from dacc.errors import NotFound, error_message


@pytest.mark.parametrize(
    "method, path, status",
    [("get", "/nowhere", 404), ("delete", "/status", 405), ("put", "/whoami", 405)],
)
def test_http_errors_are_json(client, method, path, status):
    response = getattr(client, method)(path)
    assert response.status_code == status
    assert response.is_json
    assert set(response.get_json()) == {"error"}
    assert "<" not in response.get_data(as_text=True)


def test_405_keeps_the_allow_header(client):
    response = client.delete("/status")
    assert "GET" in response.headers["Allow"]


def test_unexpected_error_is_a_json_500_without_details(app):
    fresh = create_app(app.config["DACC"])

    @fresh.get("/_boom_for_test")
    def boom():
        raise RuntimeError("secret detail")

    response = fresh.test_client().get("/_boom_for_test")
    assert response.status_code == 500
    assert response.get_json() == {"error": "internal server error"}


def test_error_message_is_the_domain_message_or_the_databases_first_line(app):
    assert error_message(NotFound("measure 'x': no such definition")) == "measure 'x': no such definition"
    with pytest.raises(DataError) as caught:
        db.session.execute(sa.text("SELECT CAST(:v AS integer)"), {"v": "nope"})
    db.session.rollback()
    assert error_message(caught.value) == 'invalid input syntax for type integer: "nope"'
    assert error_message(RuntimeError("boom")) == "RuntimeError"
