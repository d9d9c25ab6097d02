"""The model adapter: the one place that calls the caller's model or inspects its type.

Whatever the caller passes (an ``nn.Module`` or callable, a TorchScript or ``torch.export``
module, a model of several inputs, extra forward arguments, a tuple / dict / ``ModelOutput``
output, logits or probabilities, half precision) becomes one batched function from flat inputs
to log-probabilities. Methods, solvers, metrics, generation and hardening see only that."""
from __future__ import annotations

import contextlib
import copy
import functools
from dataclasses import dataclass
from typing import Optional, Tuple, Union

import torch
from torch import Tensor, nn

from ..blocks.plan import LeafTrace, caller_names, model_mode_guard, trace_leaf_modules

__all__ = ["ModelAdapter", "CompiledModel", "JointInputs", "Probe", "OUTPUT_KINDS", "joint_shapes",
           "solver_dtype"]

#: the values of ``output=``: how to read the model's output
OUTPUT_KINDS = ("logits", "probs", "log_probs")

Selector = Union[int, str, None]


def solver_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype of the solvers' variables and algebra for a model of ``dtype``: float32 for
    half and bfloat16 (whose linear solves PyTorch lacks on the CPU and whose 8-bit mantissa
    cannot resolve a step), else the model's own."""
    return torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype


class CompiledModel:
    """A TorchScript module or a ``torch.export`` program's module, called as an opaque function:
    neither takes forward hooks or ``eval()`` reliably, so no method traces it, changes its mode
    or hooks its layers. ``module`` is the wrapped model."""

    def __init__(self, module) -> None:
        self.module = module

    def __call__(self, *args):
        return self.module(*args)

    def __repr__(self) -> str:
        return f"CompiledModel({type(self.module).__name__})"


def is_compiled(model) -> bool:
    """True for TorchScript modules and ``torch.export``'s unlifted modules (a GraphModule whose
    ``eval()`` / ``train()`` raise)."""
    if isinstance(model, (CompiledModel, torch.jit.ScriptModule)):
        return True
    from torch.fx import GraphModule

    return isinstance(model, GraphModule) and ("eval" in vars(model) or any(
        c.__name__ == "_StatefulGraphModule" for c in type(model).__mro__))


def joint_shapes(input_shape):
    """``None`` for a single input's shape, else the tuple of shapes of a multi-input model
    (``input_shape`` a sequence of sequences of positive ints; a ValueError otherwise)."""
    if input_shape is None or isinstance(input_shape, int) or not len(input_shape) or not all(
            isinstance(s, (tuple, list, torch.Size)) for s in input_shape):
        if input_shape is not None and not isinstance(input_shape, int) and any(
                isinstance(s, (tuple, list, torch.Size)) for s in input_shape):
            raise ValueError("`input_shape` must be a tuple of ints (one input) or a tuple of such tuples "
                             f"(one per input of a multi-input model), got {input_shape!r}")
        return None
    shapes = tuple(tuple(s) for s in input_shape)
    if not all(s and all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in s) for s in shapes):
        raise ValueError(f"`input_shape`: every input's shape must be a tuple of positive ints, got {input_shape!r}")
    return shapes


class JointInputs(nn.Module):
    """A model of several inputs, ``model(x1, x2, ..., *extra)``, as a model of one flat input
    ``(N, sum of numels)``: the inputs are inverted jointly, as Captum attributes tuple inputs.

    Args:
        model (nn.Module or callable): the multi-input model.
        shapes (tuple of tuple of int): each input's shape without the batch dimension.
    """

    def __init__(self, model, shapes) -> None:
        super().__init__()
        self.model = model
        self.shapes = tuple(tuple(s) for s in shapes)
        self.sizes = [int(torch.Size(s).numel()) for s in self.shapes]

    def forward(self, x, *extra):
        return self.model(*self.split(x), *extra)

    def split(self, x: Tensor):
        """``(N, sum of numels)`` -> the tuple of ``(N, *shape_i)`` inputs."""
        return tuple(p.reshape(len(x), *s) for p, s in zip(torch.split(x, self.sizes, dim=1), self.shapes))

    def join(self, inputs) -> Tensor:
        """A tuple of ``(N, *shape_i)`` tensors as one ``(N, sum of numels)`` tensor."""
        want = ", ".join(f"(N, {', '.join(map(str, s))})" for s in self.shapes)
        if not isinstance(inputs, (tuple, list)) or len(inputs) != len(self.shapes) or not all(
                isinstance(t, Tensor) and tuple(t.shape[1:]) == s for t, s in zip(inputs, self.shapes)) or len(
                {len(t) for t in inputs}) != 1:
            got = (tuple(tuple(t.shape) if isinstance(t, Tensor) else type(t).__name__ for t in inputs)
                   if isinstance(inputs, (tuple, list)) else type(inputs).__name__)
            raise ValueError(f"`inputs` must be a tuple of {len(self.shapes)} tensors of shapes {want}, got {got}")
        dt = functools.reduce(torch.promote_types, [t.dtype for t in inputs])
        return torch.cat([t.reshape(len(t), -1).to(dt) for t in inputs], 1)


