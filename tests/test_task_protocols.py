"""Text, Retrieval and Image under the published protocols: the configs rebuild the published models."""

from __future__ import annotations

import pytest
from flax import nnx

from lra.data.tasks import batch_length
from lra.model import DualEncoder, count_parameters
from lra.build import build_attention, build_model
from tests.conftest import compose_config

VOCAB = {"text": 257, "retrieval": 257, "image": 256}


@pytest.mark.parametrize("task,params,row", [
    ("text", 3_486_722, 1000),        # reference 4.3: ~3.49M
    ("retrieval", 1_087_618, 8000),   # ~1.088M; LRA issue #2 measured 1.087M
    ("image", 248_458, 1024),         # LRA issue #2: 248,458
])
def test_official_configs_give_the_published_parameter_counts(task, params, row):
    cfg = compose_config(f"task={task}", "protocol=lra_official")
    model = nnx.eval_shape(lambda: build_model(cfg, VOCAB[task], build_attention(cfg.attention)[1]))
    assert count_parameters(model) == params and batch_length(cfg.task) == row


def test_retrieval_heads_per_protocol():
    official = compose_config("task=retrieval", "protocol=lra_official")
    lineage = compose_config("task=retrieval", "protocol=pytorch_lineage")
    assert (official.model.interaction, official.model.head_layers, official.model.prepend_cls) == ("concat", 2, False)
    assert (lineage.model.interaction, lineage.model.head_layers, lineage.model.pooling) == ("nli", 1, "mean")
    assert lineage.task.max_length == 4096 and lineage.task.content_length == 4000
    model = nnx.eval_shape(lambda: build_model(official, 257, build_attention(official.attention)[1]))
    assert isinstance(model, DualEncoder) and not model.tower.use_cls  # pools the first byte (quirk M1)


def test_task_attention_overrides_apply_only_to_the_named_attention():
    from lra.build import task_attention_config

    mra = compose_config("task=image", "attention=mra2")
    assert task_attention_config(mra).patch_order is True and mra.attention.patch_order is False
    assert build_attention(task_attention_config(mra))[2]["patch_order"] is True  # recorded with the run
    softmax = compose_config("task=image", "attention=softmax")
    assert task_attention_config(softmax) == softmax.attention
    assert task_attention_config(compose_config("task=text", "attention=mra2")).patch_order is False


# The MRA authors' per-task settings (old_code/LRA/models/mra2/8/config.json and 8-s/config.json):
# (patch_order from input_shape [32, 32], initial_prior_first_n_blocks, initial_prior_diagonal_n_blocks).
MRA_PER_TASK = {
    ("listops", "mra2"): (False, 1, 0), ("text", "mra2"): (False, 1, 1), ("retrieval", "mra2"): (False, 1, 1),
    ("image", "mra2"): (True, 1, 0), ("pathfinder", "mra2"): (True, 1, 0),
    ("listops", "mra2_s"): (False, 1, 0), ("text", "mra2_s"): (False, 1, 1), ("retrieval", "mra2_s"): (False, 1, 1),
    ("image", "mra2_s"): (True, 0, 1), ("pathfinder", "mra2_s"): (True, 1, 1),
}


@pytest.mark.parametrize("task,attention", sorted(MRA_PER_TASK))
def test_mra_gets_the_authors_per_task_settings(task, attention):
    from lra.build import task_attention_config

    config = task_attention_config(compose_config(f"task={task}", f"attention={attention}"))
    got = (config.patch_order, config.initial_prior_first_n_blocks, config.initial_prior_diagonal_n_blocks)
    assert got == MRA_PER_TASK[task, attention]


@pytest.mark.parametrize("task", ["listops", "text", "retrieval", "image", "pathfinder"])
def test_pytorch_lineage_turns_on_its_authors_flags_and_other_protocols_do_not(task):
    from lra.build import task_attention_config

    lineage = {"skyformer": {"pinv_init": "global", "eval_landmarks": "resample",
                             "shared_landmarks_across_batch": True, "landmark_positions": "raw"},
               "nystromformer": {"pinv_init": "global", "segment_means": "with_padding"},
               "linear": {"legacy_unnormalised": True},
               **{name: {"budget_from": "input", "row_max_over_empty_blocks": True, "selection_scores": "authors",
                         "authors_stabiliser": True} for name in ("mra2", "mra2_s")},
               "performer": {"redraw": "never", "double_scale": True, "key_offset": "batch", "legacy_qr_signs": True,
                             "feature_eps": 1e-4, "query_offset": "projection", "padded_keys": "zeroed"}}
    for attention, flags in lineage.items():
        on = task_attention_config(compose_config(f"task={task}", f"attention={attention}", "protocol=pytorch_lineage"))
        off = task_attention_config(compose_config(f"task={task}", f"attention={attention}", "protocol=lra_official"))
        assert {key: on[key] for key in flags} == flags
        assert all(off[key] != value for key, value in flags.items())
    mra = task_attention_config(compose_config(f"task={task}", "attention=mra2_s", "protocol=pytorch_lineage"))
    assert mra.patch_order == MRA_PER_TASK[task, "mra2_s"][0]  # the task's own overrides survive the merge
