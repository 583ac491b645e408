"""No log record ever holds a token secret: requests good and bad, and the token CLI."""

import logging


def test_no_log_record_holds_a_secret(client, runner, make_definition, make_token, caplog):
    make_definition("m")
    caplog.set_level(logging.DEBUG)
    _, secret = make_token("org")
    _, read_only = make_token("org", scopes=["aggregate:read"])
    secrets = [secret, read_only]
    body = {
        "measureName": "m",
        "value": 1,
        "startDate": "2024-01-01",
        "createdBy": "app",
        "group1": {"g1": "a"},
    }
    for header in (f"Bearer {secret}", f"Bearer {read_only}", f"Basic {secret}", f"Bearer {secret}x", secret):
        headers = {"Authorization": header}
        client.get("/whoami", headers=headers)
        client.post("/measure", json=body, headers=headers)
        client.post("/measure", json={**body, "value": secret}, headers=headers)
        client.post("/measures", json=[body, {**body, "createdBy": secret}], headers=headers)
        client.get(
            f"/aggregate?measureName={secret}&startDate=2024-01-01&endDate=2024-02-01", headers=headers
        )
    result = runner.invoke(args=["token", "create", "other"])
    assert result.exit_code == 0
    secrets.append(result.output.strip().splitlines()[-1])
    result = runner.invoke(args=["token", "update", "other"])
    secrets.append(result.output.strip().splitlines()[-1])
    assert all(s.startswith("dacc_") for s in secrets)
    logged = caplog.text + "".join(str(r.args) for r in caplog.records)
    assert caplog.records  # the requests were logged
    for s in secrets:
        assert s not in logged
        assert s[len("dacc_") :] not in logged
