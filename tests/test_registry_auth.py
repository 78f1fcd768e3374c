"""Registry auth and the errors a user can cause, against real registries (htpasswd and bearer-token auth).

Every mistake ends in one line on stderr and exit 1, leaves the store as it was, and never shows a password.
"""

import base64
import json
import os
import stat

import pytest

from ollama_img.store import Store
from ollama_img.transfer.registry.auth import Credentials, find_credentials, parse_challenge
from ollama_img.transfer.registry.client import is_loopback, plain_http_allowed
from ollama_img.transfer.registry.pull import pull_model
from ollama_img.transfer.registry.push import push_model
from tests.conftest import snapshot
from tests.fixtures.registry import PASSWORD, REFRESH_TOKEN, USER, Registry, free_port
from tests.fixtures.small_model import write_small_model

ALICE = Credentials("test", username=USER, password=PASSWORD)


@pytest.fixture
def no_credentials(monkeypatch, tmp_path):
    """No registry credentials anywhere: not in the environment, no docker config."""
    for variable in ("OLLAMA_IMG_REGISTRY_USER", "OLLAMA_IMG_REGISTRY_PASSWORD", "OLLAMA_IMG_REGISTRY_TOKEN"):
        monkeypatch.delenv(variable, raising=False)
    monkeypatch.setenv("DOCKER_CONFIG", str(tmp_path / "no-docker-config"))


@pytest.fixture
def source(tmp_path):
    return Store(tmp_path / "source")


def fails_in_one_line(cli, store_root, *args) -> str:
    """Run the CLI; it must fail with exactly one error line (the last on stderr), store unchanged."""
    before = snapshot(store_root)
    result = cli(*args)
    assert result.code == 1, result
    lines = result.err.strip().splitlines()
    errors = [line for line in lines if line.startswith("Error: ")]
    assert errors == lines[-1:], result.err
    assert PASSWORD not in result.err + result.out
    assert snapshot(store_root) == before
    return errors[0]


@pytest.mark.parametrize("kind", ["htpasswd", "token"])
def test_push_and_pull_with_credentials_from_the_environment(
    kind, auth_registry, token_registry, source, tmp_path, cli, monkeypatch
):
    registry = auth_registry if kind == "htpasswd" else token_registry
    name = f"{registry.host}/team/secret-{kind}:v1"
    write_small_model(source, name, seed=21)
    monkeypatch.setenv("OLLAMA_IMG_MODELS", str(source.root))
    monkeypatch.setenv("OLLAMA_IMG_REGISTRY_USER", USER)
    monkeypatch.setenv("OLLAMA_IMG_REGISTRY_PASSWORD", PASSWORD)
    pushed = cli("push", name)
    assert pushed.code == 0, pushed.err
    assert pushed.out.startswith(f"pushed '{name}'") and PASSWORD not in pushed.out + pushed.err

    dest = tmp_path / "dest"
    monkeypatch.setenv("OLLAMA_IMG_MODELS", str(dest))
    pulled = cli("pull", name)
    assert pulled.code == 0, pulled.err
    assert Store(dest).manifest(name).digest == source.manifest(name).digest
    if kind == "token":  # the bearer challenge was answered by the token service, for push and for pull
        scopes = [s for r in registry.token_service.requests for s in r.get("scopes", [])]
        assert (
            "repository:team/secret-token:pull,push" in scopes
            and "repository:team/secret-token:pull" in scopes
        )


def test_credentials_from_docker_config(auth_registry, source, tmp_path, monkeypatch, no_credentials):
    name = f"{auth_registry.host}/team/docker-login:v1"
    write_small_model(source, name, seed=22)
    config = tmp_path / "docker"
    config.mkdir()
    auth = base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
    (config / "config.json").write_text(
        json.dumps({"auths": {f"http://{auth_registry.host}/v2/": {"auth": auth}}})
    )
    monkeypatch.setenv("DOCKER_CONFIG", str(config))
    push_model(source, name)
    assert pull_model(Store(tmp_path / "dest"), name).manifest.digest == source.manifest(name).digest


