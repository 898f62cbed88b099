"""A learned-grouping plugin's budget, in its metrics and checkpoint state.

lgc and flgc pick their setting before training (sparsity/budget_groups.py); what they picked
and the export's cost at it (measured on a trial export with every layer at its final
structure) ride on the plugin as `budget_record`, go into `metrics.jsonl` and TensorBoard each
epoch, and into the plugin's checkpoint state under `budget`, where the export's report finds
them. A resumed run restores the record (its model already holds the learned layers)."""
from __future__ import annotations


def record_metrics(plugin) -> dict[str, float]:
    record = getattr(plugin, "budget_record", None)
    if not record:
        return {}
    kind = record["kind"]
    return {f"budget_{kind}_target": record["fraction"], f"budget_{kind}_achieved": record["achieved"]}


def record_state(plugin) -> dict:
    record = getattr(plugin, "budget_record", None)
    return {"budget": dict(record)} if record else {}


def restore_record(plugin, state: dict) -> None:
    if state.get("budget"):
        plugin.budget_record = dict(state["budget"])
