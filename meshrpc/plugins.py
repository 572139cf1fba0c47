"""Plugs the packages a daemon uses but server/ does not import into its hooks (server/hooks.py):
the mesh, etcd and the name server as announcers, client.Proxy for Daemon.proxyFor, the name server's
locator for serve(use_ns=True).

Imported by meshrpc/__init__.py. The announcer factories import lazily, so discovery (zeroconf)
and the name-server client load only on a daemon's first named registration.
"""

from __future__ import annotations

from typing import Any

from .client.proxy import Proxy
from .server.hooks import Announcer, plug_in, plug_in_name_server_locator, plug_in_proxy_factory


def mesh_announcer(bind_host: str, settings: Any) -> Announcer | None:
    """Announce on the mesh (mDNS/DNS-SD, docs/mesh.md): every named registration, unless RESOLVE
    names etcd and not the mesh (a site without multicast, docs/etcd.md)."""
    from .resolve import announces_on_mesh
    if not announces_on_mesh(settings):
        return None
    from .mesh import MeshPublisher
    return MeshPublisher(bind_host, settings)


def etcd_announcer(bind_host: str, settings: Any) -> Announcer | None:
    """Keep named registrations in the etcd cluster RESOLVE names (docs/etcd.md), under one lease."""
    if "etcd" not in settings.RESOLVE:          # the common case, without parsing
        return None
    from . import etcd
    if not etcd.enabled(settings):
        return None
    return etcd.EtcdRegistrar(settings, bind_host)


def name_server_announcer(bind_host: str, settings: Any) -> Announcer | None:
    """Keep named registrations in the configured name server (NS_HOST with NS_AUTOREGISTER)."""
    if not (settings.NS_HOST and settings.NS_AUTOREGISTER):
        return None
    from .naming.registrar import NameServerRegistrar
    return NameServerRegistrar(settings)


plug_in("mesh", mesh_announcer)
plug_in("nameserver", name_server_announcer)
plug_in("etcd", etcd_announcer)
plug_in_proxy_factory(lambda uri, settings: Proxy(uri, settings=settings))


def _locate_name_server(settings: Any) -> Any:
    from .naming import locate_ns
    return locate_ns(settings=settings)


plug_in_name_server_locator(_locate_name_server)
