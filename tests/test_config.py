"""Config parsing in-process: the shared TOML reader, the edge server's settings and training's."""

import pytest

from splitserve.edge_server.config import BatchingConfig, ServerConfigError, build_config, model_batching
from splitserve.tomlconfig import fill, read_toml
from splitserve.training.config import ConfigError, load_config, parse_config


def test_fill_checks_keys_and_types_and_recurses_into_tables():
    data = {"port": 7, "max-streams": 3.0, "batching": {"max_delay_ms": 1}}
    cfg = fill(build_config(None, {}), data, "t", ServerConfigError)
    assert (cfg.port, cfg.max_streams, cfg.batching.max_delay_ms) == (7, 3, 1.0)
    assert isinstance(cfg.max_streams, int) and isinstance(cfg.batching.max_delay_ms, float)
    for data, message in (
        ({"prot": 1}, r"t: unknown keys \['prot'\]; known: \[.*'port'"),
        ({"port": "7"}, "t: port = '7': expected int"),
        ({"port": 7.5}, "t: port = 7.5: expected int"),  # a whole number only
        ({"port": True}, "t: port = True: expected int"),  # a bool is not a number here
        ({"public_health": 1}, "t: public_health = 1: expected bool"),
        ({"batching": 3}, r"t \[batching\] must be a table"),
        ({"batching": {"max_batch": "big"}}, r"t \[batching\]: max_batch = 'big': expected int"),
    ):
        with pytest.raises(ServerConfigError, match=message):
            fill(build_config(None, {}), data, "t", ServerConfigError)


def test_read_toml_names_the_file(tmp_path):
    with pytest.raises(ConfigError, match="config file not found"):
        read_toml(tmp_path / "none.toml", ConfigError)
    (tmp_path / "bad.toml").write_text("port = = 1")
    with pytest.raises(ServerConfigError, match=r"bad\.toml: not valid TOML"):
        read_toml(tmp_path / "bad.toml", ServerConfigError)


def test_server_flags_override_the_file_which_overrides_defaults(tmp_path):
    f = tmp_path / "server.toml"
    f.write_text('port = 6000\nmax_streams = 10\nlog_format = "json"\n[batching]\nmax_batch = 4\nmax_queue = 50\n')
    cfg = build_config(str(f), {"max_streams": 20, "max_batch": 8})
    assert (cfg.port, cfg.max_streams, cfg.log_format) == (6000, 20, "json")
    assert (cfg.batching.max_batch, cfg.batching.max_queue) == (8, 50)
    assert cfg.decode_threads == 4  # untouched default


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"port": 70000}, "port must be within"),
        ({"max_batch": 0}, "max_batch must be >= 1"),
        ({"max_frame_bytes": 10, "max_message_bytes": 5}, "cannot exceed max_message_bytes"),
        ({"tls_cert": "c.pem"}, "needs both"),
        ({"log_format": "xml"}, "text or json"),
        ({"tokens": "/no/such/tokens"}, "tokens: file not found"),
        ({"max_connection_age": -1}, "max_connection_age must be >= 0"),
    ],
)
def test_server_settings_are_validated(overrides, message):
    with pytest.raises(ServerConfigError, match=message):
        build_config(None, dict(overrides))


def test_max_connection_age_reaches_grpc_with_a_short_grace():
    from splitserve.edge_server.server import channel_options

    assert "grpc.max_connection_age_ms" not in dict(channel_options(build_config(None, {})))
    options = dict(channel_options(build_config(None, {"max_connection_age": 60})))
    assert options["grpc.max_connection_age_ms"] == 60_000
    assert options["grpc.max_connection_age_grace_ms"] == 2_000


def test_model_batching_layers_defaults_model_file_and_flags(tmp_path):
    default = BatchingConfig(max_batch=16, max_delay_ms=5.0, max_queue=100)
    assert model_batching(default, tmp_path, {}) == default
    (tmp_path / "config.toml").write_text("[batching]\nmax_batch = 2\nmax_delay_ms = 0\n")
    assert model_batching(default, tmp_path, {"max_delay_ms": 1.5}) == BatchingConfig(2, 1.5, 100)
    assert default.max_batch == 16  # the server's default is copied, never changed
    (tmp_path / "config.toml").write_text("[batching]\nmax_bach = 2\n")
    with pytest.raises(ServerConfigError, match=r"config\.toml \[batching\]: unknown keys \['max_bach'\]"):
        model_batching(default, tmp_path, {})


def test_training_config_parses_every_section(tmp_path):
    f = tmp_path / "t.toml"
    f.write_text(
        'seed = 3\ndevice = "cpu"\n[model]\nname = "x"\n[data]\ninput_shape = [3, 8, 8]\nmean = [0, 0, 0]\n'
        'std = [1, 1, 1]\n[student]\nfractions = [0.5, 1.0]\n[stage1]\nbeta = [0.01, 0.02]\nepochs = 2\n'
    )
    cfg = load_config(f)
    assert (cfg.seed, cfg.device, cfg.model.name, cfg.stage1.epochs) == (3, "cpu", "x", 2)
    assert cfg.data.mean == [0, 0, 0] and cfg.stage1.beta == [0.01, 0.02]
    assert cfg.stage2 == type(cfg.stage2)()  # sections left out keep their defaults
    f.write_text("[stage1]\nepochs = 2.5\n")
    with pytest.raises(ConfigError, match=r"t\.toml: config \[stage1\]: epochs = 2\.5: expected int"):
        load_config(f)


def test_training_config_rejects_unknown_sections_and_wrong_shapes():
    with pytest.raises(ConfigError, match="unknown config keys"):
        parse_config({"optimiser": {}})
    with pytest.raises(ConfigError, match=r"config \[data\] must be a table"):
        parse_config({"data": "fashion-mnist"})
    with pytest.raises(ConfigError, match=r"seed = 'one': expected int"):
        parse_config({"seed": "one"})
    with pytest.raises(ConfigError, match="mean and std need one value per input channel"):
        parse_config({"data": {"input_shape": [3, 8, 8]}})