def exported_input(module) -> Tuple[Optional[int], Optional[Tuple[int, ...]]]:
    """``(batch, shape)`` of the first input a ``torch.export`` module was exported with:
    ``batch`` None when its batch dimension is dynamic, both None when the module is not an
    exported graph or its input is not recorded."""
    from torch.fx import GraphModule

    if not isinstance(module, GraphModule):
        return None, None
    for n in module.graph.nodes:
        if n.op == "placeholder":
            shape = getattr(n.meta.get("val"), "shape", None)
            if shape is None or not len(shape):
                return None, None
            rest = tuple(int(v) if isinstance(v, int) else None for v in shape[1:])
            batch = int(shape[0]) if isinstance(shape[0], int) else None
            return batch, (None if None in rest else rest)
    return None, None


def _map(fn, out):
    """``fn`` on every tensor of a (nested) tuple / list / dict output."""
    if isinstance(out, Tensor):
        return fn(out)
    if isinstance(out, (tuple, list)):
        return type(out)(_map(fn, o) for o in out)
    if isinstance(out, dict):
        return {k: _map(fn, v) for k, v in out.items()}
    return out


class _FixedBatch(nn.Module):
    """A program exported with a fixed batch size ``batch``, run on any batch: in chunks of
    ``batch``, the last one padded with copies of its last row (their outputs dropped)."""

    def __init__(self, module, batch: int) -> None:
        super().__init__()
        self.module, self.batch = module, batch

    def forward(self, x, *args):
        n, b = len(x), self.batch
        if n == b:
            return self.module(x, *args)
        outs = []
        for i in range(0, n, b):
            k = min(b, n - i)

            def cut(t, i=i, k=k):
                c = t[i:i + k]
                return torch.cat([c, c[-1:].expand(b - k, *c.shape[1:])]) if k < b else c

            extra = [cut(a) if isinstance(a, Tensor) and a.dim() and len(a) == n else a for a in args]
            outs.append(_map(lambda o, k=k: o[:k], self.module(cut(x), *extra)))
        first = outs[0]
        if isinstance(first, Tensor):
            return torch.cat(outs)
        if isinstance(first, (tuple, list)):
            return type(first)(torch.cat([o[j] for o in outs]) if isinstance(first[j], Tensor) else first[j]
                               for j in range(len(first)))
        if isinstance(first, dict):
            return {key: torch.cat([o[key] for o in outs]) if isinstance(v, Tensor) else v
                    for key, v in first.items()}
        raise ValueError(f"a fixed-batch exported program returned {type(first).__name__}; return a tensor, "
                         "tuple or dict, or export it with a dynamic batch dimension")


def _select(out, select: Selector):
    """One tensor of a model's output: ``select`` an index (tuple / list), a key (dict) or
    ``'.name'`` (an attribute); by default a tensor as is and a ``ModelOutput``'s ``logits``."""
    if select is None:
        if not isinstance(out, Tensor) and isinstance(getattr(out, "logits", None), Tensor):
            return out.logits  # Hugging Face's ModelOutput (a dict subclass with attributes)
        return out
    if isinstance(select, str) and select.startswith("."):
        return getattr(out, select[1:])
    return out[select]


