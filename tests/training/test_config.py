import pytest

from rbwa.data.loader import steps_per_epoch
from rbwa.errors import UserError
from rbwa.training.config import PRESETS, TrainConfig, load_yaml, make_config, preset_defaults, resolve
from rbwa.training.validate import validate


def test_defaults_follow_the_paper():
    cfg = resolve(TrainConfig())
    assert (cfg.epochs, cfg.batch_size, cfg.start_epoch, cfg.augment, cfg.lr_schedule) == (50, 64, 10, "none",
                                                                                          "constant")


def test_make_config_checks_keys_and_types():
    assert make_config(lr=1).lr == 1.0 and isinstance(make_config(lr=1).lr, float)
    with pytest.raises(UserError, match="unknown config key.*: colour"):
        make_config(colour="red")
    with pytest.raises(UserError, match="'epochs' must be of type int"):
        make_config(epochs="ten")
    with pytest.raises(UserError, match="'epochs' must be of type int"):
        make_config(epochs=True)
    with pytest.raises(UserError, match="'nesterov' must be true or false"):
        make_config(nesterov="yes")
    with pytest.raises(UserError, match="list of integers"):
        make_config(lr_milestones=[1.5])
    assert make_config(train_subset=None).train_subset is None


def test_yaml(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("method: rbwa\nstart-epoch: 3\n")
    assert load_yaml(f) == {"method": "rbwa", "start_epoch": 3}
    f.write_text("- a\n- b\n")
    with pytest.raises(UserError, match="must hold a mapping"):
        load_yaml(f)
    f.write_text("a: [\n")
    with pytest.raises(UserError, match="not valid YAML"):
        load_yaml(f)
    with pytest.raises(UserError, match="cannot read config file"):
        load_yaml(tmp_path / "missing.yaml")


def test_resolve_fills_environment_defaults(monkeypatch):
    monkeypatch.setenv("RBWA_DATA", "/data/here")
    cfg = resolve(make_config(start_epoch=7))
    assert cfg.data_dir == "/data/here" and cfg.lr_milestones == [7] and cfg.cache_dir


@pytest.mark.parametrize(("overrides", "message"), [
    ({"epochs": 0}, "epochs must be > 0"),
    ({"start_epoch": 50, "method": "rbwa"}, "start epoch must be in"),
    ({"beta": 1.0}, "beta must be in"),
    ({"width": 0.0}, "width must be > 0"),
    ({"method": "adam"}, "unknown method 'adam'"),
    ({"method": "schedulefree", "lr_schedule": "cosine"}, "schedulefree replaces the LR schedule"),
    ({"implementation": "lr_scale", "method": "swa"}, "lr_scale applies to the rbwa and rbwa-e"),
    ({"nesterov": True, "momentum": 0.0}, "nesterov needs momentum"),
])
def test_validate(overrides, message):
    with pytest.raises(UserError, match=message):
        validate(resolve(make_config(**overrides)))


def test_presets_are_valid_configs():
    for name in PRESETS:
        validate(resolve(make_config(**preset_defaults(name))))
    cpu = preset_defaults("cpu")
    assert cpu["start_epoch"] / cpu["epochs"] == resolve(TrainConfig()).start_epoch / TrainConfig().epochs == 0.2
    # cpu-full: the paper's step count, all of CIFAR-10 at batch 64 = 782 batches an epoch, averaging from 20%
    full = preset_defaults("cpu-full")
    assert full.get("train_subset") is None and full.get("test_subset") is None
    assert steps_per_epoch(50_000, full["batch_size"]) == 782 and full["start_epoch"] / full["epochs"] == 0.2
    assert (full["width"], full["augment"] if "augment" in full else TrainConfig().augment) == (0.125, "none")
    with pytest.raises(UserError, match="unknown preset 'huge'"):
        preset_defaults("huge")


def test_the_start_epoch_follows_the_runs_length_and_stops_only_the_methods_that_use_it(tmp_path):
    """Issue 41: `rbwa train --epochs 5` was refused for every method (the default start epoch 10 was checked first),
    and a missing text file was reported as a bad start epoch."""
    from rbwa.errors import UserError
    from rbwa.training.config import resolve
    from rbwa.training.validate import validate

    assert resolve(make_config(epochs=5)).start_epoch == 1 and resolve(make_config(epochs=50)).start_epoch == 10
    assert resolve(make_config(epochs=15, start_epoch=0)).start_epoch == 0
    validate(make_config(epochs=5))  # every method, the default start
    validate(make_config(epochs=2, start_epoch=5, method="sgd"))  # plain SGD at a constant LR never uses it
    with pytest.raises(UserError, match=r"start epoch must be in \[0, epochs\) = \[0, 2\), got 5 \(--method rbwa"):
        validate(make_config(epochs=2, start_epoch=5, method="rbwa"))
    with pytest.raises(UserError, match="--method sgd, --lr-schedule step and the snapshots"):
        validate(make_config(epochs=2, start_epoch=5, method="sgd", lr_schedule="step"))
    with pytest.raises(UserError, match=f"--dataset text:{tmp_path}/none.txt: the file .* does not exist"):
        validate(make_config(dataset=f"text:{tmp_path}/none.txt", model="gpt", epochs=1, start_epoch=7))


def test_second_review_cases_of_the_start_epoch_and_the_data(tmp_path):
    from rbwa.training.validate import validate

    with pytest.raises(UserError, match="start epoch must be >= 0, got -1"):
        validate(make_config(start_epoch=-1))
    # a run storing snapshots: rbwa posthoc averages those after the start epoch
    with pytest.raises(UserError, match=r"= \[0, 2\), got 9 \(--method sgd"):
        validate(make_config(epochs=2, start_epoch=9, snapshots_per_epoch=2, dataset="digits"))
    (tmp_path / "text.txt").write_text("abc")
    with pytest.raises(UserError, match=f"--dataset text:{tmp_path}: {tmp_path} is a folder, not a file"):
        validate(make_config(dataset=f"text:{tmp_path}", model="gpt"))
    with pytest.raises(UserError, match="is a file, not a folder"):
        validate(make_config(dataset=f"folder:{tmp_path / 'text.txt'}"))
