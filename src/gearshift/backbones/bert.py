"""BERT (and MiniLM, which is a BERT): post-LayerNorm encoder with token types and a pooler."""

from gearshift.backbones.base import Backbone, register


def read_config(c) -> dict:
    return dict(
        family="bert",
        vocab_size=c.vocab_size,
        hidden_size=c.hidden_size,
        num_layers=c.num_hidden_layers,
        num_heads=c.num_attention_heads,
        intermediate_size=c.intermediate_size,
        max_positions=c.max_position_embeddings,
        type_vocab_size=c.type_vocab_size,
        activation=c.hidden_act,
        layer_norm_eps=c.layer_norm_eps,
        pad_token_id=c.pad_token_id,
        hidden_dropout=c.hidden_dropout_prob,
        attention_dropout=c.attention_probs_dropout_prob,
    )


LAYER = "encoder.layer.{i}."
BLOCK = "blocks.{i}."
TABLE = [
    ("embeddings.word_embeddings.weight", "embeddings.word.weight", None),
    ("embeddings.position_embeddings.weight", "embeddings.position.weight", None),
    ("embeddings.token_type_embeddings.weight", "embeddings.token_type.weight", None),
    ("embeddings.LayerNorm.weight", "embeddings.norm.weight", None),
    ("embeddings.LayerNorm.bias", "embeddings.norm.bias", None),
]
for hf, rt in [
    ("attention.self.query", "attn.q"),
    ("attention.self.key", "attn.k"),
    ("attention.self.value", "attn.v"),
    ("attention.output.dense", "attn.o"),
    ("attention.output.LayerNorm", "attn_norm"),
    ("intermediate.dense", "ffn.inp"),
    ("output.dense", "ffn.out"),
    ("output.LayerNorm", "ffn_norm"),
]:
    for p in ("weight", "bias"):
        TABLE.append((f"{LAYER}{hf}.{p}", f"{BLOCK}{rt}.{p}", None))

SEQUENCE_HEAD = [
    ("pooler.dense.weight", "head.dense.weight", None),
    ("pooler.dense.bias", "head.dense.bias", None),
    ("classifier.weight", "head.out.weight", None),
    ("classifier.bias", "head.out.bias", None),
]
TOKEN_HEAD = SEQUENCE_HEAD[2:]

BACKBONE = register(
    Backbone(
        family="bert",
        model_types=("bert",),
        base_prefix="bert.",
        read_config=read_config,
        table=TABLE,
        head_table={
            "classification": SEQUENCE_HEAD,
            "regression": SEQUENCE_HEAD,
            "token_classification": TOKEN_HEAD,
        },
        head_defaults=dict(pool="first", dense_activation="tanh", output_bias=True),
        read_head_dropout=lambda c: (
            c.classifier_dropout if c.classifier_dropout is not None else c.hidden_dropout_prob
        ),
    )
)