class _Call(nn.Module):
    """The caller's model as a one-input, one-output module: joins several inputs, appends the
    extra forward arguments (a batch dimension of 1 expanded) and selects the output."""

    def __init__(self, model, shapes, args: tuple, select: Selector, normalize: Optional[nn.Module] = None) -> None:
        super().__init__()
        self.normalize = normalize  # pixel space -> the model's normalised inputs (runs first)
        self.model = model
        self.joint = JointInputs(nn.Identity(), shapes) if shapes is not None else None
        self.args, self.select = args, select

    def caller_model(self):
        """The caller's model (whose module names the traces use)."""
        return self.model

    def forward(self, x):
        args = [a.expand(len(x), *a.shape[1:]) if isinstance(a, Tensor) and a.dim() > 0 and len(a) == 1 else a
                for a in self.args]
        if self.normalize is not None:
            x = self.normalize(x)
        xs = self.joint.split(x) if self.joint is not None else (x,)
        return _select(self.model(*xs, *args), self.select)


@dataclass
class Probe:
    """What one probe of the model found.

    Attributes:
        kind (str): ``'logits'``, ``'probs'``, ``'log_probs'``, or for a single output
            ``'binary_logits'`` / ``'binary_probs'``.
        n_classes (int): classes (2 for a single output).
        trace (LeafTrace or None): the executed leaf modules (None for an opaque model or a
            single output).
        how (str): why the output was read as ``kind``.
    """

    kind: str
    n_classes: int
    trace: Optional[LeafTrace]
    how: str