def test_an_identity_token_from_docker_config_is_exchanged_for_a_bearer_token(
    token_registry, source, tmp_path, monkeypatch, no_credentials
):
    name = f"{token_registry.host}/team/identity:v1"
    write_small_model(source, name, seed=24)
    config = tmp_path / "docker"
    config.mkdir()
    auth = base64.b64encode(f"{USER}:".encode()).decode()
    entry = {"auth": auth, "identitytoken": REFRESH_TOKEN}
    (config / "config.json").write_text(json.dumps({"auths": {token_registry.host: entry}}))
    monkeypatch.setenv("DOCKER_CONFIG", str(config))
    push_model(source, name)
    assert pull_model(Store(tmp_path / "dest"), name).manifest.digest == source.manifest(name).digest
    grants = [r for r in token_registry.token_service.requests if r.get("grant") == "refresh_token"]
    assert grants and all(r["granted"] for r in grants)


def test_credentials_from_a_docker_credential_helper(tmp_path, monkeypatch, no_credentials):
    """docker's credHelpers: the helper program is asked with the server on stdin, answers JSON."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    helper = bin_dir / "docker-credential-testhelper"
    helper.write_text(
        "#!/bin/sh\nread server\n"
        'if [ "$server" = "registry.example:5000" ]; then\n'
        '  echo \'{"ServerURL": "registry.example:5000", "Username": "bob", "Secret": "s3cret"}\'\n'
        "else\n  echo 'credentials not found in native keychain'; exit 1\nfi\n"
    )
    helper.chmod(helper.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    config = tmp_path / "docker"
    config.mkdir()
    (config / "config.json").write_text(json.dumps({"credHelpers": {"registry.example:5000": "testhelper"}}))
    monkeypatch.setenv("DOCKER_CONFIG", str(config))
    found = find_credentials("registry.example:5000")
    assert (found.username, found.password, found.source) == ("bob", "s3cret", "docker-credential-testhelper")
    assert "s3cret" not in repr(found)
    assert find_credentials("other.example") is None


def test_wrong_password_is_one_line_naming_the_user_not_the_password(
    auth_registry, token_registry, tmp_path, cli, monkeypatch
):
    monkeypatch.setenv("OLLAMA_IMG_MODELS", str(tmp_path / "store"))
    monkeypatch.setenv("OLLAMA_IMG_REGISTRY_USER", USER)
    monkeypatch.setenv("OLLAMA_IMG_REGISTRY_PASSWORD", PASSWORD[::-1])
    for registry in (auth_registry, token_registry):
        line = fails_in_one_line(cli, tmp_path / "store", "pull", f"{registry.host}/team/anything:v1")
        assert "refused the credentials of user 'alice' from OLLAMA_IMG_REGISTRY_USER" in line
        assert PASSWORD[::-1] not in line


def test_no_credentials_says_how_to_give_them(
    auth_registry, token_registry, tmp_path, cli, monkeypatch, no_credentials
):
    monkeypatch.setenv("OLLAMA_IMG_MODELS", str(tmp_path / "store"))
    for registry in (auth_registry, token_registry):
        line = fails_in_one_line(cli, tmp_path / "store", "pull", f"{registry.host}/team/anything:v1")
        assert (
            f"registry {registry.host} requires authentication" in line and "OLLAMA_IMG_REGISTRY_USER" in line
        )


def test_unknown_model_and_registry_down_are_one_line_each(
    registry, tmp_path, cli, monkeypatch, no_credentials
):
    root = tmp_path / "store"
    monkeypatch.setenv("OLLAMA_IMG_MODELS", str(root))
    line = fails_in_one_line(cli, root, "pull", f"{registry.host}/team/no-such-model:v1")
    assert (
        line == f"Error: model '{registry.host}/team/no-such-model:v1' not found on registry {registry.host}"
    )
    down = f"127.0.0.1:{free_port()}"
    line = fails_in_one_line(cli, root, "pull", f"{down}/team/x:v1")
    assert line == f"Error: cannot reach registry {down}: connection refused"
    assert snapshot(root) is None  # no store was made for any of them


def test_push_errors_leave_the_store_unchanged(registry, tmp_path, cli, monkeypatch, no_credentials):
    root = tmp_path / "store"
    monkeypatch.setenv("OLLAMA_IMG_MODELS", str(root))
    write_small_model(Store(root), "team/local:v1")
    line = fails_in_one_line(cli, root, "push", f"{registry.host}/team/not-in-the-store:v1")
    assert "not found" in line
    down = f"127.0.0.1:{free_port()}"
    Store(root).copy("team/local:v1", f"{down}/team/local:v1")
    line = fails_in_one_line(cli, root, "push", f"{down}/team/local:v1")
    assert line == f"Error: cannot reach registry {down}: connection refused"


def this_machine_address() -> str | None:
    """A non-loopback address of this machine (found without sending anything), or None."""
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.connect(("10.255.255.255", 1))
            address = s.getsockname()[0]
        except OSError:
            return None
    return None if address.startswith("127.") else address


def test_plain_http_needs_insecure_unless_the_registry_is_on_loopback(
    tmp_path, source, cli, monkeypatch, no_credentials
):
    address = this_machine_address()
    if address is None:
        pytest.skip("this machine has no non-loopback address to put a registry on")
    registry = Registry(tmp_path / "lan-registry", bind=address).start()
    try:
        name = f"{registry.host}/team/lan:v1"
        write_small_model(source, name, seed=23)
        monkeypatch.setenv("OLLAMA_IMG_MODELS", str(source.root))
        line = fails_in_one_line(cli, source.root, "push", name)
        assert f"registry {registry.host} does not answer over HTTPS" in line and "--insecure" in line
        assert cli("push", name, "--insecure").code == 0
        monkeypatch.setenv("OLLAMA_IMG_MODELS", str(tmp_path / "dest"))
        fails_in_one_line(cli, tmp_path / "dest", "pull", name)
        assert cli("pull", name, "--insecure").code == 0
    finally:
        registry.close()


@pytest.mark.parametrize(
    ("host", "loopback"),
    [
        ("localhost:5000", True),
        ("registry.localhost", True),
        ("127.0.0.1:5000", True),
        ("127.8.9.10", True),
        ("localhost.example.com", False),
        ("10.0.0.5:5000", False),
        ("registry.example:5000", False),
        ("192.0.2.2", False),
    ],
)
def test_which_hosts_may_use_plain_http(host, loopback):
    assert is_loopback(host) is loopback
    assert plain_http_allowed(host, insecure=False) is loopback
    assert plain_http_allowed(host, insecure=True) is True


def test_challenges_are_parsed_with_quoted_commas():
    challenge = parse_challenge(
        'Bearer realm="https://auth.example/token",service="registry.example",'
        'scope="repository:a/b:pull,push repository:c/d:pull",error="insufficient_scope"'
    )
    assert challenge.scheme == "bearer"
    assert challenge.params == {
        "realm": "https://auth.example/token",
        "service": "registry.example",
        "scope": "repository:a/b:pull,push repository:c/d:pull",
        "error": "insufficient_scope",
    }
    assert parse_challenge('Basic realm="x"').params == {"realm": "x"}


def test_flags_that_only_fit_hugging_face_are_refused_for_registries(tmp_path, cli, monkeypatch):
    root = tmp_path / "store"
    monkeypatch.setenv("OLLAMA_IMG_MODELS", str(root))
    line = fails_in_one_line(cli, root, "pull", "registry.example:5000/team/x:v1", "--as", "y")
    assert "--as and --quantize are for Hugging Face models" in line
    line = fails_in_one_line(cli, root, "push", "hf.co/org/model:latest")
    assert "Hugging Face is not one" in line
