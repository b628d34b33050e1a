"""K independent generator fits in one step: stacked parameters and a per-fit Adam.

DIP uses the batch statistics of a single image in every BatchNorm, so K fits cannot share
one batch. Their parameters are stacked instead (leading dimension K, one slot per fit) and
the network is applied per slot, either with ``torch.func.vmap`` over
``torch.func.functional_call`` (one batched kernel per layer: grouped convolutions; what a
GPU wants) or slot by slot in a Python loop (what a 2-core CPU runs fastest, and bit-identical
to a single run), or slot by slot in parallel worker threads, each fit on one CPU thread
(``"threads"``: K fits on K cores without the synchronisation of intra-op threads). Either way
the fits never mix: each slot's gradient is its own fit's gradient, and :class:`StackedAdam`
keeps one step count per slot.

Example:
    >>> from oscfast.models import NetSpec
    >>> spec = NetSpec().scaled(0.125)
    >>> fits = StackedGenerators(spec, output_channels=3, seeds=[0, 0, 5])
    >>> z = torch.rand(3, 1, spec.input_channels, 32, 32)
    >>> out = fits(z)
    >>> out.shape
    torch.Size([3, 1, 3, 32, 32])
    >>> bool(torch.equal(out[0], out[1])), bool(torch.equal(out[0], out[2]))
    (True, False)
"""
from __future__ import annotations

import copy
import logging
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Literal, TypeVar

import torch
from torch import nn
from torch.func import functional_call, vmap

from oscfast.models import NetSpec, build_net

logger = logging.getLogger(__name__)

__all__ = ["CUDA_STRATEGY", "Strategy", "StackedAdam", "StackedGenerators", "initial_net", "resolve_strategy",
           "without_running_stats"]

Strategy = Literal["auto", "loop", "vmap", "threads"]
_R = TypeVar("_R")

#: what ``strategy="auto"`` runs on CUDA with several fits. Unmeasured: no GPU has run this
#: version (vmap's batched kernels are the usual GPU choice; bench/gpu_check.sh times both)
CUDA_STRATEGY: Literal["loop", "vmap"] = "vmap"


def resolve_strategy(strategy: Strategy, device: torch.device, num_fits: int) -> Literal["loop", "vmap", "threads"]:
    """The strategy ``"auto"`` stands for: :data:`CUDA_STRATEGY` on CUDA with several fits,
    the loop otherwise (measured faster on a 2-core CPU, bench/results/throughput-cpu2.md,
    and bit-identical to a single run); ``"loop"``, ``"vmap"`` and ``"threads"`` as given.

    ``"threads"`` (CPU only) steps the fits in parallel worker threads, one intra-op thread
    each: every fit computes what a single run with ``torch.set_num_threads(1)`` computes,
    bit for bit, which differs in rounding from a run with more intra-op threads.

    Raises:
        ValueError: an unknown strategy, or ``"threads"`` on a device that is not a CPU.
    """
    if strategy not in ("auto", "loop", "vmap", "threads"):
        raise ValueError(f"unknown strategy {strategy!r}; expected 'auto', 'loop', 'vmap' or 'threads'")
    if strategy == "threads" and device.type != "cpu":
        raise ValueError(f"strategy 'threads' runs fits on CPU threads; the device is {device}")
    if strategy != "auto":
        return strategy
    return CUDA_STRATEGY if device.type == "cuda" and num_fits > 1 else "loop"


def without_running_stats(net: nn.Module) -> nn.Module:
    """Make every BatchNorm of ``net`` use batch statistics only (no running buffers).

    DIP never puts BatchNorm in eval mode (reference-configs.md section 1), so the running
    averages are never read; dropping them leaves the output unchanged, lets ``vmap`` run the
    layer, and makes an exported generator use batch statistics too. Modifies ``net`` (a net
    this module built itself) and returns it.
    """
    for module in net.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            module.running_mean = None
            module.running_var = None
            module.num_batches_tracked = None
            module.track_running_stats = False
    return net