class ModelAdapter:
    """The caller's model as one batched function from flat inputs to log-probabilities.

    Args:
        model (nn.Module or callable): the classifier; TorchScript and ``torch.export`` modules
            are run as opaque functions (no hooks, no mode changes).
        input_shape (tuple of int, optional): one input's shape; for a model of several inputs a
            tuple of shapes, inverted jointly as one flat input. Default: inferred (the model's
            ``input_shape`` attribute, timm's ``pretrained_cfg``, or the first ``nn.Linear``).
        output (str, optional): how to read the output: ``'logits'``, ``'probs'`` or
            ``'log_probs'``. Default: read from the output itself (rows of probabilities or of
            log-probabilities), else logits. A single output is a binary classifier.
        select (int or str, optional): which output of a model that returns several: an index
            (tuple or list), a key (dict) or ``'.name'`` (an attribute). Default: a tensor as is,
            and the ``logits`` of an object that has them (Hugging Face's ``ModelOutput``).
        forward_args (tuple, optional): passed after the inputs, ``model(x, *forward_args)``;
            tensors must have a batch dimension of 1 (expanded) or none.
        normalize (tuple or str, optional): ``(mean, std)``, one value or one per channel: the
            model expects ``(x - mean) / std`` of pixel images ``x``. The methods then work in
            pixel space (``input_range``, priors, the returned inputs) and the model sees the
            normalised inputs. ``'auto'`` reads them from timm's ``pretrained_cfg``. Default:
            none (the inputs go to the model as they are).
    """

    def __init__(self, model, input_shape=None, output: Optional[str] = None, select: Selector = None,
                 forward_args: tuple = (), normalize=None) -> None:
        if not callable(model):
            raise ValueError(f"`forward_func` must be a callable model, got {type(model).__name__}")
        if output is not None and output not in OUTPUT_KINDS:
            raise ValueError(f"`output` must be one of {OUTPUT_KINDS} or None (read from the output), "
                             f"got {output!r}")
        if select is not None and (isinstance(select, bool) or not isinstance(select, (int, str))):
            raise ValueError("`select` must be None, an int index, a dict key (str) or '.attribute' (e.g. "
                             f"'.logits'), got {select!r}")
        self.model, self.output, self.select = model, output, select
        self.forward_args = tuple(forward_args)
        self.compiled = is_compiled(model)
        self.joint_shapes = joint_shapes(input_shape)
        if self.joint_shapes is not None:
            input_shape = (sum(int(torch.Size(s).numel()) for s in self.joint_shapes),)
        #: joins and splits a multi-input model's inputs (None for one input)
        self._joint = JointInputs(nn.Identity(), self.joint_shapes) if self.joint_shapes is not None else None
        inner = model.module if isinstance(model, CompiledModel) else model
        self.input_shape, self.inferred_how = _infer_input_shape(inner, input_shape)
        #: the batch size a ``torch.export`` program was exported with, when it is fixed (run in
        #: chunks of that size, the last one padded)
        self.fixed_batch = exported_input(inner)[0] if self.compiled else None
        #: the caller's ``normalize`` as given (``'auto'`` resolved), and as a module
        self.normalize, norm = _normalizer(inner, normalize, self.input_shape, self.joint_shapes)
        if self.fixed_batch is not None:
            inner = _FixedBatch(inner, self.fixed_batch)
        # an eager module is always wrapped: its output (a ModelOutput, a tuple) becomes one tensor
        # for the hooks and proofs; the traces keep the caller's module names (caller_model)
        wrap = (self.joint_shapes is not None or self.forward_args or select is not None or norm is not None
                or (isinstance(inner, nn.Module) and not self.compiled))
        call = _Call(inner, self.joint_shapes, self.forward_args, select, norm) if wrap else inner
        if not wrap and not isinstance(inner, nn.Module):  # a plain callable: outputs still selected
            call = _Call(inner, None, (), None)
        #: the model as called: an ``nn.Module`` of one input and one output
        self.module = call
        #: the module to trace and hook, None for a compiled model
        self.traceable: Optional[nn.Module] = None if self.compiled or not isinstance(inner, nn.Module) else call

    def with_args(self, forward_args) -> "ModelAdapter":
        """The same model with extra forward arguments (Captum's ``additional_forward_args``)."""
        if not isinstance(forward_args, tuple):
            forward_args = (forward_args,)
        for i, a in enumerate(forward_args):
            if isinstance(a, Tensor) and a.dim() > 0 and len(a) != 1:
                raise ValueError(
                    f"`additional_forward_args`[{i}] is a tensor with batch dimension {len(a)}: inversion creates "
                    "its own inputs, so extra arguments must be shared by every sample (a batch dimension of 1, "
                    "expanded to each call's batch, or no batch dimension). For per-sample arguments, run one "
                    "call per value.")
        shape = self.joint_shapes if self.joint_shapes is not None else self.input_shape
        return ModelAdapter(self.model, shape, self.output, self.select, self.forward_args + forward_args,
                            self.normalize)

    def flattened(self) -> "ModelAdapter":
        """The same adapter seen as a one-input model of the flat inputs (for a method that
        another one runs on inputs it has already joined)."""
        out = copy.copy(self)
        out.joint_shapes = None
        return out

    # --- dtype and device -----------------------------------------------------------------
    @property
    def dtype_device(self) -> Tuple[torch.dtype, torch.device]:
        """The model's parameter dtype and device (default dtype on the CPU without parameters)."""
        m = self.model.module if isinstance(self.model, CompiledModel) else self.model
        if isinstance(m, nn.Module):
            for p in m.parameters():
                if p.device.type == "meta":
                    raise ValueError(
                        "the model's parameters are on the meta device (shapes without values), so it "
                        "cannot be evaluated: materialize and load its weights first, e.g. "
                        "`model.to_empty(device='cpu'); model.load_state_dict(state_dict)`")
                return p.dtype, p.device
        return torch.get_default_dtype(), torch.device("cpu")

    @property
    def dtype(self) -> torch.dtype:
        return self.dtype_device[0]

    @property
    def device(self) -> torch.device:
        return self.dtype_device[1]

    @property
    def solver_dtype(self) -> torch.dtype:
        """The solvers' dtype (float32 for half and bfloat16 models)."""
        return solver_dtype(self.dtype)

    def cast(self, x: Tensor) -> Tensor:
        """``x`` in the model's dtype and on its device."""
        dtype, device = self.dtype_device
        return x.to(dtype=dtype, device=device)

    # --- calls ----------------------------------------------------------------------------
    def guard(self):
        """Eval mode and frozen parameters for the duration (restored on exit); nothing for an
        opaque model."""
        return model_mode_guard(self.traceable) if self.traceable is not None else contextlib.nullcontext()

    def __call__(self, x: Tensor) -> Tensor:
        """The model's selected output on ``x`` (cast to the model's dtype and device)."""
        return _select(self.module(self.cast(x)), None)

    def log_probs(self, x: Tensor, kind: str, dtype: Optional[torch.dtype] = None) -> Tensor:
        """``(N, C)`` log-probabilities of ``x``, in ``dtype`` (default the model's)."""
        lp = log_probs_from(self(x), kind)
        return lp if dtype is None else lp.to(dtype)

    @staticmethod
    def log_probs_of(out, kind: str) -> Tensor:
        """``(N, C)`` log-probabilities from an output of :attr:`module` (e.g. one a hook or a
        transform saw) of the given kind."""
        return log_probs_from(_select(out, None), kind)

    def trainable_copy(self):
        """A deep copy of the model whose parameters are leaves, for fine-tuning (a TorchScript
        module's ``deepcopy`` clones them through autograd when they require grad, so it goes
        through ``torch.jit.save`` / ``load``)."""
        m = self.model.module if isinstance(self.model, CompiledModel) else self.model
        if isinstance(m, torch.jit.ScriptModule):
            import io

            buf = io.BytesIO()
            torch.jit.save(m, buf)
            buf.seek(0)
            return torch.jit.load(buf, map_location=self.device)
        return copy.deepcopy(m)

    def probs(self, x: Tensor, kind: Optional[str] = None, batch_size: int = 1024) -> Tensor:
        """``(N, C)`` float64 probabilities on the CPU, without gradients, in eval mode."""
        kind = kind or self.probe().kind
        out = []
        with self.guard(), torch.no_grad():
            for i in range(0, len(x), batch_size):
                out.append(self.log_probs(x[i:i + batch_size], kind).exp().double().cpu())
        return torch.cat(out) if out else torch.zeros((0, 0), dtype=torch.float64)

    def flat(self, inputs):
        """A multi-input model's tuple of inputs as one flat tensor; a tensor as is."""
        return self._joint.join(inputs) if self.joint_shapes else inputs

    def unflat(self, x):
        """The inverse of :meth:`flat` (None stays None)."""
        if x is None or not self.joint_shapes:
            return x
        return self._joint.split(x)

    # --- the probe ------------------------------------------------------------------------
    def probe(self) -> Probe:
        """Run the model on two inputs (eval mode): a zero one and a uniform one. Reads the
        output kind and the classes, and checks that the model takes the shape and any batch
        size. Raises a ValueError that names the fix otherwise."""
        dtype, device = self.dtype_device
        g = torch.Generator().manual_seed(0)
        x = torch.cat([torch.zeros((1, *self.input_shape)), torch.rand((1, *self.input_shape), generator=g)]
                      ).to(dtype=dtype, device=device)
        trace = None
        try:
            with self.guard():
                if self.traceable is not None:
                    trace = trace_leaf_modules(self.traceable, x)
                    out = _select(trace.output, None)
                else:
                    with torch.no_grad():
                        out = _select(self.module(x), None)
        except Exception as e:  # noqa: BLE001
            raise ValueError(self._shape_error(e)) from e
        if self.compiled:  # a compiled model may fix the batch size
            try:
                with torch.no_grad():
                    self.module(torch.zeros((3, *self.input_shape), dtype=dtype, device=device))
            except Exception as e:  # noqa: BLE001
                name = type(self.model.module if isinstance(self.model, CompiledModel) else self.model).__name__
                raise ValueError(
                    f"the compiled model ({name}) accepts a batch of 2 but not of 3 ({type(e).__name__}: "
                    f"{str(e)[:200]}); inversion runs it on batches of every size. Export it with a dynamic "
                    "batch dimension, e.g. torch.export.export(model, (x,), "
                    "dynamic_shapes=({0: torch.export.Dim('batch')},))") from e
        if not isinstance(out, Tensor) or out.dim() != 2:
            got = f"{type(out).__name__}{tuple(out.shape) if isinstance(out, Tensor) else ''}"
            if isinstance(out, dict):
                got += f" with keys {sorted(out)}"
            raise ValueError(
                f"the model must return a tensor of shape (N, n_classes), got {got}. For a model that "
                "returns several outputs pass `select=`: an index (select=2), a key (select='logits') or an "
                "attribute (select='.logits')")
        last = trace.calls[-1].module if trace is not None and trace.calls else None
        kind, how = self._kind(out.detach(), last)
        if kind.startswith("binary"):  # no softmax over outputs: nothing of the trace applies
            return Probe(kind, 2, None, how)
        return Probe(kind, out.shape[1], trace, how)

    def _kind(self, out: Tensor, last) -> Tuple[str, str]:
        if out.shape[1] == 1:  # one output: a binary classifier (its sigmoid is p(class 1))
            if self.output is not None:
                return ("binary_logits" if self.output == "logits" else "binary_probs"), "declared"
            sig = isinstance(last, nn.Sigmoid)
            return ("binary_probs" if sig else "binary_logits"), (
                "the model ends in nn.Sigmoid" if sig else "a single output without nn.Sigmoid")
        if self.output is not None:
            return self.output, "declared"
        o = out.double()
        if not bool(torch.isfinite(o).all()):
            return "logits", "its output on the probe is not finite"
        tol = min(0.02, max(1e-6, 10 * out.shape[1] * torch.finfo(out.dtype).eps))
        if bool((o >= 0).all()) and bool(((o.sum(1) - 1).abs() <= tol).all()):
            return "probs", "its rows are probabilities: non-negative, summing to 1"
        if bool((o <= 0).all()) and bool(((o.exp().sum(1) - 1).abs() <= tol).all()):
            return "log_probs", "its rows are log-probabilities: their exponentials sum to 1"
        return "logits", "its rows are neither probabilities nor log-probabilities"

    def _shape_error(self, e: Exception) -> str:
        msg = (f"the model does not accept inputs of shape (N, {', '.join(map(str, self.input_shape))}) "
               f"(`input_shape`={self.input_shape}): {type(e).__name__}: {e}")
        emb = [n for m, n in caller_names(self.traceable).items() if isinstance(m, (nn.Embedding, nn.EmbeddingBag))
               ] if self.traceable is not None else []
        if emb:
            name = emb[0]
            msg += (f". The model has an embedding layer ({name}): its inputs are integer token ids, "
                    "which no gradient method can invert. Invert the embedding's output instead, "
                    f"e.g. LayerInversion(model, layer=model.{name}), or wrap the model so that it "
                    "takes the embeddings as its input")
        elif self.inferred_how:
            msg += (f". `input_shape` was guessed as {self.input_shape} ({self.inferred_how}); pass the "
                    "shape of one input, e.g. input_shape=(1, 28, 28)")
        return msg

    def describe_kind(self, probe: Probe) -> str:
        """One sentence for errors: how the output was read, and how to declare it."""
        if probe.how == "declared":
            return f"The model's output was declared as {self.output!r}."
        return (f"The model's output was read as {probe.kind} ({probe.how}); if that is wrong, declare it: "
                "output='logits', 'probs' or 'log_probs'.")


