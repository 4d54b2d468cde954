"""The price table: USD per GPU-hour per accelerator type and market, USD per CPU-core-hour for
CPU-only hosts (`configs/prices.yaml`, `kind: prices`).

    >>> table = load_prices()                                   # the shipped list prices
    >>> table.usd_per_hour("H100", gpus=8, cpus=0, market="spot")  # doctest: +SKIP
    16.72

A unit of work is priced by what it held: its GPUs at the accelerator's rate when it held any,
else its CPU cores at the CPU rate. A bad table fails at load time with one line naming the file
and field (exit 2); an accelerator the table does not price fails the same way when priced, so a
figure is never silently zero.
"""
from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field

from cluster.config import ConfigError, YardModel, load_config

DEFAULT_PRICES = Path(__file__).resolve().parents[1] / "configs" / "prices.yaml"
MARKETS = ("on_demand", "spot")
Market = Literal["on_demand", "spot"]


class MarketPrices(YardModel):
    on_demand: float = Field(..., ge=0, description="USD per hour on demand")
    spot: float = Field(..., ge=0, description="USD per hour on the spot market")

    def at(self, market: str) -> float:
        return self.on_demand if market == "on_demand" else self.spot


class PriceTable(YardModel):
    """`kind: prices`: per accelerator type (Ray's accelerator_type) USD per GPU-hour, and USD per
    CPU-core-hour for hosts without a GPU."""

    kind: Literal["prices"] = "prices"
    source: str = Field("", description="where the numbers come from and when (shown under cost tables)")
    market: Market = Field("on_demand", description="the market a job is priced at unless it says otherwise")
    gpu: dict[str, MarketPrices] = Field(default_factory=dict, description="accelerator type -> USD per GPU-hour")
    cpu: MarketPrices = Field(..., description="USD per CPU-core-hour (CPU-only hosts)")

    def usd_per_hour(self, accelerator: str | None, *, gpus: float, cpus: float, market: str | None = None) -> float:
        """What holding `gpus` GPUs of `accelerator` (or, with no GPU, `cpus` cores) costs per hour."""
        market = market or self.market
        if market not in MARKETS:
            raise ConfigError(f"{self.config_file or 'prices'}: market: {market!r}: not allowed "
                              f"(allowed: {', '.join(MARKETS)})")
        if gpus > 0:
            if not accelerator:
                raise ConfigError(f"{self.config_file or 'prices'}: gpu: {gpus:g} GPU(s) of an unknown type (Ray "
                                  f"reported no accelerator_type for them); cannot price them")
            prices = self.gpu.get(accelerator)
            if prices is None:
                raise ConfigError(f"{self.config_file or 'prices'}: gpu.{accelerator}: no price for accelerator "
                                  f"{accelerator!r} (priced: {', '.join(self.gpu) or 'none'}); add a row")
            return gpus * prices.at(market)
        return max(cpus, 0.0) * self.cpu.at(market)


def load_prices(path: str | Path | None = None) -> PriceTable:
    """The table at `path` (the shipped `configs/prices.yaml` when None); ConfigError naming the
    file and field when it is not a valid price table."""
    table = load_config(path or DEFAULT_PRICES, PriceTable)
    assert isinstance(table, PriceTable)
    return table


def job_prices(config) -> PriceTable:
    """The price table a job config names (`cost.prices`, resolved like any path in its config:
    working directory, the config's folder, the repository), or the shipped one."""
    from cluster.config import resolve_config_path

    cost = getattr(config, "cost", None)
    if cost is None or not cost.prices:
        return load_prices()
    return load_prices(resolve_config_path(cost.prices, getattr(config, "config_file", None),
                                           roots=(DEFAULT_PRICES.parents[1],)))


def job_market(config, table: PriceTable | None = None) -> str:
    """The market a job runs on: its config's `cost.market`, else the price table's."""
    cost = getattr(config, "cost", None)
    if cost is not None and cost.market:
        return cost.market
    return (table or job_prices(config)).market
