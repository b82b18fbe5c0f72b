"""The packages are layers (docs/ARCHITECTURE.md): a package imports only packages of a lower
layer, never one beside or above it. On top of the module-cycle test (test_import_cycles.py):
no cycle can hide in a package pair, and a misplaced import fails here by name."""

from __future__ import annotations

from tests.test_import_cycles import import_graph

# Lowest first. A new package must be placed here on purpose.
LAYERS: tuple[frozenset[str], ...] = (
    frozenset({"ippacket", "shm_ring", "tunio"}),  # building blocks, nothing of the gateway
    frozenset({"gateway._native"}),  # the compiled per-packet path (gateway/native), no imports
    # The basic types and names.
    frozenset(
        {"gateway", "gateway.endpoint", "gateway.ipnet", "gateway.gcpause", "gateway.topology"}
    ),
    frozenset({"gateway.wireguard", "gateway.resources", "gateway.udp_io"}),
    frozenset({"gateway.keys", "gateway.uapi", "gateway.telemetry"}),
    frozenset({"gateway.ha"}),  # two gateways for one site: replication, sans-I/O but its link
    frozenset({"gateway.config"}),
    frozenset({"gateway.policy", "gateway.dns"}),  # decisions, sans-I/O
    frozenset({"gateway.nat"}),  # translations for DNS resources (their policy and proxies)
    frozenset({"gateway.dataplane"}),  # the processes that move bytes
    frozenset({"gateway.cli", "testbed"}),  # the operator's commands; the tests' hosts
    frozenset({"gateway.__main__"}),
)


def package_of(module: str) -> str:
    """`gateway.dns.server` -> `gateway.dns`; `gateway.config` -> itself; `tunio.x` -> `tunio`."""
    parts = module.split(".")
    return ".".join(parts[:2]) if parts[0] == "gateway" else parts[0]


def violations(graph: dict[str, set[str]], layers: tuple[frozenset[str], ...]) -> list[str]:
    """Every import of a package from the same layer (another package) or a higher one."""
    rank = {package: i for i, layer in enumerate(layers) for package in layer}
    found = []
    for module, imported in sorted(graph.items()):
        source = package_of(module)
        for target in sorted(imported):
            destination = package_of(target)
            if destination != source and rank[destination] >= rank[source]:
                found.append(f"{module} imports {target}")
    return found


def test_the_layer_check_finds_an_import_upward_and_sideways() -> None:
    layers = (frozenset({"low"}), frozenset({"a", "b"}))
    assert violations({"a.x": {"low.y"}, "low.y": set()}, layers) == []
    assert violations({"low.y": {"a.x"}, "a.x": set()}, layers) == ["low.y imports a.x"]
    assert violations({"a.x": {"b.z"}, "b.z": set()}, layers) == ["a.x imports b.z"]


def test_every_package_has_a_layer() -> None:
    placed = set().union(*LAYERS)
    assert {package_of(m) for m in import_graph()} <= placed


def test_packages_import_only_lower_layers() -> None:
    assert violations(import_graph(), LAYERS) == []
