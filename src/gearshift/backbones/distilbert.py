"""DistilBERT: BERT without token types or pooler; a ReLU pre-classifier in its head."""

from gearshift.backbones.base import Backbone, entries, register


def read_config(c) -> dict:
    return dict(
        family="distilbert",
        vocab_size=c.vocab_size,
        hidden_size=c.dim,
        num_layers=c.n_layers,
        num_heads=c.n_heads,
        intermediate_size=c.hidden_dim,
        max_positions=c.max_position_embeddings,
        type_vocab_size=0,
        activation=c.activation,
        layer_norm_eps=1e-12,
        pad_token_id=c.pad_token_id,
        hidden_dropout=c.dropout,
        attention_dropout=c.attention_dropout,
    )


TABLE = entries(
    "embeddings.",
    "embeddings.",
    [("word_embeddings", "word"), ("position_embeddings", "position")],
    ("weight",),
) + entries("", "", [("embeddings.LayerNorm", "embeddings.norm")])
TABLE += entries(
    "transformer.layer.{i}.",
    "blocks.{i}.",
    [
        ("attention.q_lin", "attn.q"),
        ("attention.k_lin", "attn.k"),
        ("attention.v_lin", "attn.v"),
        ("attention.out_lin", "attn.o"),
        ("sa_layer_norm", "attn_norm"),
        ("ffn.lin1", "ffn.inp"),
        ("ffn.lin2", "ffn.out"),
        ("output_layer_norm", "ffn_norm"),
    ],
)

SEQUENCE_HEAD = entries("", "head.", [("pre_classifier", "dense"), ("classifier", "out")])
BACKBONE = register(
    Backbone(
        family="distilbert",
        model_types=("distilbert",),
        base_prefix="distilbert.",
        read_config=read_config,
        table=TABLE,
        head_table={
            "classification": SEQUENCE_HEAD,
            "regression": SEQUENCE_HEAD,
            "token_classification": SEQUENCE_HEAD[2:],
        },
        head_defaults=dict(pool="first", dense_activation="relu", output_bias=True),
        read_head_dropout=lambda c: c.seq_classif_dropout,
    )
)
