"""The etcd registry with etcd's TLS (client certificates) and auth (user/password), from settings,
against a real etcd member; and the one-line errors for a wrong certificate or password."""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import shutil
from types import SimpleNamespace

from etcd_support import EtcdCluster, available, make_etcd_certs
from support import wait_until

import meshrpc
from meshrpc import etcd
from meshrpc.etcd import gateway as _gateway  # noqa: F401 - etcd.gateway below
from meshrpc.errors import NamingError

ok, why = available()
pytestmark = [pytest.mark.skipif(not ok, reason=why), pytest.mark.timeout(120)]
pytest.importorskip("etcd3gw")

PASSWORD = "meshrpc-pw"


@pytest.fixture(scope="module")
def secured() -> Iterator[tuple[EtcdCluster, Any]]:
    """One TLS member requiring client certificates, with auth on and a user limited to /meshrpc/."""
    with tempfile.TemporaryDirectory(prefix="meshrpc-etcd-tls-") as root:
        if not shutil.which("openssl"):
            pytest.skip("needs the openssl command to make certificates")
        made = make_etcd_certs(Path(root))
        certs = SimpleNamespace(**{k.replace("-", "_"): v for k, v in made.items()})
        cluster = EtcdCluster(1)
        cluster.tls = {"cert": certs.member, "key": certs.member_key, "ca": certs.ca,
                       "client_cert": certs.client, "client_key": certs.client_key}
        with cluster:
            admin = etcd.gateway.Gateway(meshrpc.config.copy(
                RESOLVE=cluster.resolve, ETCD_CACERT=certs.ca, ETCD_CERT=certs.client, ETCD_CERT_KEY=certs.client_key))
            b64 = etcd.gateway.b64
            for path, body in (("auth/role/add", {"name": "root"}),
                               ("auth/user/add", {"name": "root", "password": "root-pw"}),
                               ("auth/user/grant", {"user": "root", "role": "root"}),
                               ("auth/role/add", {"name": "meshrpc"}),
                               ("auth/role/grant", {"name": "meshrpc", "perm": {
                                   "permType": "READWRITE", "key": b64(b"/meshrpc/"), "range_end": b64(b"/meshrpc0")}}),
                               ("auth/user/add", {"name": "meshrpc", "password": PASSWORD}),
                               ("auth/user/grant", {"user": "meshrpc", "role": "meshrpc"}),
                               ("auth/enable", {})):
                admin.call(path, body)
            admin.close()
            yield cluster, certs


def secure_settings(cluster: EtcdCluster, certs: Any, realm: str, **changes: Any) -> meshrpc.Settings:
    values: dict[str, Any] = {"REALM": realm, "RESOLVE": cluster.resolve, "ETCD_CACERT": certs.ca,
                              "ETCD_CERT": certs.client, "ETCD_CERT_KEY": certs.client_key, "ETCD_USER": "meshrpc",
                              "ETCD_PASSWORD": PASSWORD, "HOST": "127.0.0.1", "LOOKUP_TIMEOUT": 5.0}
    values.update(changes)
    return meshrpc.config.copy(**values)


@pytest.fixture(autouse=True)
def _fresh_mirrors() -> Iterator[None]:
    yield
    etcd.reset_for_tests()


def test_tls_client_certificate_and_auth_from_settings(secured: tuple[EtcdCluster, Any], realm: str,
                                                       start_daemon: Any) -> None:
    cluster, certs = secured
    settings = secure_settings(cluster, certs, realm)
    running = start_daemon(host="127.0.0.1", settings=settings)

    class Echo:
        @meshrpc.expose
        def echo(self, value: Any) -> Any:
            return value
    running.register(Echo(), name="secure.echo", metadata={"secure"})
    mirror = etcd.get_mirror(settings)
    assert wait_until(lambda: mirror.lookup("secure.echo"), 10)
    with meshrpc.Proxy("PYROMETA:secure", settings=settings) as proxy:
        assert proxy.echo("over tls") == "over tls"


def test_wrong_password_certificate_or_scheme_say_what_to_check(secured: tuple[EtcdCluster, Any], realm: str) -> None:
    cluster, certs = secured
    cases = [
        (secure_settings(cluster, certs, realm, ETCD_PASSWORD="wrong"), "check ETCD_USER and ETCD_PASSWORD"),
        (secure_settings(cluster, certs, realm, ETCD_USER=""), "ETCD_USER"),
        (secure_settings(cluster, certs, realm, ETCD_CERT="", ETCD_CERT_KEY=""), "ETCD_CERT"),
        (secure_settings(cluster, certs, realm, ETCD_CACERT=certs.other_ca), "ETCD_CACERT"),
    ]
    for settings, hint in cases:
        etcd.reset_for_tests()
        with pytest.raises(NamingError) as info:
            etcd.get_mirror(settings).ensure_synced(5)
        assert hint in str(info.value) and "\n" not in str(info.value), str(info.value)
