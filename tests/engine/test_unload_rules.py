"""The reconciler's unload rule with other gateways: a version another gateway still wants or
serves stays loaded, and so does every version while the others cannot be asked."""

from __future__ import annotations

from pathlib import Path

from service.engine.adapter_host import AdapterHost
from service.engine.reconciler import AdapterReconciler
from tests.adapters.test_placement import add_version, set_target
from tests.conftest import Harness
from tests.fake_engine import FakeEngine


class Others:
    """What the other gateways' rows say, as the test sets it."""

    def __init__(self) -> None:
        self.busy: frozenset[str] = frozenset()
        self.away = False
        self.asked = 0

    async def busy_elsewhere(self) -> frozenset[str]:
        self.asked += 1
        if self.away:
            raise OSError("the database is away")
        return self.busy


def reconciler_with(gateway: Harness, others: Others) -> AdapterReconciler:
    gw = gateway.app.state.gateway
    return AdapterReconciler(
        list(gw.engines.pools.values()), AdapterHost(lambda: gw.engines.http), gw.snapshot,
        gw.metrics, interval_s=3600, unload_grace_s=0, others=others,
    )  # fmt: skip


async def test_a_version_another_gateway_needs_stays_until_none_does(
    gateway: Harness, engine: FakeEngine, tmp_path: Path
) -> None:
    await add_version(gateway, "triage", 1, tmp_path)
    assert (await set_target(gateway, "triage@1"))["status"] == 200
    others = Others()
    reconciler = reconciler_with(gateway, others)
    await reconciler.reconcile()
    assert others.asked == 0  # nothing to unload: nobody is asked
    assert (await set_target(gateway, "base"))["status"] == 200
    others.busy = frozenset({"triage@1"})
    await reconciler.reconcile()
    assert "triage@1" in engine.adapters
    others.busy, others.away = frozenset(), True
    await reconciler.reconcile()
    assert "triage@1" in engine.adapters
    others.away = False
    await reconciler.reconcile()
    assert "triage@1" not in engine.adapters
    assert others.asked == 3
