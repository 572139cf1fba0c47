"""Finds home devices by their tags (start devices.py first).

    python3 examples/home/client.py
"""

import meshrpc
from meshrpc.mesh import get_registry


def find_all(tags: set[str], timeout: float = 3.0, settle: float = 0.3) -> list:
    """Every device with all of `tags`: wait for the first one, then until no new one was heard for
    `settle` seconds (announcements keep arriving for a moment after the first)."""
    registry = get_registry()
    found = {e.key: e for e in registry.resolve_meta(meta_all=tags, timeout=timeout)}
    while found:
        more = registry.wait_for(lambda e: tags <= e.metadata and e.key not in found, settle)
        if not more:
            break
        found.update((e.key, e) for e in more)
    return sorted(found.values(), key=lambda e: e.name)


def main() -> None:
    # one device by tags: any provider that has all of them
    with meshrpc.Proxy("PYROMETA:sensor,temperature,kitchen") as sensor:
        reading = sensor.read()
    print(f"kitchen temperature: {reading['value']} °C")

    # every light, wherever it is: ask the mesh registry, then call each one
    lights = find_all({"switch", "light"})
    for entry in lights:
        with meshrpc.Proxy(entry.uri) as light:
            print(f"{entry.name}: {light.turn(True)}")

    # every sensor: read them all
    for entry in find_all({"sensor"}):
        with meshrpc.Proxy(entry.uri) as sensor:
            reading = sensor.read()
        print(f"{entry.name}: {reading['kind']} {reading['value']}")


if __name__ == "__main__":
    main()
