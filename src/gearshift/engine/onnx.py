"""ONNX export of a gearshift model (or a stack at one setting), run with ONNX Runtime.

Export uses torch's TorchScript exporter (``torch.onnx.export(..., dynamo=False)``): it traces
one forward on an example batch that has padding (so the masked attention path is the one
recorded), with batch and sequence length as dynamic axes. The graph is then checked
against eager on other shapes. A model whose forward depends on the sequence length in Python
(token merging computes n/k and pads to a multiple of k) traces to a graph valid for one
length only: such a model is exported once per *length bucket* (the sequence is padded with
masked pad tokens up to a multiple of ``bucket``), each graph checked against eager.

The fp32 graph is then fused with ONNX Runtime's transformer optimizer (:func:`fuse_graph`)
before the check. ``int8=True`` quantizes the exported (fused) fp32 graph with ONNX Runtime's dynamic int8
(``onnxruntime.quantization.quantize_dynamic``, int8 weights, activations quantized per
call): what Optimum's dynamic quantization does.
"""

from __future__ import annotations

import logging
import math
import shutil
import tempfile
import warnings
import weakref
from collections.abc import Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from gearshift.engine.base import (
    Engine,
    EngineOutput,
    LogitsModule,
    batch_inputs,
    dequantized_copy,
    has_quantized_linear,
    input_names,
    model_config,
    pad_id,
)
from gearshift.errors import ConfigError
from gearshift.runtime.modules import Attention

logger = logging.getLogger("gearshift.engine")

DEFAULT_OPSET = 17
PARITY_ATOL = 1e-4  # fp32 graph vs eager, absolute, on logits


def _require_ort():
    try:
        import onnxruntime  # noqa: F401
    except ImportError as exc:  # pragma: no cover - installed by scripts/setup.sh
        raise ConfigError(
            "the onnx engines need onnx and onnxruntime: run scripts/setup.sh "
            "(or pip install 'onnx>=1.16,<2' 'onnxruntime>=1.18,<2')"
        ) from exc


