"""A run's identity (lra.run_identity): what goes into the fingerprint, the source hash of an attention,
the settings that differ from a protocol's defaults, and the checkpoint directory named by them."""

from __future__ import annotations

import sys
import textwrap

import pytest

from lra.run_identity import (RunIdentity, checkpoint_directory, compose_defaults, explain_fresh_start, run_identity,
                              settings, settings_changed, source_files, source_sha256)


def test_settings_leave_out_where_and_how_a_run_logs_and_the_seed():
    a = settings({"seed": 0, "run_dir": "x", "paths": {"data_dir": "d"}, "train": {"steps": 5, "prefetch": 2},
                  "task": {"max_length": 9, "release_dir": "/a", "generator": {"workers": 2, "seed": 3}}})
    b = settings({"seed": 7, "run_dir": "y", "paths": {"data_dir": "e"}, "train": {"steps": 5, "prefetch": 4},
                  "task": {"max_length": 9, "release_dir": "/b", "generator": {"workers": 8, "seed": 3}}})
    assert a == b == {"train.steps": 5, "task.max_length": 9, "task.generator.seed": 3}


def test_remat_is_operational_it_changes_memory_not_numbers():
    """model.remat recomputes the attention in the backward pass (same outputs and gradients, tested in
    tests/test_model.py): runs with and without it share a fingerprint and their checkpoints."""
    base = {"model": {"emb_dim": 16, "remat": "none"}, "train": {"steps": 5}}
    remat = {"model": {"emb_dim": 16, "remat": "attention"}, "train": {"steps": 5}}
    assert settings(base) == settings(remat) == {"model.emb_dim": 16, "train.steps": 5}
    assert run_identity(base).fingerprint == run_identity(remat).fingerprint


def test_the_attention_runs_with_the_tasks_overrides_folded_in():
    resolved = {"attention": {"name": "mra2", "patch_order": False},
                "task": {"attention_overrides": {"mra2": {"patch_order": True}}}}
    assert settings(resolved, {"name": "mra2", "patch_order": True}) == {"attention.name": "mra2",
                                                                         "attention.patch_order": True}


def _identity(steps=5, seed=0, code="abc"):
    return RunIdentity({"train.steps": steps}, {"attention": code}, seed)


def test_fingerprint_ignores_the_seed_and_changes_with_settings_and_code():
    assert _identity(seed=0).fingerprint == _identity(seed=3).fingerprint
    assert _identity(steps=6).fingerprint != _identity().fingerprint
    assert _identity(code="abd").fingerprint != _identity().fingerprint


def test_checkpoint_directory_is_stable_per_command_and_changes_with_a_hyperparameter():
    where = ("checkpoints", "smoke", "listops", "softmax")
    first, rerun, longer = (checkpoint_directory(*where, i) for i in (_identity(), _identity(), _identity(steps=6)))
    assert first == rerun and first != longer and first.parent == longer.parent
    assert first.name == f"seed0-{_identity().fingerprint}" and str(first.parent) == "checkpoints/smoke/listops/softmax"


@pytest.fixture
def kernel_package(tmp_path, monkeypatch):
    """A user's kernel folder: a module importing a helper module beside it, and the harness contract."""
    (tmp_path / "my_attention.py").write_text(textwrap.dedent("""\
        from attention.base import AttentionSpec
        import my_helpers
        class Mine:
            pass
        """))
    (tmp_path / "my_helpers.py").write_text("SCALE = 1.0\n")
    (tmp_path / "unrelated.py").write_text("X = 1\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    for name in ("my_attention", "my_helpers"):
        sys.modules.pop(name, None)
    return tmp_path


def test_source_hash_covers_the_module_and_the_local_modules_it_imports(kernel_package):
    files = source_files("my_attention.Mine")
    assert [f.name for f in files] == ["my_attention.py", "my_helpers.py"]  # not attention/base.py, not unrelated
    before = source_sha256("my_attention.Mine")
    (kernel_package / "unrelated.py").write_text("X = 2\n")
    assert source_sha256("my_attention.Mine") == before
    (kernel_package / "my_helpers.py").write_text("SCALE = 2.0\n")
    assert source_sha256("my_attention.Mine") != before  # an edited helper is an edited kernel
    assert source_sha256("no_such_module.Thing") == "missing:no_such_module.Thing"


def test_built_in_attention_source_includes_its_package_helpers():
    names = {f.name for f in source_files("attention.skyformer.SkyformerAttention")}
    assert {"skyformer.py", "base.py"} <= names and not any(f.parent.name == "lra" for f in source_files(
        "attention.skyformer.SkyformerAttention"))


def test_settings_changed_are_hydra_overrides():
    now = {"train.steps": 200, "model.dtype": "bfloat16", "attention.eps": None, "task.extra": [1, 2]}
    defaults = {"train.steps": 60, "model.dtype": "bfloat16", "attention.eps": 1e-6, "model.remat": False}
    assert settings_changed(now, defaults) == ["attention.eps=null", "~model.remat", "+task.extra=[1,2]",
                                               "train.steps=200"]


def test_protocol_defaults_compose_without_any_override():
    defaults = compose_defaults({"task": "listops", "attention": "linear", "protocol": "smoke"})
    assert defaults["attention"]["name"] == "linear" and defaults["protocol"]["name"] == "smoke"
    assert defaults["train"]["steps"] == 60  # configs/hparams/smoke/listops.yaml


def test_a_fresh_start_says_what_changed(tmp_path):
    old, new = _identity(code="a" * 64), _identity(code="b" * 64)
    previous = tmp_path / f"seed0-{old.fingerprint}"
    previous.mkdir()
    stored = {previous: old.as_dict()}
    line = explain_fresh_start(tmp_path / f"seed0-{new.fingerprint}", new, lambda d: stored[d])
    assert line.startswith("training afresh in") and "the code changed (attention source aaaaaaaaaa -> bbbbbbbbbb)" in line
    longer = _identity(steps=9, code="a" * 64)
    line = explain_fresh_start(tmp_path / f"seed0-{longer.fingerprint}", longer, lambda d: stored[d])
    assert "settings changed (train.steps: 5 -> 9)" in line
    assert explain_fresh_start(tmp_path / "x" / "seed0-1", new, lambda d: stored[d]) is None  # never ran before


def test_run_identity_of_a_resolved_config_hashes_the_attention_source():
    identity = run_identity({"seed": 2, "attention": {"_target_": "attention.softmax.SoftmaxAttention", "name": "s"},
                             "train": {"steps": 3}})
    assert identity.seed == 2 and identity.code["attention"] == source_sha256("attention.softmax.SoftmaxAttention")
    assert "attention._target_" in identity.settings and "seed" not in identity.settings
