"""RoBERTa: BERT's layout with positions counted from padding_idx + 1 and its own head."""

from gearshift.backbones import bert
from gearshift.backbones.base import Backbone, entries, register


def read_config(c) -> dict:
    out = bert.read_config(c)
    out.update(family="roberta", position_offset=c.pad_token_id + 1)
    return out


SEQUENCE_HEAD = entries("classifier.", "head.", [("dense", "dense"), ("out_proj", "out")])

BACKBONE = register(
    Backbone(
        family="roberta",
        model_types=("roberta", "xlm-roberta"),
        base_prefix="roberta.",
        read_config=read_config,
        table=bert.TABLE,
        head_table={
            "classification": SEQUENCE_HEAD,
            "regression": SEQUENCE_HEAD,
            "token_classification": bert.TOKEN_HEAD,
        },
        head_defaults=dict(pool="first", dense_activation="tanh", output_bias=True),
        read_head_dropout=bert.BACKBONE.read_head_dropout,
    )
)