def log_probs_from(out: Tensor, kind: str) -> Tensor:
    """``(N, C)`` log-probabilities from a model's output of the given kind. A single output is a
    binary classifier: ``binary_logits`` (a logit, sigmoid implied) or ``binary_probs`` (the
    model ends in ``nn.Sigmoid``) give the two classes ``[log(1 - p), log p]``."""
    if kind == "binary_logits":
        z = out[:, :1]
        return torch.cat([nn.functional.logsigmoid(-z), nn.functional.logsigmoid(z)], 1)
    if kind == "binary_probs":
        p = out[:, :1].clamp(torch.finfo(out.dtype).tiny, 1.0)
        return torch.cat([torch.log1p(-p.clamp(max=1 - torch.finfo(out.dtype).eps)), p.log()], 1)
    if kind == "probs":
        return out.clamp_min(torch.finfo(out.dtype).tiny).log()
    if kind == "log_probs":
        return out
    return torch.log_softmax(out, dim=1)


def _infer_input_shape(model, input_shape) -> Tuple[Tuple[int, ...], str]:
    """``(shape, how)``: ``how`` is ``''`` when the caller gave the shape, else where it came from
    (an ``input_shape`` attribute, timm's ``pretrained_cfg['input_size']``, or a guess from the
    first ``nn.Linear``)."""
    if input_shape is not None:
        shape = tuple(input_shape) if not isinstance(input_shape, int) else (input_shape,)
        if not shape or not all(isinstance(s, int) and not isinstance(s, bool) and s > 0 for s in shape):
            raise ValueError(f"`input_shape` must be a tuple of positive ints, got {input_shape!r}")
        return shape, ""
    shape = getattr(model, "input_shape", None)
    if shape is not None:
        return tuple(shape), "the model's `input_shape` attribute"
    shape = exported_input(model)[1]
    if shape:
        return shape, "the input the torch.export program was exported with"
    for attr in ("pretrained_cfg", "default_cfg"):  # timm models declare their input size
        cfg = getattr(model, attr, None)
        if isinstance(cfg, dict) and cfg.get("input_size"):
            return _timm_shape(model, tuple(int(v) for v in cfg["input_size"])), f"the model's {attr}['input_size']"
    cfg = getattr(model, "config", None)  # a Hugging Face model's config
    channels = getattr(cfg, "num_channels", None)
    if isinstance(channels, int) and channels > 0:
        size = getattr(cfg, "image_size", None)
        if isinstance(size, int) and size > 0:
            return (channels, size, size), "the Hugging Face config's num_channels and image_size"
        if isinstance(size, (tuple, list)) and len(size) == 2:
            return (channels, int(size[0]), int(size[1])), "the Hugging Face config's num_channels and image_size"
        return (channels, 224, 224), "the Hugging Face config's num_channels, at 224 px (it gives no image_size)"
    if isinstance(model, nn.Module):
        for m in model.modules():
            if isinstance(m, nn.Linear):
                return (m.in_features,), "the in_features of the first nn.Linear"
    raise ValueError("`input_shape` is required: it cannot be inferred from this model; pass the shape "
                     "of one input without the batch dimension, e.g. input_shape=(3, 224, 224)")