def example_batch(model: nn.Module, batch: int = 3, length: int = 16, seed: int = 0):
    """A batch to trace or check with: random ids, rows of decreasing length (the last row
    mostly padding, so padded windows and masked attention are exercised), token types 0
    then 1 where the family has them. Returns the inputs in :func:`input_names` order."""
    config = model_config(model)
    g = torch.Generator().manual_seed(seed)
    pid = pad_id(model)
    low = 3 if config.vocab_size > 8 else 0
    ids = torch.randint(low, config.vocab_size, (batch, length), generator=g)
    ids[ids == pid] = (pid + 1) % config.vocab_size
    mask = torch.ones(batch, length, dtype=torch.long)
    for row in range(1, batch):
        real = max(2, length - (length * row) // batch - row)
        if row == batch - 1:
            real = min(real, 2)
        ids[row, real:] = pid
        mask[row, real:] = 0
    types = torch.zeros_like(ids)
    types[:, length // 2 :] = 1
    types = types * mask
    return batch_inputs(input_names(model), ids, mask, types)


def _restore_without_views(self, u: torch.Tensor, x: torch.Tensor, info) -> torch.Tensor:
    """:meth:`TokenRestorer.forward` without in-place writes into views (which the
    TorchScript exporter does not carry into the graph): the same sums, as whole tensors."""
    off = 1 if info.first_kept else 0
    body_u = u[:, off:]
    n_body = x.shape[1] - off
    rep = body_u.repeat_interleave(self.k, dim=1)[:, :n_body]
    if self.bottleneck:
        a = self.down_token(x)
        merged = self.down_merged(body_u).repeat_interleave(self.k, dim=1)[:, :n_body]
        body_a = a[:, off:] + merged
        a = torch.cat([a[:, :off], body_a], dim=1) if off else body_a
        body = self.up(torch.tanh(a))[:, off:] + rep
    else:
        body = rep
    return torch.cat([u[:, :1], body], dim=1) if off else body


_ATTENTION_FORWARD = Attention.forward


def _attention_as_matmuls(self, x, mask, kv_cache=None):
    """:meth:`Attention.forward` written as ONNX Runtime's attention fusion expects it
    (``softmax(q k^T / sqrt(dh) + (1 - keep) * min) v``: the additive padding bias of BERT's
    original code); the same function. Causal masks and caches keep the runtime's form."""
    if mask.causal or kv_cache is not None or self.num_heads == 0:
        return _ATTENTION_FORWARD(self, x, mask, kv_cache)
    B, n, _ = x.shape
    h, dh = self.num_heads, self.head_dim
    q = self.q(x).view(B, n, h, dh).transpose(1, 2)
    k = self.k(x).view(B, n, h, dh).transpose(1, 2)
    v = self.v(x).view(B, n, h, dh).transpose(1, 2)
    scores = torch.matmul(q, k.transpose(2, 3)) / math.sqrt(dh)
    if mask.keep is not None:
        keep = mask.keep[:, None, None, :].to(scores.dtype)
        scores = scores + (1.0 - keep) * torch.finfo(scores.dtype).min
    ctx = torch.matmul(scores.softmax(dim=-1), v).transpose(1, 2).reshape(B, n, h * dh)
    return self.o(ctx), (k, v)


@contextmanager
def exportable():
    """Within the block, modules run an equivalent form the exporter traces faithfully and
    ONNX Runtime fuses: attention as explicit matmuls with an additive padding bias, and the
    plugins' token restorer without in-place writes into views. Not thread-safe (it swaps
    methods on the classes): export from one thread."""
    from gearshift.methods.plugins.modules import TokenRestorer

    original = TokenRestorer.forward
    TokenRestorer.forward = _restore_without_views
    Attention.forward = _attention_as_matmuls
    try:
        yield
    finally:
        TokenRestorer.forward = original
        Attention.forward = _ATTENTION_FORWARD


def export_onnx(
    model: nn.Module,
    path: str | Path,
    setting: Mapping[str, Any] | None = None,
    opset: int = DEFAULT_OPSET,
    seq_len: int | None = None,
) -> Path:
    """Write ``model`` (at ``setting``, for a stack) as an ONNX graph to ``path``.

    Inputs are named input_ids, attention_mask (and token_type_ids where the family has
    them), int64 (B, n); the output is ``logits``. Batch is always dynamic; the sequence
    length is dynamic unless ``seq_len`` fixes it. A torch-int8 model is exported as its
    fp32 equivalent (dequantized weights). Returns ``path``.
    """
    path = Path(path)
    names = input_names(model)
    if has_quantized_linear(model):
        model = dequantized_copy(model)
    module = LogitsModule(model, names, setting).eval()
    example = example_batch(model, length=seq_len or 16)
    with torch.no_grad():
        out = _eager_output(model, names, setting, example)
    if getattr(out, "exit_step", None) is not None:
        raise ConfigError(
            "this model exits early (data-dependent control flow), which one ONNX graph cannot "
            "express; run it with engine='eager', or turn the exits off in its setting"
        )
    dynamic = {name: {0: "batch"} if seq_len else {0: "batch", 1: "sequence"} for name in names}
    dynamic["logits"] = {0: "batch"}
    path.parent.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings(), torch.no_grad(), exportable():
        warnings.simplefilter("ignore")  # tracer warnings about Python bools are expected
        torch.onnx.export(
            module,
            tuple(example),
            str(path),
            input_names=names,
            output_names=["logits"],
            dynamic_axes=dynamic,
            opset_version=opset,
            do_constant_folding=True,
            dynamo=False,
        )
    return path


class _HFLogits(nn.Module):
    def __init__(self, hf_model: nn.Module, names: list[str], regression: bool) -> None:
        super().__init__()
        self.hf, self.names, self.regression = hf_model, names, regression

    def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
        logits = self.hf(**dict(zip(self.names, inputs))).logits
        return logits.squeeze(-1) if self.regression else logits


HF_ROUTE_FAMILIES = ("bert", "roberta", "albert", "distilbert")


def export_via_hf(model: nn.Module, path: str | Path, opset: int = DEFAULT_OPSET) -> Path:
    """Export ``model`` through its Hugging Face form (transformers' eager attention) and fuse
    it fully with ONNX Runtime's transformer optimizer (embeddings + LayerNorm, attention,
    LayerNorm + residual, GELU + bias): the graph a practitioner gets from Optimum for the
    same weights. ConfigError when the model has no HF form (:func:`~gearshift.engine.hf.why_not_hf`)
    or is not an encoder."""
    from gearshift.engine.hf import to_hf

    config = model_config(model)
    if config.family not in HF_ROUTE_FAMILIES:
        raise ConfigError(f"the Hugging Face route is for encoders, not {config.family}")
    names = input_names(model)
    hf_model = to_hf(model, attn_implementation="eager")
    module = _HFLogits(hf_model, names, config.head.kind == "regression").eval()
    example = example_batch(model)
    path = Path(path)
    raw = path.with_suffix(".raw.onnx")
    dynamic = {name: {0: "batch", 1: "sequence"} for name in names} | {"logits": {0: "batch"}}
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            module,
            tuple(example),
            str(raw),
            input_names=names,
            output_names=["logits"],
            dynamic_axes=dynamic,
            opset_version=opset,
            dynamo=False,
        )
    from onnxruntime.transformers import optimizer

    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        opt = optimizer.optimize_model(
            str(raw),
            model_type="bert",
            num_heads=config.hidden_size // config.head_dim,
            hidden_size=config.hidden_size,
        )
    finally:
        root.setLevel(level)
    opt.save_model_to_file(str(path))
    raw.unlink()
    return path


def quantize_int8(fp32_path: str | Path, int8_path: str | Path) -> Path:
    """Dynamic int8 quantization of an ONNX graph with ONNX Runtime (int8 weights,
    per-tensor); returns ``int8_path``."""
    _require_ort()
    from onnxruntime.quantization import QuantType, quantize_dynamic

    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)  # its advice to pre-process is for static quantization
    try:
        quantize_dynamic(
            str(fp32_path),
            str(int8_path),
            weight_type=QuantType.QInt8,
            # fused ops (SkipLayerNormalization, BiasGelu) are outside ONNX's shape inference
            extra_options={"DefaultTensorType": 1},  # onnx.TensorProto.FLOAT
        )
    finally:
        root.setLevel(level)
    return Path(int8_path)


