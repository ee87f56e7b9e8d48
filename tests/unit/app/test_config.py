"""Config: defaults, a full example, each validation error, unknown-key suggestions."""
from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from neuroread.node.config import Config, ConfigError, load_config, parse_config
from support.tiny_model import SPEC

FULL = """
node:
  ae_title: NEURO1
  host: 0.0.0.0
  port: 11113
  require_called_ae: false
  max_associations: 4
  peers:
    - {ae_title: PACS, address: 10.0.0.5}
    - {address: 192.168.0.0/16}
  tls: {cert: certs/node.pem, key: certs/node.key, ca: /etc/ca.pem}
storage:
  root: data
  spool: /srv/spool
assemble: {stable_age_s: 12.5, early_completion: false, study_quiet_s: 40}
routes:
  - {name: ct, match: {modality: CT}, model: tiny-test, slot: ct, destinations: [pacs]}
models:
  tiny-test: {weights: w/tiny.pt, device: "cuda:0", thresholds: {finding: 0.3}}
destinations:
  pacs: {type: dicom, host: pacs.local, port: 104, called_ae: PACS, dimse_timeout: 90}
  out: {type: folder, path: results}
  web: {type: stowrs, url: "https://pacs.local/dicomweb"}
  orth: {type: orthanc, url: "http://localhost:8042"}
queue: {backend: embedded, broker: "redis://localhost:6379/0", database: "postgresql://u@db/neuro", workers: 3, torch_threads: 2}
dicomweb:
  port: 8081
  users: {pacs: "s3cret", modality: "pw:with:colons"}
  tokens: [tok-1234.abcd]
  max_body_mb: 256
  tls: {cert: certs/web.pem, key: certs/web.key}
"""


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "neuroread.yaml"
    path.write_text(text)
    return path