def _normalizer(model, normalize, input_shape, joint) -> Tuple[Optional[tuple], Optional[nn.Module]]:
    """``(mean, std)`` and the :class:`~captum_invert.blocks.normalize.Normalize` module of
    ``normalize`` (None, ``(mean, std)`` or ``'auto'``); a ValueError names the fix."""
    from ..blocks.normalize import Normalize

    if normalize is None:
        return None, None
    if isinstance(normalize, str):
        if normalize != "auto":
            raise ValueError(f"`normalize` must be None, (mean, std) or 'auto', got {normalize!r}")
        cfg = next((c for c in (getattr(model, "pretrained_cfg", None), getattr(model, "default_cfg", None))
                    if isinstance(c, dict) and c.get("mean") is not None and c.get("std") is not None), None)
        if cfg is None:
            raise ValueError("`normalize='auto'` reads the mean and std from timm's `pretrained_cfg`, which this "
                             f"model ({type(model).__name__}) lacks: pass them, e.g. "
                             "normalize=((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))")
        normalize = (tuple(cfg["mean"]), tuple(cfg["std"]))
    if not isinstance(normalize, (tuple, list)) or len(normalize) != 2:
        raise ValueError("`normalize` must be a pair (mean, std), each one number or one per channel, e.g. "
                         f"normalize=((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)), got {normalize!r}")
    if joint is not None:
        raise ValueError("`normalize` applies to a model of one input; for a model of several inputs, "
                         "normalise inside the model")
    mod = Normalize(normalize[0], normalize[1], input_shape)
    return (tuple(mod.mean.reshape(-1).tolist()), tuple(mod.std.reshape(-1).tolist())), mod


def _timm_shape(model, shape: Tuple[int, ...]) -> Tuple[int, ...]:
    """timm's ``pretrained_cfg['input_size']`` is the pretrained weights' size; a model created
    with other ``in_chans`` or ``img_size`` keeps it. Correct it from the model itself: the
    channels of the first convolution, and a patch embedding's ``img_size``."""
    if len(shape) != 3 or not isinstance(model, nn.Module):
        return shape
    c, h, w = shape
    size = getattr(getattr(model, "patch_embed", None), "img_size", None)
    if isinstance(size, (tuple, list)) and len(size) == 2:
        h, w = int(size[0]), int(size[1])
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            c = m.in_channels
            break
    return c, h, w


def param_dtype_device(model) -> Tuple[torch.dtype, torch.device]:
    """The dtype and device of any model (see :attr:`ModelAdapter.dtype_device`)."""
    return ModelAdapter(model, input_shape=(1,)).dtype_device