def fuse_graph(path: str | Path, config) -> bool:
    """Fuse the graph at ``path`` in place with ONNX Runtime's transformer optimizer (LayerNorm
    with its residual add, GELU with its bias: what Optimum's optimization levels do); the
    graph is left as it was when the optimizer fails. Returns whether it fused anything.

    Attention fuses when it was exported in :func:`exportable`'s form (encoders)."""
    try:
        from onnxruntime.transformers import optimizer

        model_type = "gpt2" if config.family == "gpt2" else "bert"
        heads = config.hidden_size // config.head_dim
        root = logging.getLogger()
        level = root.level
        root.setLevel(logging.ERROR)
        try:
            opt = optimizer.optimize_model(
                str(path),
                model_type=model_type,
                num_heads=heads,
                hidden_size=config.hidden_size,
                opt_level=1,
            )
        finally:
            root.setLevel(level)
        fused = sum(opt.get_fused_operator_statistics().values())
        if not fused:
            return False
        tmp = Path(path).with_suffix(".fused.tmp")
        opt.save_model_to_file(str(tmp))
        tmp.replace(path)
        return True
    except Exception as exc:  # an unusual graph: keep it unfused, it is still correct
        logger.info("ONNX Runtime's optimizer left %s unfused: %s", path, exc)
        return False


