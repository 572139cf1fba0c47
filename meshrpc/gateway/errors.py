"""The gateway's own refusals, one class per outcome, each with its HTTP status.

They reach HTTP clients as JSON in the same shape as a remote exception (Pyro5's gateway sends those):
`{"__class__": "meshrpc.gateway.<Name>", "__exception__": true, "args": [message], "attributes": {}}`.
"""

from __future__ import annotations

from ..errors import MeshError


class GatewayError(MeshError):
    """Base of the gateway's refusals."""
    status = 500


class BadRequest(GatewayError):
    """Malformed JSON, arguments that do not fit, an invalid header (HTTP 400)."""
    status = 400


class Forbidden(GatewayError):
    """A wrong or missing gateway key, or a name the expose pattern does not allow (HTTP 403)."""
    status = 403


class NoSuchMember(GatewayError):
    """The service has no exposed method or attribute of that name (HTTP 404)."""
    status = 404


class RequestTimeout(GatewayError):
    """The body did not arrive within GATEWAY_BODY_TIMEOUT (HTTP 408)."""
    status = 408


class BodyTooLarge(GatewayError):
    """The body is larger than GATEWAY_MAX_BODY (HTTP 413)."""
    status = 413


class UnsupportedMediaType(GatewayError):
    """A body that is neither JSON nor a form (HTTP 415)."""
    status = 415


class TooManyRequests(GatewayError):
    """The client address went over GATEWAY_RATE (HTTP 429, with Retry-After)."""
    status = 429


class Busy(GatewayError):
    """Every slot of the service stayed taken for GATEWAY_QUEUE_TIMEOUT (HTTP 503)."""
    status = 503


class UnsafeBind(GatewayError):
    """The gateway was asked to listen beyond this machine without a gateway key or TLS."""
