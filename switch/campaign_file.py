"""Campaign files (TOML or JSON) and stored campaigns: the way in for `switch.campaign_spec`.

A file holds a list `campaign` of campaigns. Loading validates the whole file and either
returns every campaign or raises `CampaignFileError` with one message naming the file, the
campaign (its id, or its index when the id is missing) and the field, e.g.
`cafe.toml: campaign 'cafe-stamps': every: must be at least 2`. The rules' own checks
(`switch.rules`) are run by building each rule, and their messages are mapped to fields the
same way. The database form (`spec_from_stored`) is the same schema, ids included.
"""

from __future__ import annotations

import json
import tomllib
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import tomli_w
from pydantic import TypeAdapter, ValidationError

from switch.campaign_spec import KINDS, AnySpec, CampaignSpec
from switch.rules import Rule

__all__ = ["CampaignFileError", "CampaignSpec", "dump_spec", "load_campaigns",
           "parse_campaigns", "rules_from_stored", "spec_from_stored"]

_ADAPTER: TypeAdapter[CampaignSpec] = TypeAdapter(AnySpec)
STORED_ONLY = ("network_id", "merchant_id")  # filled in by the switch, never by a file

# `switch.rules` problems -> the field they are about (first matching prefix wins).
_RULE_PROBLEM_FIELDS = (
    ("id ", "id"), ("valid_from", "valid_from"), ("codes", "codes"),
    ("budget", "budget"), ("minimum purchase", "min_purchase_rial"),
    ("BIN prefixes", "bin_prefixes"), ("credit, points and entries", "co_funders"),
    ("a funder may appear once", "co_funders"), ("co-funder shares", "co_funders"),
    ("a sponsor funder", "funder"), ("store credit is issued", "funder"),
    ("bp must", "bp"), ("cap must", "cap_rial"), ("amount must", "amount_rial"),
    ("the ladder", "steps_bp"), ("every must", "every"), ("free value", "free_up_to_rial"),
    ("credit must be valid", "expiry_days"), ("rial per point", "rial_per_point"),
    ("a category may", "multipliers"), ("multipliers", "multipliers"),
    ("rial per entry", "rial_per_entry"), ("max entries", "max_entries"),
)


class CampaignFileError(Exception):
    """A campaign file (or argument) that cannot be used; the message says where and why."""


def load_campaigns(path: Path) -> list[CampaignSpec]:
    """Every campaign of a `.toml` or `.json` file, validated; `CampaignFileError` if any
    part of the file is wrong (so a caller stores all of them or none)."""
    name = path.name
    if path.suffix not in (".toml", ".json"):
        raise CampaignFileError(f"{name}: a campaign file ends in .toml or .json")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise CampaignFileError(f"{name}: cannot be read: {exc}") from None
    try:
        data = tomllib.loads(text) if path.suffix == ".toml" else json.loads(text)
    except (tomllib.TOMLDecodeError, json.JSONDecodeError) as exc:
        raise CampaignFileError(f"{name}: not valid {path.suffix[1:].upper()}: {exc}") from None
    return parse_campaigns(data, name)


def parse_campaigns(data: Any, source: str) -> list[CampaignSpec]:
    """Validate a decoded campaign file; `source` names it in messages."""
    if not isinstance(data, dict) or set(data) != {"campaign"}:
        raise CampaignFileError(f"{source}: must hold only a list 'campaign' of campaigns "
                                "(TOML: [[campaign]] tables)")
    items = data["campaign"]
    if not isinstance(items, list) or not items:
        raise CampaignFileError(f"{source}: 'campaign' must be a non-empty list")
    specs: list[CampaignSpec] = []
    for index, item in enumerate(items):
        where = _where(source, index, item)
        if isinstance(item, dict):
            for key in STORED_ONLY:
                if key in item:
                    raise CampaignFileError(f"{where}: {key}: set by the switch when the "
                                            "campaign is stored, not in a file")
        spec = _validate(item, where)
        if any(s.id == spec.id for s in specs):
            raise CampaignFileError(f"{where}: id: appears twice in the file")
        specs.append(spec)
    return specs


def _where(source: str, index: int, item: Any) -> str:
    campaign_id = item.get("id") if isinstance(item, dict) else None
    if isinstance(campaign_id, str) and campaign_id:
        return f"{source}: campaign {campaign_id!r}"
    return f"{source}: campaign #{index + 1}"


def _validate(item: Any, where: str) -> CampaignSpec:
    try:
        spec = _ADAPTER.validate_python(item)
    except ValidationError as exc:
        raise CampaignFileError(f"{where}: {_pydantic_problem(exc)}") from None
    try:
        spec.to_rule()
    except ValueError as exc:
        raise CampaignFileError(f"{where}: {_rule_problem(str(exc), spec)}") from None
    return spec


def _pydantic_problem(exc: ValidationError) -> str:
    """The first error, as `field.path: what is wrong`."""
    error = exc.errors(include_url=False)[0]
    loc = list(error["loc"])
    if error["type"] not in ("union_tag_invalid", "union_tag_not_found") and loc and \
            loc[0] in KINDS:
        loc = loc[1:]  # the discriminated union's tag
    path = ".".join(str(part) for part in loc) or "kind"
    kind = error["type"]
    if kind in ("union_tag_invalid", "union_tag_not_found"):
        return f"kind: must be one of {', '.join(KINDS)}"
    if kind == "extra_forbidden":
        return f"{path}: unknown field"
    if kind == "missing":
        return f"{path}: missing"
    message = str(error["msg"])
    message = message.removeprefix("Value error, ")
    return f"{path}: {message[0].lower()}{message[1:]}"


def _rule_problem(message: str, spec: CampaignSpec) -> str:
    """`rule 'x': every must be at least 2` -> `every: must be at least 2`."""
    problem = message.split(": ", 1)[1] if message.startswith("rule ") else message
    for prefix, field in _RULE_PROBLEM_FIELDS:
        if problem.startswith(prefix):
            if field == "budget":
                field = f"budget_{spec.limit_unit}"
            rest = problem[len(field):].lstrip() if problem.startswith(field) else problem
            return f"{field}: {rest}"
    return problem


def spec_from_stored(data: Mapping[str, Any] | str) -> CampaignSpec:
    """A stored campaign (`campaign.spec`, as a mapping or its JSON text) back to its spec."""
    mapping = json.loads(data) if isinstance(data, str) else dict(data)
    return _ADAPTER.validate_python(mapping)


def rules_from_stored(rows: Iterable[Mapping[str, Any]]) -> list[Rule]:
    """Rules from `campaign` rows (or any mappings with a `spec` key), or from bare specs."""
    rules = []
    for row in rows:
        stored = row.get("spec", row)
        rules.append(spec_from_stored(stored).to_rule())
    return rules


def dump_spec(spec: CampaignSpec, fmt: str) -> str:
    """A campaign as a file of one campaign, in `toml` or `json`, without unset fields."""
    data = spec.model_dump(mode="json", exclude_none=True, exclude=set(STORED_ONLY))
    if fmt == "json":
        return json.dumps({"campaign": [data]}, ensure_ascii=False, indent=2) + "\n"
    return tomli_w.dumps({"campaign": [data]})