def session(path: str | Path, threads: int | None = None):
    """An ONNX Runtime CPU session on ``path`` with ``threads`` intra-op threads (default:
    torch's current count), one inter-op thread, sequential execution, all graph
    optimizations."""
    _require_ort()
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = int(threads or torch.get_num_threads())
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.log_severity_level = 3
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def _eager_output(model, names, setting, inputs):
    from gearshift.engine.base import applied

    with applied(model, setting):
        return model(**dict(zip(names, inputs)))


def _run(sess, names: list[str], inputs: list[torch.Tensor], quiet: bool = False) -> np.ndarray:
    wanted = {i.name for i in sess.get_inputs()}  # an input the graph never reads is dropped
    feed = {n: t.numpy().astype(np.int64) for n, t in zip(names, inputs) if n in wanted}
    options = None
    if quiet:  # a probe the graph may refuse: its error is the answer, not news
        import onnxruntime as ort

        options = ort.RunOptions()
        options.log_severity_level = 4
    return sess.run(["logits"], feed, options)[0]


def run_padded(
    sess, names: list[str], inputs: list[torch.Tensor], length: int, pad_token_id: int
) -> torch.Tensor:
    """Run ``sess`` on ``inputs`` padded with masked pad tokens up to ``length`` tokens (a
    length bucket's graph); returns the logits, a token head's cut back to the inputs'
    length."""
    n = inputs[0].shape[1]
    if length != n:
        inputs = [
            torch.nn.functional.pad(
                t, (0, length - n), value=pad_token_id if name == "input_ids" else 0
            )
            for name, t in zip(names, inputs)
        ]
    logits = torch.from_numpy(_run(sess, names, inputs))
    return logits[:, :n] if logits.dim() == 3 else logits


