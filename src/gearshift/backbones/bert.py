"""BERT (and MiniLM, which is a BERT): post-LayerNorm encoder with token types and a pooler."""

from gearshift.backbones.base import Backbone, entries, register


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


EMBEDDINGS = [
    ("embeddings.word_embeddings", "embeddings.word"),
    ("embeddings.position_embeddings", "embeddings.position"),
    ("embeddings.token_type_embeddings", "embeddings.token_type"),
]
TABLE = entries("", "", EMBEDDINGS, ("weight",)) + entries(
    "", "", [("embeddings.LayerNorm", "embeddings.norm")]
)
TABLE += entries(
    "encoder.layer.{i}.",
    "blocks.{i}.",
    [
        ("attention.self.query", "attn.q"),
        ("attention.self.key", "attn.k"),
        ("attention.self.value", "attn.v"),
        ("attention.output.dense", "attn.o"),
        ("attention.output.LayerNorm", "attn_norm"),
        ("intermediate.dense", "ffn.inp"),
        ("output.dense", "ffn.out"),
        ("output.LayerNorm", "ffn_norm"),
    ],
)

SEQUENCE_HEAD = entries("", "head.", [("pooler.dense", "dense"), ("classifier", "out")])
TOKEN_HEAD = entries("", "head.", [("classifier", "out")])

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
