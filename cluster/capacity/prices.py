"""The price table: USD per GPU-hour per accelerator type and market, USD per CPU-core-hour for
CPU-only hosts (`configs/prices.yaml`, `kind: prices`), and optionally the setting's node start,
an assumption plans state (`configs/prices.seed.yaml`: the seed's spot round).

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

from pydantic import Field, field_validator

from cluster.config import ConfigError, YardModel, load_config

DEFAULT_PRICES = Path(__file__).resolve().parents[2] / "configs" / "prices.yaml"
MARKETS = ("on_demand", "spot")
Market = Literal["on_demand", "spot"]


class MarketPrices(YardModel):
    on_demand: float = Field(..., ge=0, description="USD per hour on demand")
    spot: float = Field(..., ge=0, description="USD per hour on the spot market")

    def at(self, market: str) -> float:
        return self.on_demand if market == "on_demand" else self.spot


class NodeStart(YardModel):
    """What a fresh node spends before a host can start on it, as a plan assumes it: a cloud's spot
    allocation, image pull and weight download (nothing on a cluster that is already up). A plan
    adds it once per host it starts and says so; a ledger never does (it books what was measured)."""

    allocation_s: float = Field(0.0, ge=0, description="seconds from asking for the node to its container "
                                "running (spot allocation, image pull)")
    load_s: tuple[float, float] = Field((0.0, 0.0), description="seconds of weight loading on the fresh node, "
                                        "[low, high] or one number; a plan prices the middle and states both ends")
    source: str = Field("", description="where the figures come from (printed with the plan)")

    @field_validator("load_s", mode="before")
    @classmethod
    def _one_number(cls, value):
        return (value, value) if isinstance(value, (int, float)) and not isinstance(value, bool) else value

    @field_validator("load_s")
    @classmethod
    def _low_high(cls, value: tuple[float, float]) -> tuple[float, float]:
        if not 0 <= value[0] <= value[1]:
            raise ValueError("expected [low, high] seconds with 0 <= low <= high")
        return value

    def seconds(self, load_s: float | None = None) -> float:
        """One node start: allocation plus weight loading (the middle of the range unless given)."""
        return self.allocation_s + (sum(self.load_s) / 2 if load_s is None else load_s)


class PriceTable(YardModel):
    """`kind: prices`: per accelerator type (Ray's accelerator_type) USD per GPU-hour, and USD per
    CPU-core-hour for hosts without a GPU."""

    kind: Literal["prices"] = "prices"
    source: str = Field("", description="where the numbers come from and when (shown under cost tables)")
    market: Market = Field("on_demand", description="the market a job is priced at unless it says otherwise")
    gpu: dict[str, MarketPrices] = Field(default_factory=dict, description="accelerator type -> USD per GPU-hour")
    cpu: MarketPrices = Field(..., description="USD per CPU-core-hour (CPU-only hosts)")
    node_start: NodeStart | None = Field(None, description="a plan assumption: what each fresh node spends before "
                                         "work starts (`yard dna`'s plan adds it per host started); null: none")

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