class OnnxEngine(Engine):
    """A gearshift model (at one setting) run by ONNX Runtime, fp32 or dynamic int8.

    ``engine(input_ids, attention_mask=None, token_type_ids=None)`` returns an
    :class:`~gearshift.engine.base.EngineOutput`. ``mode`` is "dynamic" (one graph for any
    length) or "bucketed" (one graph per length bucket, built on first use). ``folder``
    keeps the graphs (default: a temporary folder removed with the engine).
    """

    def __init__(
        self,
        model: nn.Module,
        int8: bool = False,
        threads: int | None = None,
        setting: Mapping[str, Any] | None = None,
        folder: str | Path | None = None,
        opset: int = DEFAULT_OPSET,
        bucket: int = 16,
        check: bool = True,
        fuse: bool = True,
    ) -> None:
        _require_ort()
        self.config = model_config(model)
        self.names = input_names(model)
        self.pad_id = pad_id(model)
        self.int8, self.threads, self.opset, self.bucket = int8, threads, opset, bucket
        self.fuse = fuse
        self.setting = dict(setting or {})
        if folder is None:
            folder = tempfile.mkdtemp(prefix="gearshift-onnx-")
            self._finalizer = weakref.finalize(self, shutil.rmtree, folder, True)
        self.folder = Path(folder)
        self._model = dequantized_copy(model) if has_quantized_linear(model) else model
        self._sessions: dict[int | None, Any] = {}
        self.mode = "dynamic"
        self.route = "gearshift"
        self._build(None)
        ok = not check or self._dynamic_ok()
        if not ok and self.route == "hf":  # the HF graph differs: use the runtime's own
            logger.info("the Hugging Face route's graph differs from eager; exporting the runtime")
            self._hf_disabled = True
            for path in (self.folder / "model.onnx", self.graph_path()):
                path.unlink(missing_ok=True)
            self._sessions.clear()
            self._build(None)
            ok = self._dynamic_ok()
        if not ok:
            self.mode = "bucketed"
            self._sessions.clear()
            logger.info("the graph depends on the sequence length: one graph per %d tokens", bucket)

    @property
    def name(self) -> str:
        return "onnx-int8" if self.int8 else "onnx"

    def graph_path(self, seq_len: int | None = None) -> Path:
        """The ONNX file the engine runs for ``seq_len`` (None: the dynamic graph)."""
        stem = "model" if seq_len is None else f"model-n{seq_len}"
        return self.folder / (f"{stem}.int8.onnx" if self.int8 else f"{stem}.onnx")

    def size_on_disk(self) -> int:
        """Bytes of the graph this engine ships: the dynamic graph, or the largest bucket's
        (each bucket's graph holds the same weights)."""
        paths = [self.graph_path(n) for n in self._sessions] or [self.graph_path()]
        return max(p.stat().st_size for p in paths if p.is_file())

    def _hf_route(self) -> bool:
        """Whether the dynamic graph is exported through the model's HF form (a plain encoder
        HF can hold, at no setting): ORT fuses that graph's attention too."""
        from gearshift.engine.hf import why_not_hf

        return (
            self.fuse
            and not getattr(self, "_hf_disabled", False)
            and not self.setting
            and self.config.family in HF_ROUTE_FAMILIES
            and why_not_hf(self._model) is None
        )

    def _build(self, seq_len: int | None):
        fp32 = self.folder / ("model.onnx" if seq_len is None else f"model-n{seq_len}.onnx")
        if not fp32.is_file():
            self.route = "gearshift"
            if seq_len is None and self._hf_route():
                try:
                    export_via_hf(self._model, fp32, self.opset)
                    self.route = "hf"
                except Exception as exc:  # keep gearshift's own graph
                    logger.info("the Hugging Face route failed (%s); exporting the runtime", exc)
            if self.route == "gearshift":
                export_onnx(self._model, fp32, self.setting, self.opset, seq_len)
                if self.fuse:
                    fuse_graph(fp32, self.config)
            if seq_len is not None:  # a bucket's graph: checked at its own length
                probe = example_batch(self._model, 3, seq_len, seed=seq_len)
                if not self._fp32_matches(session(fp32, self.threads), probe):
                    raise ConfigError(
                        f"the ONNX graph for {seq_len} tokens differs from eager by more than "
                        f"{PARITY_ATOL}: run this model on engine 'eager' (and report it)"
                    )
        path = fp32
        if self.int8:
            path = self.graph_path(seq_len)
            if not path.is_file():
                quantize_int8(fp32, path)
        self._sessions[seq_len] = session(path, self.threads)
        return self._sessions[seq_len]

    def _fp32_matches(self, sess, inputs) -> bool:
        with torch.no_grad():
            ref = _eager_output(self._model, self.names, self.setting, inputs).logits.numpy()
        try:
            got = _run(sess, self.names, inputs, quiet=True)
        except Exception as exc:  # ORT refuses a shape the trace fixed
            logger.debug("dynamic graph failed on shape %s: %s", tuple(inputs[0].shape), exc)
            return False
        return got.shape == ref.shape and bool(np.abs(got - ref).max() <= PARITY_ATOL)

    def _dynamic_ok(self) -> bool:
        """Whether the dynamic fp32 graph equals eager at lengths other than the traced one."""
        fp32 = session(self.folder / "model.onnx", self.threads)
        probes = [example_batch(self._model, 2, 7, seed=1), example_batch(self._model, 4, 23, 2)]
        return all(self._fp32_matches(fp32, p) for p in probes)

    def _session_for(self, n: int):
        if self.mode == "dynamic":
            return self._sessions[None], n
        length = -(-n // self.bucket) * self.bucket
        length = min(length, max(n, self.config.max_positions))
        if length not in self._sessions:
            self._build(length)
        return self._sessions[length], length

    def run(self, inputs: list[torch.Tensor]) -> EngineOutput:
        sess, length = self._session_for(inputs[0].shape[1])
        return EngineOutput(logits=run_padded(sess, self.names, inputs, length, self.pad_id))
