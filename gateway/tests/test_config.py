from __future__ import annotations

from pathlib import Path

import pytest

from navign_gateway.config import ConfigError, load_config

MINIMAL = """
server_url = "https://navign.example.com/"
entity_id = "mall-demo"
orchestrator_id = "gw-mall-demo-1"
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "gateway.toml"
    path.write_text(text)
    return path


def test_minimal_config_with_defaults(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, MINIMAL), env={})
    assert config.server_url == "https://navign.example.com"
    assert config.listen.grpc == "0.0.0.0:50051"
    assert config.listen.http == "0.0.0.0:8080"
    assert config.heartbeat_interval == 60
    assert config.ble.max_connections == 3
    assert config.identity_key_path == Path("/var/lib/navign/identity.pem")


def test_environment_overrides(tmp_path: Path) -> None:
    env = {
        "NAVIGN_GATEWAY_HEARTBEAT_INTERVAL": "30",
        "NAVIGN_GATEWAY_LISTEN__GRPC": "127.0.0.1:50052",
        "NAVIGN_GATEWAY_BLE__ENABLED": "false",
        "NAVIGN_GATEWAY_DATA_DIR": str(tmp_path),
        "UNRELATED": "x",
    }
    config = load_config(write(tmp_path, MINIMAL), env=env)
    assert config.heartbeat_interval == 30
    assert config.listen.grpc == "127.0.0.1:50052"
    assert config.ble.enabled is False
    assert config.data_dir == tmp_path


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "server_url: required key is missing"),
        (MINIMAL + "colour = 'blue'\n", "colour: unknown key"),
        (MINIMAL + "heartbeat_interval = 1\n", "heartbeat_interval: Input should be greater"),
        (MINIMAL + "heartbeat_interval = 'often'\n", "heartbeat_interval: Input should be a valid"),
        (MINIMAL.replace("mall-demo", "mall demo"), "entity_id: must be 1-64"),
        (MINIMAL.replace("https://", "ftp://"), "server_url: must be an http(s) URL"),
        (MINIMAL.replace("https://", "http://"), "plain http to a non-loopback server"),
        (MINIMAL + "[listen]\ngrpc = '50051'\n", "listen.grpc: must be host:port"),
        (MINIMAL + "ca_bundle = '/nonexistent/ca.pem'\n", "ca_bundle: /nonexistent/ca.pem is not"),
        ("server_url = [", "not valid TOML"),
    ],
)
def test_invalid_configs_name_the_key(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, text), env={})
    assert message in str(info.value)
    assert "\n" not in str(info.value).strip()


def test_plain_http_allowed_to_loopback_or_when_asked(tmp_path: Path) -> None:
    loopback = MINIMAL.replace("https://navign.example.com/", "http://127.0.0.1:8000")
    assert load_config(write(tmp_path, loopback), env={}).server_url == "http://127.0.0.1:8000"
    lab = MINIMAL.replace("https://", "http://") + "allow_insecure_http = true\n"
    assert load_config(write(tmp_path, lab), env={}).allow_insecure_http


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no such file"):
        load_config(tmp_path / "absent.toml", env={})


def test_gateway_never_depends_on_fastapi_or_pymongo() -> None:
    """DESIGN.md decision 1: the Pi's dependency closure, read from the lock, has neither."""
    import tomllib

    lock = tomllib.loads((Path(__file__).resolve().parents[2] / "uv.lock").read_text())
    packages = {p["name"]: p for p in lock["package"]}
    seen: set[str] = set()
    todo = ["navign-gateway"]
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        package = packages[name]
        todo.extend(d["name"] for d in package.get("dependencies", []))
    assert "aiosqlite" in seen  # the walk really followed the gateway's dependencies
    assert not seen & {"fastapi", "pymongo", "starlette", "uvicorn", "motor"}


def test_release_keys_inline_hex_or_pem_file(tmp_path: Path) -> None:
    from navign_proto import keys

    key = keys.generate_private_key().public_key()
    pem_file = tmp_path / "release.pub.pem"
    pem_file.write_text(keys.public_key_to_pem(key))
    point = keys.public_key_to_point(key).hex()
    text = MINIMAL + f'\n[firmware]\nrelease_public_keys = ["{point}", "{pem_file}"]\n'
    config = load_config(write(tmp_path, text), env={})
    assert [keys.key_id(k) for k in config.firmware.release_keys()] == [keys.key_id(key)] * 2


@pytest.mark.parametrize(
    ("entry", "message"),
    [("/no/such/key.pem", "cannot read the key file"), ("04" + "00" * 64, "not a P-256")],
)
def test_a_bad_release_key_is_a_config_error(tmp_path: Path, entry: str, message: str) -> None:
    text = MINIMAL + f'\n[firmware]\nrelease_public_keys = ["{entry}"]\n'
    with pytest.raises(ConfigError, match=message):
        load_config(write(tmp_path, text), env={})


def test_mdns_interfaces_and_instance(tmp_path: Path) -> None:
    default = load_config(write(tmp_path, MINIMAL), env={}).mdns
    assert (default.enabled, default.interfaces, default.instance) == (True, [], None)
    text = MINIMAL + '\n[mdns]\ninterfaces = ["10.77.0.1", "192.168.4.2"]\ninstance = "Gate B"\n'
    mdns = load_config(write(tmp_path, text), env={}).mdns
    assert (mdns.interfaces, mdns.instance) == (["10.77.0.1", "192.168.4.2"], "Gate B")
    env = {"NAVIGN_GATEWAY_MDNS__INTERFACES": '["10.0.0.7"]'}
    assert load_config(write(tmp_path, MINIMAL), env=env).mdns.interfaces == ["10.0.0.7"]


@pytest.mark.parametrize(
    ("table", "message"),
    [
        ('interfaces = ["eth0"]', "mdns.interfaces: 'eth0' is not an IPv4 address"),
        ('interfaces = ["fe80::1"]', "mdns.interfaces: 'fe80::1' is not an IPv4 address"),
        ('interfaces = ["0.0.0.0"]', "mdns.interfaces: 0.0.0.0 cannot be an interface address"),
        ('interfaces = ["224.0.0.251"]', "mdns.interfaces: 224.0.0.251 cannot be an interface"),
        ('interfaces = ["10.0.0.1", "10.0.0.1"]', "mdns.interfaces: lists an address twice"),
        ('interfaces = "10.0.0.1"', "mdns.interfaces: Input should be a valid list"),
        ('instance = ""', "mdns.instance: must be 1-63 bytes"),
        (f'instance = "{"g" * 64}"', "mdns.instance: must be 1-63 bytes"),
        ('instance = " gate"', "mdns.instance: must be 1-63 bytes"),
        ('instance = "gate.b"', "mdns.instance: must not contain dots"),
        ('instance = "gate\\u0007"', "mdns.instance: must not contain dots or control"),
        ("enabled = true\nzone = 1", "mdns.zone: unknown key"),
    ],
)
def test_bad_mdns_settings_name_the_key(tmp_path: Path, table: str, message: str) -> None:
    path = write(tmp_path, MINIMAL + f"\n[mdns]\n{table}\n")
    with pytest.raises(ConfigError) as info:
        load_config(path, env={})
    assert message in str(info.value)
    assert "\n" not in str(info.value).strip()