def test_defaults_work_on_one_machine(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cfg = load_config(None)
    assert cfg.node.ae_title == "NEUROREAD" and cfg.node.port == 11112 and cfg.node.peers == ()
    assert cfg.node.require_called_ae and cfg.node.tls is None and cfg.node.max_associations == 10
    assert cfg.storage.spool == tmp_path / "neuroread-data" / "spool"
    assert cfg.storage.outbox == tmp_path / "neuroread-data" / "outbox"
    assert cfg.queue.database == f"sqlite:///{tmp_path}/neuroread-data/state.db"
    assert (cfg.queue.backend, cfg.queue.workers, cfg.queue.torch_threads) == ("embedded", 1, None)
    assert cfg.assemble.stable_age_s == 30 and cfg.assemble.early_completion and cfg.assemble.study_quiet_s is None
    assert cfg.routes == () and cfg.models == {} and cfg.destinations == {} and cfg.dicomweb is None
    assert load_config(_write(tmp_path, "")) == cfg  # an empty file is all defaults too


def test_full_example(tmp_path):
    cfg = load_config(_write(tmp_path, FULL))
    assert cfg.node.host == "0.0.0.0" and not cfg.node.require_called_ae
    assert [(p.ae_title, p.address) for p in cfg.node.peers] == [("PACS", "10.0.0.5"), (None, "192.168.0.0/16")]
    assert cfg.node.tls.cert == tmp_path / "certs/node.pem" and cfg.node.tls.ca == Path("/etc/ca.pem")
    assert cfg.storage.root == tmp_path / "data" and cfg.storage.spool == Path("/srv/spool")
    assert cfg.storage.outbox == tmp_path / "data" / "outbox"
    assert cfg.assemble.stable_age_s == 12.5 and not cfg.assemble.early_completion
    assert cfg.assemble.study_quiet_s == 40
    assert cfg.routes[0]["model"] == "tiny-test"
    model = cfg.models["tiny-test"]
    assert (model.weights, model.device, model.thresholds) == (tmp_path / "w/tiny.pt", "cuda:0", {"finding": 0.3})
    assert cfg.destinations["pacs"]["dimse_timeout"] == 90  # passed through for the deliver stage
    assert cfg.destinations["out"]["path"] == str(tmp_path / "results")
    assert cfg.queue.broker.startswith("redis://") and cfg.queue.workers == 3 and cfg.queue.torch_threads == 2
    web = cfg.dicomweb
    assert web.port == 8081 and web.base_path == "/dicomweb" and web.host == "127.0.0.1"
    assert web.users == {"pacs": "s3cret", "modality": "pw:with:colons"} and web.tokens == ("tok-1234.abcd",)
    assert (web.max_body_mb, web.max_requests, web.allow_anonymous) == (256, 4, False)
    assert web.tls.cert == tmp_path / "certs/web.pem" and web.tls.ca is None
    assert "s3cret" not in repr(cfg) and "tok-1234" not in repr(cfg)  # secrets stay out of logs
    cfg.check_models({"tiny-test": SPEC})
    with pytest.raises(AttributeError):
        cfg.node.port = 1  # frozen


def test_to_dict_round_trips(tmp_path):
    cfg = load_config(_write(tmp_path, FULL))
    text = yaml.safe_dump(cfg.to_dict())
    assert parse_config(yaml.safe_load(text), tmp_path) == cfg


@pytest.mark.parametrize("text,message", [
    ("node: {port: abc}", "config: node.port: must be an integer 1-65535, got 'abc'"),
    ("node: {port: 70000}", "config: node.port: must be an integer 1-65535, got 70000"),
    ("node: {prot: 104}", "config: node: unknown key 'prot' (did you mean 'port'?)"),
    ("nodes: {}", "config: unknown key 'nodes' (did you mean 'node'?)"),
    ("node: {ae_title: THIS_IS_FAR_TOO_LONG}", "config: node.ae_title: must be an AE title of 1-16 characters"),
    ("node: {max_associations: 0}", "config: node.max_associations: must be an integer >= 1, got 0"),
    ("node: {require_called_ae: yes please}", "config: node.require_called_ae: must be true or false, got 'yes please'"),
    ("node: {peers: [{address: not-an-ip}]}", "config: node.peers[0].address: must be an IP address or network"),
    ("node: {peers: [{}]}", "config: node.peers[0]: give ae_title, address or both"),
    ("node: {peers: [{ae_title: PACS, adress: 10.0.0.1}]}", "config: node.peers[0]: unknown key 'adress' (did you mean 'address'?)"),
    ("node: {tls: {cert: a.pem}}", "config: node.tls: missing key 'key'"),
    ("node: [1, 2]", "config: node: must be a mapping, got list"),
    ("assemble: {stable_age_s: -1}", "config: assemble.stable_age_s: must be a number of seconds > 0, got -1"),
    ("assemble: {stable_age_s: 10, study_quiet_s: 5}", "config: assemble.study_quiet_s: must be at least "
                                                       "assemble.stable_age_s (10 s)"),
    ("assemble: {study_quiet_s: soon}", "config: assemble.study_quiet_s: must be a number of seconds > 0 or null"),
    ("routes: {a: 1}", "config: routes: must be a list of routes, got dict"),
    ("routes: [rule]", "config: routes[0]: must be a mapping, got 'rule'"),
    ("models: {m: {device: gpu}}", "config: models.m.device: must be cpu, cuda, cuda:N or mps, got 'gpu'"),
    ("models: {m: {thresholds: {any: 1.0}}}", "config: models.m.thresholds.any: must be a number in (0, 1), got 1.0"),
    ("models: {m: {weigths: x.pt}}", "config: models.m: unknown key 'weigths' (did you mean 'weights'?)"),
    ("destinations: {p: {host: x}}", "config: destinations.p: missing key 'type' (one of dicom, folder, stowrs, orthanc)"),
    ("destinations: {p: {type: ftp}}", "config: destinations.p.type: must be one of dicom, folder, stowrs, orthanc, got 'ftp'"),
    ("destinations: {p: {type: dicom, host: h, port: 104}}", "config: destinations.p: a dicom destination needs 'called_ae'"),
    ("destinations: {p: {type: dicom, host: h, port: x, called_ae: A}}", "config: destinations.p.port: must be an integer 1-65535, got 'x'"),
    ("destinations: {f: {type: folder}}", "config: destinations.f: a folder destination needs 'path'"),
    ("destinations: {w: {type: stowrs, url: pacs.local}}", "config: destinations.w.url: must be an http(s) URL, got 'pacs.local'"),
    ("queue: {backend: rabbit}", "config: queue.backend: must be one of embedded, celery, got 'rabbit'"),
    ("queue: {backend: celery}", "config: queue.broker: the celery backend needs a broker: a Redis URL"),
    ("queue: {backend: celery, broker: 'amqp://localhost'}", "config: queue.broker: must be a Redis URL like "
                                                             "redis://127.0.0.1:6379/0"),
    ("queue: {lease_s: 1}", "config: queue.lease_s: must be at least 3 s"),
    ("queue: {sweep_s: 0}", "config: queue.sweep_s: must be a number of seconds > 0, got 0"),
    ("queue: {max_attempts: 0}", "config: queue.max_attempts: must be an integer >= 1, got 0"),
    ("queue: {retry_s: 7200}", "config: queue.retry_s: must be at most 3600 s"),
    ("status: {host: 0.0.0.0}", "config: status.users: the status page listens on 0.0.0.0, beyond loopback: "
                                "it needs a login"),
    ("status: {port: x}", "config: status.port: must be an integer 0-65535, got 'x'"),
    ("status: {user: {a: b}}", "config: status: unknown key 'user' (did you mean 'users'?)"),
    ("queue: {workers: 0}", "config: queue.workers: must be an integer >= 1, got 0"),
    ("queue: {database: state.db}", "config: queue.database: must be an SQLAlchemy URL"),
    ("queue: {worker: 2}", "config: queue: unknown key 'worker' (did you mean 'workers'?)"),
    ("dicomweb: {base_path: dicomweb, tokens: [t]}", "config: dicomweb.base_path: must be a path starting with '/'"),
    ("dicomweb: {base_path: /dicomweb/, tokens: [t]}", "config: dicomweb.base_path: must be a path starting with '/', "
                                                      "without a trailing '/'"),
    ("dicomweb: {port: 8081}", "config: dicomweb.users: the STOW-RS receiver needs credentials: set dicomweb.users "
                               "({name: password}) and/or dicomweb.tokens ([token]) (or their *_env forms), "
                               "or allow_anonymous: true"),
    ("dicomweb: {}", "config: dicomweb.users: the STOW-RS receiver needs credentials"),
    ("dicomweb: {users: {}}", "config: dicomweb.users: the STOW-RS receiver needs credentials"),
    ("dicomweb: {users: {'a:b': pw}}", "config: dicomweb.users: must be a mapping user name -> password "
                                       "(non-empty strings, names without ':'), got dict"),
    ("dicomweb: {users: {pacs: 1234}}", "config: dicomweb.users: must be a mapping user name -> password"),
    ("dicomweb: {users: [pacs]}", "config: dicomweb.users: must be a mapping user name -> password"),
    ("dicomweb: {tokens: 'abc'}", "config: dicomweb.tokens: must be a list of bearer tokens"),
    ("dicomweb: {tokens: ['has space']}", "config: dicomweb.tokens: must be a list of bearer tokens"),
    ("dicomweb: {tokens: [t], allow_anonymous: true}", "config: dicomweb.allow_anonymous: true while users or tokens "
                                                       "are set"),
    ("dicomweb: {allow_anonymous: yes please}", "config: dicomweb.allow_anonymous: must be true or false"),
    ("dicomweb: {tokens: [t], max_body_mb: 0}", "config: dicomweb.max_body_mb: must be an integer >= 1, got 0"),
    ("dicomweb: {tokens: [t], max_requests: many}", "config: dicomweb.max_requests: must be an integer >= 1, "
                                                    "got 'many'"),
    ("dicomweb: {tokens: [t], tls: {cert: a.pem}}", "config: dicomweb.tls: missing key 'key'"),
    ("dicomweb: {tokens: [t], tls: {cert: a.pem, key: a.key, cert_file: c}}",
     "config: dicomweb.tls: unknown key 'cert_file' (did you mean 'cert'?)"),
    ("dicomweb: {user: {pacs: pw}}", "config: dicomweb: unknown key 'user' (did you mean 'users'?)"),
    ("dicomweb: {users_env: {pacs: 'not a name'}}", "config: dicomweb.users_env: must be a mapping user name -> "
                                                    "environment variable name"),
    ("dicomweb: {tokens_env: TOKEN}", "config: dicomweb.tokens_env: must be a list of environment variable names"),
    ("dicomweb: {users: {pacs: pw}, users_env: {pacs: PW}}", "config: dicomweb.users_env: user 'pacs' is in "
                                                             "dicomweb.users too"),
    ("dicomweb: {tokens_env: [T], allow_anonymous: true}", "config: dicomweb.allow_anonymous: true while users"),
    ("deliver: {interval_s: 0}", "config: deliver.interval_s: must be a number of seconds > 0, got 0"),
    ("deliver: {retry_factor: 0.5}", "config: deliver.retry_factor: must be a number >= 1, got 0.5"),
    ("deliver: {retry_base_s: 60, retry_cap_s: 10}", "config: deliver.retry_cap_s: must be >= retry_base_s (60"),
    ("deliver: {retry: 3}", "config: deliver: unknown key 'retry'"),
    ("plugins: [tiny_model]", "config: plugins: must be a list of 'package.module:NAME' strings"),
    ("plugins: support.tiny_model:ENTRY", "config: plugins: must be a list of 'package.module:NAME' strings"),
    ("node: {port: 1", "is not valid YAML"),
    ("- just\n- a list", "config: top level: must be a mapping, got list"),
])
def test_each_error_names_key_and_problem(tmp_path, text, message):
    with pytest.raises(ConfigError) as err:
        load_config(_write(tmp_path, text))
    assert message in str(err.value)
    assert isinstance(err.value, ValueError)


def test_dicomweb_anonymous_and_defaults(tmp_path):
    web = load_config(_write(tmp_path, "dicomweb: {allow_anonymous: true, base_path: /}")).dicomweb
    assert (web.allow_anonymous, web.users, web.tokens, web.base_path) == (True, {}, (), "/")
    assert (web.max_body_mb, web.max_requests, web.tls) == (512, 4, None)


def test_dicomweb_secrets_from_environment_names(tmp_path, monkeypatch):
    monkeypatch.delenv("STOW_PW", raising=False)  # read when the receiver is built, not here
    web = load_config(_write(tmp_path, "dicomweb: {users_env: {pacs: STOW_PW}, tokens_env: [STOW_TOKEN]}")).dicomweb
    assert (web.users_env, web.tokens_env, web.users, web.tokens) == ({"pacs": "STOW_PW"}, ("STOW_TOKEN",), {}, ())


def test_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="config: cannot read .*absent.yaml"):
        load_config(tmp_path / "absent.yaml")


