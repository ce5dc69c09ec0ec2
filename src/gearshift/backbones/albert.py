"""ALBERT: factorized embeddings (E -> d) and layer groups that share parameters."""

from gearshift.backbones import bert
from gearshift.backbones.base import Backbone, entries, register
from gearshift.errors import ArtifactError


def read_config(c) -> dict:
    L, G, inner = c.num_hidden_layers, c.num_hidden_groups, c.inner_group_num
    if inner != 1:
        raise ArtifactError(
            f"ALBERT config: inner_group_num={inner} is not supported (released ALBERTs use 1)"
        )
    if L % G:
        raise ArtifactError(f"ALBERT config: {L} layers do not split into {G} groups evenly")
    # HF: layer l runs group int(l / (L / G)), whose `inner` layers run one after another.
    layer_to_block = [(layer * G // L) * inner + j for layer in range(L) for j in range(inner)]
    return dict(
        family="albert",
        vocab_size=c.vocab_size,
        hidden_size=c.hidden_size,
        num_layers=L * inner,
        num_heads=c.num_attention_heads,
        intermediate_size=c.intermediate_size,
        num_blocks=G * inner,
        layer_to_block=layer_to_block,
        embedding_size=c.embedding_size,
        max_positions=c.max_position_embeddings,
        type_vocab_size=c.type_vocab_size,
        activation=c.hidden_act,
        layer_norm_eps=c.layer_norm_eps,
        pad_token_id=c.pad_token_id,
        hidden_dropout=c.hidden_dropout_prob,
        attention_dropout=c.attention_probs_dropout_prob,
    )


GROUP = "encoder.albert_layer_groups.{i}.albert_layers.0."  # inner_group_num == 1 naming
TABLE = entries("", "", bert.EMBEDDINGS, ("weight",))
TABLE += entries(
    "",
    "",
    [
        ("embeddings.LayerNorm", "embeddings.norm"),
        ("encoder.embedding_hidden_mapping_in", "embeddings.project"),
    ],
)
TABLE += entries(
    GROUP,
    "blocks.{i}.",
    [
        ("attention.query", "attn.q"),
        ("attention.key", "attn.k"),
        ("attention.value", "attn.v"),
        ("attention.dense", "attn.o"),
        ("attention.LayerNorm", "attn_norm"),
        ("ffn", "ffn.inp"),
        ("ffn_output", "ffn.out"),
        ("full_layer_layer_norm", "ffn_norm"),
    ],
)

SEQUENCE_HEAD = entries("", "head.", [("pooler", "dense"), ("classifier", "out")])
BACKBONE = register(
    Backbone(
        family="albert",
        model_types=("albert",),
        base_prefix="albert.",
        read_config=read_config,
        table=TABLE,
        head_table={
            "classification": SEQUENCE_HEAD,
            "regression": SEQUENCE_HEAD,
            "token_classification": SEQUENCE_HEAD[2:],
        },
        head_defaults=dict(pool="first", dense_activation="tanh", output_bias=True),
        read_head_dropout=lambda c: c.classifier_dropout_prob,
    )
)
