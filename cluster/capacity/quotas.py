"""Quota and capacity preflight for AWS, before a cluster is launched: is every instance type the
plan needs offered in the region, and do the account's EC2 vCPU quotas (on-demand and spot, per
instance family) leave room for at least one node of each worker group?

    >>> problems = preflight(cfg, groups)  # doctest: +SKIP
    us-west-2: quota 'All P Spot Instance Requests' (L-7212CCBC) is 0 vCPUs; a p5.48xlarge spot node needs 192

A plan that cannot start is refused (QuotaError, one line naming the quota, its value and the
region); a plan that can start but not grow to `max_workers` gets warnings. With
`market: spot_with_fallback`, a spot quota of 0 is a warning when the on-demand quota has room
(the on-demand groups will carry the work). Quotas are read through the Service Quotas API
(`servicequotas:GetServiceQuota`), offerings through EC2 `DescribeInstanceTypeOfferings`.
"""
from __future__ import annotations

from dataclasses import dataclass

from cluster.capacity.instances import worker_groups
from cluster.config import UserError

# EC2 vCPU quotas by instance family (the first letter of the type), per market
QUOTA_CODES: dict[tuple[str, str], tuple[str, str]] = {
    ("P", "on_demand"): ("L-417A185B", "Running On-Demand P instances"),
    ("P", "spot"): ("L-7212CCBC", "All P Spot Instance Requests"),
    ("G", "on_demand"): ("L-DB2E81BA", "Running On-Demand G and VT instances"),
    ("G", "spot"): ("L-3819A6DF", "All G and VT Spot Instance Requests"),
}


class QuotaError(UserError):
    """The account or region cannot run the plan: one line naming the quota, value and region."""


@dataclass(frozen=True)
class Need:
    family: str  # "P" or "G"
    market: str  # "spot" or "on_demand"
    one_node: int  # vCPUs of the largest node of this family and market (the least that must fit)
    all_nodes: int  # vCPUs with every group of this family and market at max_workers
    largest: str  # that largest instance type


def needs(cfg, groups: dict[str, list[str]]) -> list[Need]:
    """What the plan's worker groups need per (instance family, market)."""
    acc: dict[tuple[str, str], list] = {}
    for inst, market, cap in worker_groups(cfg, groups):
        entry = acc.setdefault((inst.name[0].upper(), market), [0, 0, inst.name])
        if inst.vcpus > entry[0]:
            entry[0], entry[2] = inst.vcpus, inst.name
        entry[1] += cap * inst.vcpus
    return [Need(fam, market, one, total, largest) for (fam, market), (one, total, largest) in acc.items()]


def _quota(client, code: str) -> float | None:
    """The account's value of an EC2 quota, else AWS's default, else None (unknown)."""
    from botocore.exceptions import ClientError

    try:
        return float(client.get_service_quota(ServiceCode="ec2", QuotaCode=code)["Quota"]["Value"])
    except ClientError as exc:
        if exc.response.get("Error", {}).get("Code") not in ("NoSuchResourceException", "ResourceNotFoundException"):
            raise
    try:  # never changed for this account: AWS's default applies
        return float(client.get_aws_default_service_quota(ServiceCode="ec2", QuotaCode=code)["Quota"]["Value"])
    except ClientError:
        return None


def preflight(cfg, groups: dict[str, list[str]], *, session=None, endpoint_url: str | None = None) -> list[str]:
    """Check offerings and quotas in `cfg.provider.region`; QuotaError when the plan cannot start,
    else the warnings (quotas that cap growth, unknown quotas, spot groups left to the fallback)."""
    import boto3
    from botocore.exceptions import BotoCoreError, ClientError

    region = cfg.provider.region
    session = session or boto3.session.Session()
    try:
        ec2 = session.client("ec2", region_name=region, endpoint_url=endpoint_url)
        pages = ec2.get_paginator("describe_instance_type_offerings").paginate(
            LocationType="region", Filters=[{"Name": "instance-type", "Values": sorted(groups)}])
        offered = {o["InstanceType"] for page in pages for o in page["InstanceTypeOfferings"]}
        missing = sorted(set(groups) - offered)
        if missing:
            raise QuotaError(f"{region}: {', '.join(missing)} not offered in this region (EC2 instance type "
                             f"offerings); choose another region or instance_types")
        plan = needs(cfg, groups)
        quotas = session.client("service-quotas", region_name=region, endpoint_url=endpoint_url)
        values = {(n.family, n.market): _quota(quotas, QUOTA_CODES[n.family, n.market][0]) for n in plan}
    except (BotoCoreError, ClientError) as exc:
        raise QuotaError(f"{region}: cannot read EC2 offerings or quotas ({type(exc).__name__}: "
                         f"{str(exc).splitlines()[0][:200]})") from None
    warnings, blocked = [], []
    for need in plan:
        code, name = QUOTA_CODES[need.family, need.market]
        value = values[need.family, need.market]
        what = f"quota '{name}' ({code})"
        if value is None:
            warnings.append(f"{region}: {what} unknown; not checked")
        elif value < need.one_node:
            blocked.append((need, f"{region}: {what} is {value:g} vCPUs; a {need.largest} "
                                  f"{need.market.replace('_', '-')} node needs {need.one_node}"))
        elif value < need.all_nodes:
            warnings.append(f"{region}: {what} is {value:g} vCPUs: room for {int(value // need.one_node)} "
                            f"{need.largest} node(s) of the {need.all_nodes // need.one_node} the groups allow")
    for need, line in blocked:
        fallback = cfg.market == "spot_with_fallback" and need.market == "spot" and not any(
            b.family == need.family and b.market == "on_demand" for b, _ in blocked)
        if not fallback:
            raise QuotaError(line)
        warnings.append(f"{line}: spot groups cannot start; the on-demand groups will carry the work")
    return warnings
