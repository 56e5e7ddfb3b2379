"""What a hostile page, a forged header or a slow client can do to a server on 127.0.0.1: nothing.

Each test sends what an attacker would (a `no-cors` post, a rebound DNS name, another client's
job id, a body that never ends) and checks the refusal and that nothing ran.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from serving import LiveServer, live_server

from sdtrt.errors import InputError
from sdtrt.serve.app import ServeOptions
from sdtrt.serve.options import host_names_for
from sdtrt.serve.server import read_api_key

QUICK = {"prompt": "a red fox", "steps": 2, "seed": 3}
LONG = {"prompt": "a long job", "steps": 400, "seed": 5}


def _jobs_run(server: LiveServer) -> float:
    return sum(
        server.service.metrics.jobs.labels(outcome)._value.get()  # noqa: SLF001
        for outcome in ("completed", "failed", "cancelled", "expired")
    )


@pytest.mark.parametrize(
    "content_type",
    [None, "text/plain", "text/plain;charset=UTF-8", "application/x-www-form-urlencoded"],
)
def test_a_body_a_page_may_send_without_asking_is_refused(
    server: LiveServer, content_type: str | None
) -> None:
    """`fetch(url, {method: "POST", mode: "no-cors", body})` from any page sends these types."""
    before = _jobs_run(server)
    headers = {} if content_type is None else {"Content-Type": content_type}
    with server.client() as client:
        for path in ("/v1/txt2img", "/sdapi/v1/txt2img"):
            response = client.post(path, content=json.dumps(QUICK).encode(), headers=headers)
            assert response.status_code == 415, (path, response.text)
            assert "application/json" in response.json()["detail"]
        assert client.post("/v1/txt2img", json=QUICK).status_code == 200
    assert _jobs_run(server) == before + 1


@pytest.mark.parametrize(
    ("origin", "fetch_site"),
    [
        ("http://evil.example", None),
        ("null", None),
        ("http://localhost:1", None),  # another port of this machine is another origin
        (None, "cross-site"),
    ],
)
def test_state_changing_requests_from_another_site_are_refused(
    server: LiveServer, origin: str | None, fetch_site: str | None
) -> None:
    headers = {"Origin": origin} if origin else {}
    if fetch_site:
        headers["Sec-Fetch-Site"] = fetch_site
    before = _jobs_run(server)
    with server.client() as client:
        assert client.post("/v1/txt2img", json=QUICK, headers=headers).status_code == 403
        assert client.post("/sdapi/v1/interrupt", headers=headers).status_code == 403
        assert client.delete("/v1/jobs/0123", headers=headers).status_code == 403
        assert client.get("/v1/info", headers=headers).status_code == 200  # reads are harmless
    assert _jobs_run(server) == before


def test_the_page_itself_may_post(server: LiveServer) -> None:
    headers = {"Origin": server.url, "Sec-Fetch-Site": "same-origin"}
    with server.client() as client:
        assert client.post("/v1/txt2img", json=QUICK, headers=headers).status_code == 200


@pytest.mark.parametrize("host", ["evil.example", "evil.example:80", "192.168.1.9"])
def test_a_name_the_server_does_not_answer_to_is_refused(server: LiveServer, host: str) -> None:
    """DNS rebinding: a page's own name made to resolve to 127.0.0.1 reads the answers."""
    with server.client() as client:
        for path in ("/v1/info", "/readyz", "/"):
            refused = client.get(path, headers={"Host": host})
            assert refused.status_code == 400 and "--allowed-host" in refused.json()["detail"]
        port = server.url.rsplit(":", 1)[1]
        for name in ("localhost", "127.0.0.1", "[::1]"):
            assert client.get("/v1/info", headers={"Host": f"{name}:{port}"}).status_code == 200


def test_allowed_hosts_are_answered_and_their_pages_may_post(tiny_engine_dir: Path) -> None:
    options = ServeOptions(allowed_hosts=frozenset({"sd.example.com"}))
    with live_server(tiny_engine_dir, options) as live, live.client() as client:
        proxied = {"Host": "sd.example.com", "Origin": "https://sd.example.com"}
        assert client.post("/v1/txt2img", json=QUICK, headers=proxied).status_code == 200
        assert client.get("/v1/info", headers={"Host": "other.example.com"}).status_code == 400


def test_host_names_follow_the_listening_address() -> None:
    assert host_names_for("127.0.0.1") == {"localhost", "127.0.0.1", "::1"}
    assert host_names_for("::1") == {"localhost", "127.0.0.1", "::1"}
    assert host_names_for("192.168.1.9") == {"192.168.1.9"}
    assert host_names_for("0.0.0.0") is None  # any name: the API key guards a public server