def test_check_models_against_specs(tmp_path):
    cfg = load_config(_write(tmp_path, "models: {tiny-tset: {}}"))
    with pytest.raises(ConfigError, match="config: models: unknown model 'tiny-tset' \\(did you mean 'tiny-test'\\?\\)"):
        cfg.check_models({"tiny-test": SPEC})
    cfg = load_config(_write(tmp_path, "models: {tiny-test: {thresholds: {findng: 0.2}}}"))
    with pytest.raises(ConfigError, match="models.tiny-test.thresholds: tiny-test has no label 'findng'"):
        cfg.check_models({"tiny-test": SPEC})


def test_no_shared_state(tmp_path):
    a = load_config(_write(tmp_path, "node: {port: 2000}"))
    b = load_config(None)
    assert a.node.port == 2000 and b.node.port == 11112 and isinstance(a, Config)


def test_the_celery_backend_and_the_status_page_are_read_with_their_defaults(tmp_path):
    c = load_config(_write(tmp_path, "queue: {backend: celery, broker: 'redis://127.0.0.1:6379/0', lease_s: 9}\n"
                                     "status: {host: 0.0.0.0, users: {ops: s3cret}}\n"))
    assert (c.queue.backend, c.queue.broker, c.queue.lease_s, c.queue.max_attempts) == \
        ("celery", "redis://127.0.0.1:6379/0", 9.0, 3)
    assert (c.status.host, c.status.port, c.status.users) == ("0.0.0.0", 8088, {"ops": "s3cret"})
    assert c.to_dict(hide_secrets=True)["status"]["users"] == {"ops": "<hidden>"}
    assert "s3cret" not in repr(c.status)
    assert load_config(None).status is None
