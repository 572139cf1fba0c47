"""Home automation: sensors and switches, each announced on the mesh with tags that say what it is
and where (`sensor`, `temperature`, `kitchen`...), so that clients find them with PYROMETA:.

    python3 examples/home/devices.py             # serves until Ctrl-C
"""

import random

import meshrpc


@meshrpc.expose
class Sensor:
    def __init__(self, place: str, kind: str, typical: float) -> None:
        self.place, self.kind, self.typical = place, kind, typical

    @meshrpc.idempotent
    def read(self) -> dict:
        return {"place": self.place, "kind": self.kind, "value": round(self.typical + random.uniform(-0.5, 0.5), 1)}


@meshrpc.expose
class Switch:
    def __init__(self, place: str, what: str) -> None:
        self.place, self.what, self._on = place, what, False

    @property
    def on(self) -> bool:
        return self._on

    @meshrpc.idempotent  # setting a state twice is setting it once
    def turn(self, on: bool) -> str:
        self._on = bool(on)
        return f"{self.place} {self.what} is {'on' if self._on else 'off'}"


SENSORS = [("kitchen", "temperature", 21.5), ("garden", "temperature", 12.0), ("garden", "humidity", 80.0)]
SWITCHES = [("kitchen", "light"), ("hall", "light"), ("garden", "sprinkler")]


def main() -> None:
    with meshrpc.Daemon() as daemon:
        for place, kind, typical in SENSORS:
            daemon.register(Sensor(place, kind, typical), name=f"home.{place}.{kind}",
                            metadata={"sensor", kind, place})
        for place, what in SWITCHES:
            daemon.register(Switch(place, what), name=f"home.{place}.{what}", metadata={"switch", what, place})
        print(f"ready: {len(SENSORS)} sensors and {len(SWITCHES)} switches on {daemon.locationStr}", flush=True)
        try:
            daemon.requestLoop()
        except KeyboardInterrupt:
            pass


if __name__ == "__main__":
    main()
