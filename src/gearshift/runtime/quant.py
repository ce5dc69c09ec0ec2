"""int8 weights: a Linear run by PyTorch's dynamic quantization, saved without pickle.

:class:`Int8Linear` holds a ``torch.ao.nn.quantized.dynamic.Linear`` (weights int8 with a
scale and zero point per output row or per tensor, as torch's observers choose them;
activations quantized on the fly at each call; the kernel is torch's, fbgemm or qnnpack).
Only its state is gearshift's: torch keeps the weight as an opaque packed object that
safetensors cannot store, so the module's state dict is the plain tensors
``weight`` (int8 values), ``weight_scale``, ``weight_zero_point`` and ``bias`` (float), and
loading packs them again. Packing is exact, so a reloaded model computes bitwise the same
outputs.

The packed module is not a registered submodule (its packed object is not a tensor and must
not enter the state dict); it runs on CPU only, as torch's dynamic quantization does.
"""

from __future__ import annotations

import torch
from torch import nn

from gearshift.errors import ConfigError

QSCHEMES = ("per-channel", "per-tensor")
STATE_NAMES = ("weight", "weight_scale", "weight_zero_point", "bias")


def _dynamic():
    import torch.ao.nn.quantized.dynamic as nnqd

    return nnqd


class Int8Linear(nn.Module):
    """``y = x W^T + b`` with ``W`` stored as int8 (``qscheme``: one scale and zero point per
    output row, or one for the whole matrix); runs torch's ``quantized::linear_dynamic``."""

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool = True,
        qscheme: str = "per-channel",
    ) -> None:
        super().__init__()
        if qscheme not in QSCHEMES:
            raise ConfigError(f"int8 qscheme {qscheme!r} unknown; use one of {QSCHEMES}")
        self.in_features, self.out_features, self.qscheme = in_features, out_features, qscheme
        self.has_bias = bias
        # An empty module (load fills it): zeros, scale 1.
        cpu = {"device": "cpu"}  # torch's int8 kernels are CPU ones, whatever the default device
        values = torch.zeros(out_features, in_features, dtype=torch.int8, **cpu)
        if qscheme == "per-channel":
            scale = torch.ones(out_features, dtype=torch.float64, **cpu)
            zero = torch.zeros(out_features, dtype=torch.int64, **cpu)
        else:
            scale = torch.ones((), dtype=torch.float64, **cpu)
            zero = torch.zeros((), dtype=torch.int64, **cpu)
        b = torch.zeros(out_features, **cpu) if bias else None
        self._pack(values, scale, zero, b)

    # ------------------------------------------------------------------ building
    @classmethod
    def from_linear(cls, linear: nn.Linear, qscheme: str = "per-channel") -> Int8Linear:
        """The int8 version of a float ``nn.Linear``: torch's weight observer and
        ``quantize_dynamic``'s conversion (``Linear.from_float``), per channel or per tensor."""
        from torch.ao.quantization import default_dynamic_qconfig, per_channel_dynamic_qconfig

        if qscheme not in QSCHEMES:
            raise ConfigError(f"int8 qscheme {qscheme!r} unknown; use one of {QSCHEMES}")
        if linear.weight.dtype != torch.float32 or linear.weight.device.type != "cpu":
            raise ConfigError(
                f"int8 quantizes float32 CPU Linears; this one is {linear.weight.dtype} on "
                f"{linear.weight.device}: call model.float().cpu() first"
            )
        source = nn.Linear(linear.in_features, linear.out_features, bias=linear.bias is not None)
        with torch.no_grad():
            source.weight.copy_(linear.weight)
            if linear.bias is not None:
                source.bias.copy_(linear.bias)
        source.qconfig = (
            per_channel_dynamic_qconfig if qscheme == "per-channel" else default_dynamic_qconfig
        )
        new = cls(linear.in_features, linear.out_features, linear.bias is not None, qscheme)
        object.__setattr__(new, "_quantized", _dynamic().Linear.from_float(source))
        return new

    def _pack(
        self,
        values: torch.Tensor,
        scale: torch.Tensor,
        zero_point: torch.Tensor,
        bias: torch.Tensor | None,
    ) -> None:
        if self.qscheme == "per-channel":
            w = torch._make_per_channel_quantized_tensor(
                values.to(torch.int8), scale.double(), zero_point.long(), 0
            )
        else:
            w = torch._make_per_tensor_quantized_tensor(
                values.to(torch.int8), float(scale), int(zero_point)
            )
        with torch.device("cpu"):  # also when a model is built on the meta device (shapes only)
            quantized = _dynamic().Linear(
                self.in_features, self.out_features, bias_=bias is not None, dtype=torch.qint8
            )
            quantized.set_weight_bias(w, None if bias is None else bias.float())
        # Not a registered submodule: its packed weight is no tensor (see the module docstring).
        object.__setattr__(self, "_quantized", quantized)

    # ------------------------------------------------------------------ views
    def int8_state(self) -> dict[str, torch.Tensor]:
        """The tensors that describe the weights: int8 values, scale(s), zero point(s), and
        the float bias (absent without one). New tensors on every call."""
        w, b = self._quantized._weight_bias()
        if self.qscheme == "per-channel":
            scale, zero = w.q_per_channel_scales(), w.q_per_channel_zero_points()
        else:
            scale = torch.tensor(w.q_scale(), dtype=torch.float64)
            zero = torch.tensor(w.q_zero_point(), dtype=torch.int64)
        out = {"weight": w.int_repr(), "weight_scale": scale, "weight_zero_point": zero}
        if b is not None:
            out["bias"] = b.detach()
        return out

    @property
    def weight(self) -> torch.Tensor:
        """The dequantized float weight (for analysis; the forward pass uses the int8 one)."""
        return self._quantized.weight().dequantize()

    @property
    def bias(self) -> torch.Tensor | None:
        return self._quantized.bias()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.device.type != "cpu":
            raise RuntimeError(
                f"int8 Linear got input on {x.device}: torch's dynamic quantization runs on CPU "
                "only; run the int8 model on CPU (or quantize a copy for CPU serving)"
            )
        return self._quantized(x)

    def extra_repr(self) -> str:
        return f"in={self.in_features}, out={self.out_features}, int8 {self.qscheme}" + (
            "" if self.has_bias else ", no bias"
        )

    # ------------------------------------------------------------------ state dict
    def _save_to_state_dict(self, destination, prefix, keep_vars) -> None:
        for name, t in self.int8_state().items():
            destination[prefix + name] = t

    def _load_from_state_dict(
        self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
    ) -> None:
        names = [n for n in STATE_NAMES if n != "bias" or self.has_bias]
        missing = [prefix + n for n in names if prefix + n not in state_dict]
        if missing:
            missing_keys.extend(missing)
            return
        expected = {k: v.shape for k, v in self.int8_state().items()}
        got = {n: state_dict[prefix + n] for n in names}
        for n, t in got.items():
            if tuple(t.shape) != tuple(expected[n]):
                error_msgs.append(
                    f"size mismatch for {prefix + n}: copying a param with shape "
                    f"{tuple(t.shape)}, the int8 module ({self.qscheme}) expects "
                    f"{tuple(expected[n])}"
                )
                return
        if got["weight"].dtype != torch.int8:
            error_msgs.append(f"{prefix}weight holds {got['weight'].dtype}, not int8 values")
            return
        self._pack(got["weight"], got["weight_scale"], got["weight_zero_point"], got.get("bias"))
        if strict:
            for key in state_dict:
                if key.startswith(prefix) and key[len(prefix) :] not in STATE_NAMES:
                    unexpected_keys.append(key)
