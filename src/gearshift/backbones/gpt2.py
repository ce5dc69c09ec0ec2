"""GPT-2: pre-LayerNorm causal decoder, fused QKV in Conv1D layout, final LayerNorm, tied LM head."""

from gearshift.backbones.base import Backbone, entries, register
from gearshift.errors import ArtifactError


def read_config(c) -> dict:
    if getattr(c, "scale_attn_by_inverse_layer_idx", False) or getattr(
        c, "reorder_and_upcast_attn", False
    ):
        raise ArtifactError(
            "GPT-2 variants with scale_attn_by_inverse_layer_idx/reorder_and_upcast_attn are not supported"
        )
    return dict(
        family="gpt2",
        vocab_size=c.vocab_size,
        hidden_size=c.n_embd,
        num_layers=c.n_layer,
        num_heads=c.n_head,
        intermediate_size=c.n_inner or 4 * c.n_embd,
        max_positions=c.n_positions,
        type_vocab_size=0,
        norm_position="pre",
        embedding_norm=False,
        final_norm=True,
        causal=True,
        activation=c.activation_function,
        layer_norm_eps=c.layer_norm_epsilon,
        pad_token_id=c.pad_token_id,
        hidden_dropout=c.resid_pdrop,
        attention_dropout=c.attn_pdrop,
        tie_word_embeddings=True,
    )


TABLE = [
    ("wte.weight", "embeddings.word.weight", None),
    ("wpe.weight", "embeddings.position.weight", None),
    ("ln_f.weight", "final_norm.weight", None),
    ("ln_f.bias", "final_norm.bias", None),
    ("h.{i}.attn.c_attn.weight", "blocks.{i}.attn.{qkv}.weight", "qkv"),
    ("h.{i}.attn.c_attn.bias", "blocks.{i}.attn.{qkv}.bias", "qkv"),
    ("h.{i}.attn.c_proj.weight", "blocks.{i}.attn.o.weight", "T"),
    ("h.{i}.attn.c_proj.bias", "blocks.{i}.attn.o.bias", None),
    ("h.{i}.mlp.c_fc.weight", "blocks.{i}.ffn.inp.weight", "T"),
    ("h.{i}.mlp.c_fc.bias", "blocks.{i}.ffn.inp.bias", None),
    ("h.{i}.mlp.c_proj.weight", "blocks.{i}.ffn.out.weight", "T"),
    ("h.{i}.mlp.c_proj.bias", "blocks.{i}.ffn.out.bias", None),
]
TABLE += entries("h.{i}.", "blocks.{i}.", [("ln_1", "attn_norm"), ("ln_2", "ffn_norm")])

BACKBONE = register(
    Backbone(
        family="gpt2",
        model_types=("gpt2",),
        base_prefix="transformer.",
        read_config=read_config,
        table=TABLE,
        head_table={
            "classification": [("score.weight", "head.out.weight", None)],
            "regression": [("score.weight", "head.out.weight", None)],
            "token_classification": [
                ("classifier.weight", "head.out.weight", None),
                ("classifier.bias", "head.out.bias", None),
            ],
        },
        head_defaults=dict(pool="last", dense_activation=None, output_bias=False),
        read_head_dropout=lambda c: c.summary_first_dropout,
    )
)