def test_a_job_is_seen_and_cancelled_by_its_owner_only(server: LiveServer) -> None:
    mine, theirs = {"X-Client-Id": "alice"}, {"X-Client-Id": "mallory"}
    with server.client() as client:
        job = client.post("/v1/txt2img?wait=false", json=LONG, headers=mine).json()["id"]
        try:
            assert client.get(f"/v1/jobs/{job}", headers=theirs).status_code == 404
            assert client.delete(f"/v1/jobs/{job}", headers=theirs).status_code == 404
            assert client.get(f"/v1/jobs/{job}/events", headers=theirs).status_code == 404
            progress = client.get("/sdapi/v1/progress", headers=theirs).json()
            assert progress["state"]["job_count"] == 0
            assert client.get(f"/v1/jobs/{job}", headers=mine).json()["state"] != "cancelled"
        finally:
            cancelled = client.delete(f"/v1/jobs/{job}", headers=mine)
        assert cancelled.status_code == 202


def test_x_forwarded_for_is_believed_only_from_the_proxies_named(
    server: LiveServer, tiny_engine_dir: Path
) -> None:
    """Anyone could send X-Forwarded-For: believed, it would make them any client they name."""
    forged = {"X-Forwarded-For": "10.0.0.7", "X-Client-Id": "bob"}
    plain = {"X-Client-Id": "bob"}
    with server.client() as client:
        job = client.post("/v1/txt2img?wait=false", json=QUICK, headers=forged).json()["id"]
        assert client.get(f"/v1/jobs/{job}", headers=plain).status_code == 200  # the same client
    with live_server(tiny_engine_dir, forwarded_allow_ips="127.0.0.1") as proxied:
        with proxied.client() as client:
            job = client.post("/v1/txt2img?wait=false", json=QUICK, headers=forged).json()["id"]
            assert client.get(f"/v1/jobs/{job}", headers=plain).status_code == 404
            assert client.get(f"/v1/jobs/{job}", headers=forged).status_code == 200


def test_a_body_that_never_ends_gets_408(tiny_engine_dir: Path) -> None:
    with live_server(tiny_engine_dir, ServeOptions(body_timeout_s=1.0)) as live:
        port = int(live.url.rsplit(":", 1)[1])
        with socket.create_connection(("127.0.0.1", port), timeout=20) as slow:
            slow.sendall(
                b"POST /v1/txt2img HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                b'Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{"prompt": '
            )
            started = time.monotonic()
            answer = slow.recv(4096).decode()
        assert answer.startswith("HTTP/1.1 408"), answer
        assert time.monotonic() - started < 10
        with live.client() as client:
            assert client.get("/healthz").status_code == 200


def test_slow_headers_are_cut_off_and_healthz_answers_meanwhile(tiny_engine_dir: Path) -> None:
    """A slowloris: hundreds of connections, each sending its headers a byte now and then."""
    with live_server(tiny_engine_dir, header_timeout_s=1.0) as live:
        port = int(live.url.rsplit(":", 1)[1])
        slow = []
        try:
            for _ in range(300):
                connection = socket.create_connection(("127.0.0.1", port), timeout=10)
                connection.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: a")
                slow.append(connection)
            with live.client() as client:
                started = time.monotonic()
                assert client.get("/healthz").status_code == 200
                assert time.monotonic() - started < 2
            for connection in slow:  # closed by the server once the deadline passed
                assert connection.recv(1024) == b""
        finally:
            for connection in slow:
                connection.close()


def test_the_api_key_from_a_file_or_the_environment(tmp_path: Path) -> None:
    key_file = tmp_path / "key"
    key_file.write_text("s3cret\n")
    assert read_api_key(None, key_file) == "s3cret"
    assert read_api_key("k", None) == "k"
    with pytest.raises(InputError, match="not both"):
        read_api_key("k", key_file)
    with pytest.raises(InputError, match="cannot read"):
        read_api_key(None, tmp_path / "missing")
    key_file.write_text("\n")
    with pytest.raises(InputError, match="is empty"):
        read_api_key(None, key_file)
    done = subprocess.run(
        [sys.executable, "-m", "sdtrt.cli", "serve", str(tmp_path)],
        capture_output=True, text=True, timeout=60, env={"SDTRT_API_KEY": " ", "PATH": ""},
    )  # fmt: skip
    assert done.returncode == 1 and "--api-key must not be empty" in done.stderr