#: PyTorch's default initialisation draws from the global CPU generator: two threads building
#: nets at once would interleave their draws, so building is serialised (the generator's state
#: is forked and restored around it, so the caller's random state is not touched either)
_INIT_LOCK = threading.Lock()


def initial_net(spec: NetSpec, output_channels: int, seed: int) -> nn.Module:
    """The generator of a fit with ``seed``: PyTorch default init drawn from ``seed`` on the
    CPU (the same weights on every device), BatchNorm on batch statistics."""
    with _INIT_LOCK, torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        net = build_net(spec, output_channels)
    return without_running_stats(net).train()


class StackedGenerators(nn.Module):
    """K generators of one architecture with stacked parameters (one slot per fit).

    Args:
        spec: the architecture.
        output_channels: image channels.
        seeds: one seed per fit; equal seeds give equal initial weights.
        strategy: ``"loop"`` (slot by slot), ``"vmap"`` (batched), ``"threads"`` (slot by
            slot in parallel threads, :meth:`map_slots`) or ``"auto"`` (:func:`resolve_strategy`).
        device: where the parameters live.
        compile: run the forward through ``torch.compile``.
        compute_dtype: ``torch.bfloat16`` to run the convolutions in bf16 under vmap. Autocast
            does not reach inside ``vmap`` (the batched convolutions stay fp32, measured on
            torch 2.13's CPU), so the vmap forward casts the convolutions' weights and its input
            itself, as autocast would: convolutions in bf16, BatchNorm's affine parameters and
            everything after the network in fp32. The loop runs under the caller's autocast.

    Shape:
        forward: (K, 1, C_in, H, W) -> (K, 1, C_out, H', W'); with ``slots``, (S, 1, C_in, H,
        W) -> (S, 1, C_out, H', W') for the S slots named.
    """

    def __init__(
        self,
        spec: NetSpec,
        output_channels: int,
        seeds: Sequence[int],
        *,
        strategy: Strategy = "auto",
        device: torch.device | str = "cpu",
        compile: bool = False,
        compute_dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        if len(seeds) < 1:
            raise ValueError("need at least one fit")
        device = torch.device(device)
        self.spec = spec
        self.output_channels = output_channels
        self.num_fits = len(seeds)
        self.strategy: Literal["loop", "vmap", "threads"] = resolve_strategy(strategy, device, self.num_fits)
        self.compute_dtype = compute_dtype
        nets = [initial_net(spec, output_channels, seed) for seed in seeds]
        self._template = [copy.deepcopy(nets[0]).to("meta")]  # a list: not a submodule
        names = [name for name, _ in nets[0].named_parameters()]
        self.names = names
        convolutions = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose2d)
        #: parameters the vmap forward casts to ``compute_dtype`` (weights and biases of convolutions)
        self._cast = {
            f"{module_name}.{name}" if module_name else name
            for module_name, module in nets[0].named_modules() if isinstance(module, convolutions)
            for name, _ in module.named_parameters(recurse=False)
        }
        stacked = {
            name: torch.stack([dict(net.named_parameters())[name].detach() for net in nets]).to(device)
            for name in names
        }
        self.stacked = nn.ParameterDict({_key(name): nn.Parameter(value) for name, value in stacked.items()})
        # the loop strategy runs one shell module per slot whose parameter slots are filled
        # with views of the stacked tensors at each call: functional_call's module walk costs
        # milliseconds per call, which small nets notice
        per_slot = self.strategy in ("loop", "threads")
        self._shells = [copy.deepcopy(self._template[0]) for _ in range(self.num_fits)] if per_slot else []
        self._owners = [_owner(shell, names) for shell in self._shells]
        #: the worker threads of the "threads" strategy (started on first use)
        self._pool: ThreadPoolExecutor | None = None
        self._pool_workers = 0
        if compute_dtype is not None and self.strategy == "vmap":
            # as autocast would: each convolution's input in the compute dtype (a BatchNorm with
            # fp32 affine parameters hands fp32 on)
            for module in self._template[0].modules():
                if isinstance(module, convolutions):
                    module.register_forward_pre_hook(_cast_input(compute_dtype))
        #: torch.compile of the functional forward (one graph per shape, compiled on first use);
        #: on failure the net runs eagerly and the reason is logged once
        self._compiled: Callable | None = None
        if compile:
            template = self._template[0]
            single = lambda params, x: functional_call(template, params, (x,))  # noqa: E731
            self._compiled = torch.compile(single if self.strategy != "vmap" else vmap(single))

    # -- parameters ---------------------------------------------------------------------------
    def slot_parameters(self, slot: int) -> dict[str, torch.Tensor]:
        """Views of one fit's parameters (gradients flow into the stacked tensors)."""
        return {name: self.stacked[_key(name)][slot] for name in self.names}

    def reset_slot(self, slot: int, seed: int) -> None:
        """Give slot ``slot`` the initial weights of a new fit with ``seed``."""
        fresh = dict(initial_net(self.spec, self.output_channels, seed).named_parameters())
        with torch.no_grad():
            for name in self.names:
                self.stacked[_key(name)][slot].copy_(fresh[name])

    def module(self, slot: int) -> nn.Module:
        """A standalone copy of fit ``slot`` as an ordinary module (CPU), for export."""
        net = initial_net(self.spec, self.output_channels, 0)
        with torch.no_grad():
            for name, parameter in net.named_parameters():
                parameter.copy_(self.stacked[_key(name)][slot].detach().cpu())
        return net

    # -- forward ------------------------------------------------------------------------------
    def forward(self, z: torch.Tensor, slots: Sequence[int] | None = None) -> torch.Tensor:
        """The fits' outputs for their inputs ``z``; with ``slots``, only those fits run (the
        others cost nothing; their gradients stay as they are)."""
        count = self.num_fits if slots is None else len(slots)
        if z.ndim != 5 or z.shape[0] != count:
            raise ValueError(f"input must have shape (K={count}, 1, C, H, W), got {tuple(z.shape)}")
        if self._compiled is not None:
            try:
                return self._compiled_forward(z, slots)
            except Exception as error:  # noqa: BLE001 - any compiler failure falls back to eager
                logger.warning("torch.compile failed (%s: %s); running the generator eagerly", type(error).__name__, error)
                self._compiled = None
        if self.strategy in ("loop", "threads"):
            chosen = range(self.num_fits) if slots is None else slots
            return torch.stack([self.slot_forward(k, z[i]) for i, k in enumerate(chosen)])
        template = self._template[0]
        params = {name: self._vmap_parameter(name, slots) for name in self.names}
        if self.compute_dtype is None:
            return vmap(lambda p, x: functional_call(template, p, (x,)))(params, z)
        # the casts are explicit; a caller's autocast inside vmap fails on the mixed dtypes
        with torch.autocast(z.device.type, enabled=False):
            return vmap(lambda p, x: functional_call(template, p, (x,)))(params, z)

    @property
    def per_slot(self) -> bool:
        """Whether the fits run one by one (:meth:`slot_forward`, :meth:`map_slots`): the loop
        and threads strategies, unless compiled."""
        return self.strategy in ("loop", "threads") and self._compiled is None

    def slot_forward(self, slot: int, z: torch.Tensor) -> torch.Tensor:
        """Fit ``slot``'s output for its input ``z`` (1, C, H, W) (loop and threads strategies).

        The slot's parameters enter the graph as leaves of their own: detached views of the
        stacked tensors whose ``.grad`` are the matching views of the stacked gradients, so a
        backward adds this fit's gradient in place into its rows (the gradients must be set,
        e.g. zeroed by :meth:`StackedAdam.zero_grad`; missing ones are zeroed here). The slots'
        graphs share nothing, so they can be differentiated separately and concurrently.
        """
        stacked = [self.stacked[_key(name)] for name in self.names]
        differentiable = torch.is_grad_enabled()
        for (module, attribute), tensor in zip(self._owners[slot], stacked):
            leaf = tensor[slot].detach()
            if differentiable and tensor.requires_grad:
                if tensor.grad is None:
                    tensor.grad = torch.zeros_like(tensor)
                leaf.requires_grad_()
                leaf.grad = tensor.grad[slot]
            module._parameters[attribute] = leaf
        return self._shells[slot](z)

    def map_slots(self, function: Callable[[int], _R], slots: Sequence[int] | None = None) -> list[_R]:
        """``[function(k) for k in slots]`` (all K slots by default); with the ``"threads"``
        strategy the slots run in parallel worker threads (as many as the caller's intra-op
        threads, at most K), each with one intra-op thread. ``function`` must touch only slot
        ``k`` (its forward via :meth:`slot_forward`, its loss and its backward). The pool is
        sized by K, not by the slots named: a fit computes on one thread whichever others run
        with it (a late-start twin's fit A before fit B joins), so its numbers do not change."""
        chosen = list(range(self.num_fits)) if slots is None else list(slots)
        workers = min(self.num_fits, torch.get_num_threads())
        if self.strategy != "threads" or workers < 2:
            return [function(k) for k in chosen]
        if self._pool is None or self._pool_workers != workers:
            if self._pool is not None:
                self._pool.shutdown(wait=False)
            self._pool = ThreadPoolExecutor(workers, thread_name_prefix="oscfast-fit")
            self._pool_workers = workers
        if torch.is_grad_enabled():  # the workers only write into existing gradients
            with torch.no_grad():
                for tensor in self.stacked.values():
                    if tensor.requires_grad and tensor.grad is None:
                        tensor.grad = torch.zeros_like(tensor)

        def on_one_thread(k: int) -> _R:
            torch.set_num_threads(1)  # every call: MKL's count is process-wide and the caller resets it
            return function(k)

        threads = torch.get_num_threads()
        try:
            return list(self._pool.map(on_one_thread, chosen))
        finally:
            torch.set_num_threads(threads)  # MKL's thread count is process-wide: give the caller its own back

    def _vmap_parameter(self, name: str, slots: Sequence[int] | None = None) -> torch.Tensor:
        """A stacked parameter as the vmap forward uses it (cast for bf16 convolutions; the
        cast is differentiable, so the fp32 master weights get the gradients); with ``slots``,
        only their rows (stacked views: no index tensor made from host data, so a CUDA graph
        can capture it, and the gradients flow back into those rows only)."""
        tensor = self.stacked[_key(name)]
        if slots is not None:
            tensor = torch.stack([tensor[k] for k in slots])
        if self.compute_dtype is not None and name in self._cast:
            return tensor.to(self.compute_dtype)
        return tensor


    def _compiled_forward(self, z: torch.Tensor, slots: Sequence[int] | None = None) -> torch.Tensor:
        assert self._compiled is not None
        if self.strategy != "vmap":
            chosen = range(self.num_fits) if slots is None else slots
            return torch.stack([self._compiled(self.slot_parameters(k), z[i]) for i, k in enumerate(chosen)])
        if slots is None:
            return self._compiled({name: self.stacked[_key(name)] for name in self.names}, z)
        return self._compiled({name: torch.stack([self.stacked[_key(name)][k] for k in slots]) for name in self.names}, z)


