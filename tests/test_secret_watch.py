"""The suite-wide watch (tests/secret_watch.py) finds what it is meant to find."""

import logging

from tests.conftest import CONTRIBUTOR_SECRET


def test_a_secret_logged_by_any_logger_is_found(app, make_token, secret_watch):
    _, secret = make_token("org")
    quiet = logging.getLogger("dacc.test.quiet")
    quiet.propagate = False  # no handler anywhere sees it: the watch does
    try:
        quiet.warning("oops %s", secret[20:40])
        logging.getLogger("dacc.test").error("no secret here, only its prefix %s", secret[:12])
        found = secret_watch.take_found()
        assert len(found) == 1 and "dacc.test.quiet WARNING" in found[0] and "<SECRET>" in found[0]
        assert secret[20:40] not in found[0]
        try:
            raise ValueError(f"the contributor key {CONTRIBUTOR_SECRET}")
        except ValueError:
            logging.getLogger("dacc.test").exception("failed")
        assert len(secret_watch.take_found()) == 1
    finally:
        quiet.propagate = True


def test_a_pseudonym_sent_then_logged_is_found(client, make_definition, auth_header, secret_watch):
    make_definition("m")
    body = {
        "measureName": "m",
        "value": 1,
        "startDate": "2024-01-01",
        "createdBy": "app",
        "group1": {"g1": "a"},
    }
    headers = auth_header()
    assert (
        client.post("/measure", json={**body, "contributor": "household-4711"}, headers=headers).status_code
        == 201
    )
    assert client.post("/measure", json={**body, "contributor": "bob"}, headers=headers).status_code == 201
    assert secret_watch.take_found() == []
    logging.getLogger("dacc.test").info("sent by household-4711 and by bob")
    found = secret_watch.take_found()
    assert len(found) == 1 and "contributor pseudonym" in found[0]  # "bob" is too short to watch


def test_a_served_process_output_is_scanned_line_by_line(tmp_path, make_token, secret_watch):
    _, secret = make_token("org")
    output = tmp_path / "served.log"
    output.write_text("started\n")
    secret_watch.watch_output(output)
    assert secret_watch.take_found() == []
    with output.open("a") as file:
        file.write(f"GET / {secret}\npartial line {secret}")
    assert len(secret_watch.take_found()) == 1  # the partial line waits for its end
    with output.open("a") as file:
        file.write("\n")
    assert len(secret_watch.take_found()) == 1
