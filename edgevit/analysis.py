"""What a model costs and what its exported graph contains: parameters, MACs, strict export, op census.

This is the export-clean contract the converters rely on, in one place: `check_export_clean` lists every
violation (forbidden op, tensor of rank > 5, eager/exported mismatch) so a test or `edgevit info` can show it.
"""
from __future__ import annotations

import operator
from collections import Counter
from dataclasses import dataclass, field

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from .models.layers import export_forms

# Ops that no edge backend delegates well: im2col gathers, index gathers, bicubic resize.
FORBIDDEN_OPS = ("im2col", "col2im", "index.Tensor", "index_put", "gather", "upsample_bicubic2d")
MAX_RANK = 5  # Core ML's limit; the Neural Engine prefers <= 4
EXPORT_ATOL = 1e-4


def count_params(model: nn.Module) -> dict[str, int]:
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return {"total": total, "trainable": trainable}


def example_input(model: nn.Module, batch: int = 1, seed: int = 0) -> torch.Tensor:
    channels, height, width = model.pretrained_cfg["input_size"]
    device = next(model.parameters()).device
    if device.type == "meta":  # shape-only analysis (MACs of a full-size model without allocating it)
        return torch.empty(batch, channels, height, width, device=device)
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(batch, channels, height, width, generator=generator).to(device)


def count_macs(model: nn.Module, x: torch.Tensor | None = None) -> int:
    """Multiply-accumulates of matmuls and convolutions, as the papers count them ("FLOPs" = MACs).

    Structural rewrites (one-hot unfold convolutions, resize matmuls; modules with `counts_macs = False`)
    are left out, so the figure compares with the published one for the reference network.
    """
    x = example_input(model) if x is None else x
    counter = FlopCounterMode(display=False, depth=None)
    with torch.no_grad(), counter:
        model.eval()(x)
    counts = counter.get_flop_counts()
    root = type(model).__name__
    flops = sum(counts.get("Global", {}).values())
    for name, module in model.named_modules():
        if name and getattr(module, "counts_macs", True) is False:
            flops -= sum(counts.get(f"{root}.{name}", {}).values())
    return flops // 2


def export_model(model: nn.Module, x: torch.Tensor | None = None, strict: bool = True,
                 layer_norm: str = "native", conv: str = "native") -> torch.export.ExportedProgram:
    """`torch.export` of the model in eval mode with static shapes, LayerNorms and convs in the requested forms."""
    x = example_input(model) if x is None else x
    with export_forms(model, layer_norm=layer_norm, conv=conv), torch.no_grad():
        return torch.export.export(model.eval(), (x,), strict=strict)


@dataclass
class ExportReport:
    ops: Counter = field(default_factory=Counter)  # core ATen op -> count
    max_rank: int = 0
    forbidden: dict[str, int] = field(default_factory=dict)
    high_rank: list[str] = field(default_factory=list)  # nodes with rank > MAX_RANK
    control_flow: list[str] = field(default_factory=list)
    max_abs_diff: float | None = None  # exported vs eager logits

    @property
    def violations(self) -> list[str]:
        problems = [f"forbidden op {op} x{n}" for op, n in self.forbidden.items()]
        problems += [f"tensor of rank > {MAX_RANK}: {name}" for name in self.high_rank]
        problems += [f"control flow: {name}" for name in self.control_flow]
        if self.max_abs_diff is not None and self.max_abs_diff > EXPORT_ATOL:
            problems.append(f"exported logits differ from eager by {self.max_abs_diff:.2e} (> {EXPORT_ATOL})")
        return problems

    def to_dict(self) -> dict:
        return {"ops": dict(sorted(self.ops.items())), "max_rank": self.max_rank, "forbidden": self.forbidden,
                "high_rank": self.high_rank, "control_flow": self.control_flow,
                "max_abs_diff": self.max_abs_diff, "violations": self.violations}


def op_census(program: torch.export.ExportedProgram) -> ExportReport:
    """Count the core ATen ops of an exported program and flag what the export-clean contract forbids."""
    graph = program.run_decompositions().graph_module.graph
    report = ExportReport()
    for node in graph.nodes:
        value = node.meta.get("val")
        if isinstance(value, torch.Tensor):
            report.max_rank = max(report.max_rank, value.dim())
            if value.dim() > MAX_RANK:
                report.high_rank.append(f"{node.name} {tuple(value.shape)}")
        if node.op != "call_function" or node.target is operator.getitem:
            continue
        name = str(node.target).replace("aten.", "")
        if "higher_order" in name or name.startswith(("cond", "while_loop", "map")):
            report.control_flow.append(name)
        if name.startswith("_assert") or name in ("sym_constrain_range_for_size.default",):
            continue
        report.ops[name] += 1
        for forbidden in FORBIDDEN_OPS:
            if forbidden in name:
                report.forbidden[name] = report.forbidden.get(name, 0) + 1
    return report


def check_export_clean(model: nn.Module, x: torch.Tensor | None = None,
                       layer_norm: str = "native") -> ExportReport:
    """Strictly export the model, census the graph and compare exported with eager logits."""
    x = example_input(model) if x is None else x
    program = export_model(model, x, strict=True, layer_norm=layer_norm)
    report = op_census(program)
    with torch.no_grad():
        eager = model.eval()(x)
        exported = program.module()(x)
    report.max_abs_diff = float((eager - exported).abs().max())
    return report


def describe(model: nn.Module, export: bool = True, layer_norm: str = "native") -> dict:
    """Everything `edgevit info` shows: config, preprocessing, parameters, MACs and the export census."""
    from .models.registry import get_variant

    variant = get_variant(model.variant) if model.variant else None
    info = {
        "variant": model.variant,
        "family": model.family,
        "description": variant.description if variant else "",
        "aliases": list(variant.aliases) if variant else [],
        "arch": dict(getattr(model, "arch", {})),
        "pretrained_cfg": dict(model.pretrained_cfg),
        "weights": getattr(model, "weights_source", "random init"),
        "params": count_params(model),
        "macs": count_macs(model),
        "reported": vars(variant.reported) if variant else {},
    }
    if export:
        info["export"] = {"layer_norm": layer_norm, **check_export_clean(model, layer_norm=layer_norm).to_dict()}
    return info