def _cast_input(dtype: torch.dtype) -> Callable:
    """A forward pre-hook that casts a module's floating-point inputs to ``dtype``."""

    def hook(_module: nn.Module, inputs: tuple) -> tuple:
        return tuple(x.to(dtype) if isinstance(x, torch.Tensor) and x.is_floating_point() else x for x in inputs)

    return hook


def _key(name: str) -> str:
    return name.replace(".", "__")


def _owner(root: nn.Module, names: Sequence[str]) -> list[tuple[nn.Module, str]]:
    """(submodule, attribute) holding each dotted parameter name of ``root``."""
    owners = []
    for name in names:
        path, _, attribute = name.rpartition(".")
        owners.append((root.get_submodule(path) if path else root, attribute))
    return owners


class StackedAdam:
    """Adam (PyTorch's defaults and update order) over stacked parameters, one step count per
    slot, so that each fit is an independent Adam run and a slot can start a new fit while
    the others go on (:meth:`reset_slot`).

    The update is elementwise, so slot k's parameters move exactly as a separate Adam on that
    fit alone would move them, up to float rounding of the per-slot step size.

    Args:
        params: stacked parameters, leading dimension K.
        num_slots: K.
        lr, betas, eps: as ``torch.optim.Adam``.
    """

    def __init__(
        self,
        params: Sequence[torch.Tensor],
        *,
        num_slots: int,
        lr: float,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
    ) -> None:
        self.params = list(params)
        if not self.params:
            raise ValueError("no parameters to optimise")
        device = self.params[0].device
        self.lr, self.betas, self.eps = float(lr), betas, float(eps)
        self.num_slots = num_slots
        self.exp_avg = [torch.zeros_like(p) for p in self.params]
        self.exp_avg_sq = [torch.zeros_like(p) for p in self.params]
        self.steps = torch.zeros(num_slots, dtype=torch.float64, device=device)

    def zero_grad(self) -> None:
        """Set the gradients to zero in place (keeps the tensors: CUDA-graph safe)."""
        grads = [p.grad for p in self.params if p.grad is not None]
        if grads:
            torch._foreach_zero_(grads)

    @torch.no_grad()
    def step(self) -> None:
        """One Adam step for every slot."""
        beta1, beta2 = self.betas
        self.steps.add_(1)
        # the same arithmetic as torch.optim.Adam (foreach): bias corrections in float64,
        # rounded once to the parameters' dtype, p += (-step_size * m) / (sqrt(v) / bc2 + eps)
        dtype = self.params[0].dtype
        bias_correction1 = 1 - torch.pow(beta1, self.steps)
        bias_correction2_sqrt = torch.sqrt(1 - torch.pow(beta2, self.steps)).to(dtype)
        neg_step_size = (-self.lr / bias_correction1).to(dtype)
        params = [p for p in self.params if p.grad is not None]
        index = [i for i, p in enumerate(self.params) if p.grad is not None]
        grads = [p.grad for p in params]
        exp_avg = [self.exp_avg[i] for i in index]
        exp_avg_sq = [self.exp_avg_sq[i] for i in index]
        torch._foreach_lerp_(exp_avg, grads, 1 - beta1)
        torch._foreach_mul_(exp_avg_sq, beta2)
        torch._foreach_addcmul_(exp_avg_sq, grads, grads, value=1 - beta2)
        denom = torch._foreach_sqrt(exp_avg_sq)
        torch._foreach_div_(denom, [_per_slot(bias_correction2_sqrt, p) for p in params])
        torch._foreach_add_(denom, self.eps)
        scaled = torch._foreach_mul(exp_avg, [_per_slot(neg_step_size, p) for p in params])
        torch._foreach_addcdiv_(params, scaled, denom)

    @torch.no_grad()
    def reset_slot(self, slot: int) -> None:
        """Forget slot ``slot``'s moments and step count (a new fit starts there)."""
        for tensor in self.exp_avg + self.exp_avg_sq:
            tensor[slot].zero_()
        self.steps[slot] = 0

    def state_tensors(self) -> list[torch.Tensor]:
        """Every tensor of the optimiser state (for checkpoints and graph warm-up undo)."""
        return [*self.exp_avg, *self.exp_avg_sq, self.steps]


def _per_slot(values: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """(K,) -> (K, 1, ..., 1) broadcastable against a stacked parameter."""
    return values.view(-1, *([1] * (like.ndim - 1)))
