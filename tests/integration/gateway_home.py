"""A small home automation mesh for the gateway's browser test and its documentation screenshots."""

from __future__ import annotations

import meshrpc


@meshrpc.expose
class Thermostat:
    temperature = property(lambda self: 21.5)

    def set_target(self, celsius: float) -> str:
        return f"target set to {celsius} °C"


@meshrpc.expose
class Sprinkler:
    def water(self, zone: str = "lawn", minutes: int = 10) -> dict:
        return {"zone": zone, "minutes": minutes, "started": True}

    def stop(self) -> None:
        return None


@meshrpc.expose
class Lights:
    level = property(lambda self: 40)

    def switch(self, on: bool) -> bool:
        return on
