from pathlib import Path

import pytest

from trainer.config import Config, build_parser, load_toml, make_config
from trainer.errors import UserError


def test_defaults_are_the_cifar_recipe():
    c = Config()
    assert (c.backbone, c.batch_size, c.epochs, c.temperature, c.optimizer, c.proj_dim) == (
        "resnet18", 512, 500, 0.5, "sgd", 128)
    assert c.peak_lr == pytest.approx(0.24) and c.wd == 5e-4 and not c.blur
    # the fast path is the default: compiled, channels-last, precision measured per machine
    assert (c.compile, c.channels_last, c.precision, c.resolution_schedule) == (True, True, "auto", None)


def test_saved_configs_from_before_auto_precision_still_load():
    assert make_config({"precision": None}).precision == "auto"


def test_optimizer_defaults_follow_their_recipes():
    assert make_config({"optimizer": "lars"}).peak_lr == pytest.approx(2.0)  # 1.0 x 512 / 256
    assert make_config({"optimizer": "lars"}).wd == 1e-4
    assert (make_config({"optimizer": "adam"}).peak_lr, make_config({"optimizer": "adam"}).wd) == (1e-3, 1e-6)
    assert make_config({"lr": 0.5, "batch_size": 256}).peak_lr == 0.5


def test_flags_override_file_override_defaults(tmp_path):
    toml = tmp_path / "recipe.toml"
    toml.write_text('batch-size = 256\nepochs = 100\nbackbone = "resnet34"\ntemperature = 1\n')
    args = vars(build_parser().parse_args(["--epochs", "7", "--no-download"]))
    c = make_config(load_toml(toml), args)
    assert (c.batch_size, c.epochs, c.backbone, c.temperature, c.download) == (256, 7, "resnet34", 1.0, False)


def test_help_documents_every_option_with_its_default():
    text = " ".join(build_parser().format_help().split())  # undo line wrapping
    for flag in ["--data-dir", "--out", "--epochs", "--batch-size", "--backbone", "--device", "--limit-train",
                 "--resume", "--config", "--eval-data-dir", "--temperature", "--optimizer", "--width", "--blur"]:
        assert flag in text
    assert "(default: 512)" in text and "(default: resnet18)" in text


@pytest.mark.parametrize("layer, message", [
    ({"epochs": 0}, "--epochs"),
    ({"backbone": "vgg"}, "resnet18, resnet34, resnet50"),
    ({"bogus": 1}, "unknown option 'bogus'"),
    ({"epochs": "ten"}, "must be float"),
    ({"resolution_schedule": "16:0.7,24"}, "must end at --image-size 32"),
    ({"resolution_schedule": "16:1.2,32"}, "fraction"),
    ({"resolution_schedule": "sixteen"}, "SIZE:FRACTION"),
    ({"precision": "fp8"}, "auto, bf16, fp16, fp32"),
    ({"crop_min_scale": 0.0}, "--crop-min-scale"),
    ({"temperature": -1.0}, "--temperature"),
])
def test_bad_options_are_user_errors(layer, message):
    with pytest.raises(UserError, match=message):
        make_config(layer)


def test_bad_toml(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text("epochs = = 3")
    with pytest.raises(UserError, match="not valid TOML"):
        load_toml(bad)
    with pytest.raises(UserError, match="does not exist"):
        load_toml(tmp_path / "missing.toml")


def test_recipe_files_load_and_the_gpu_recipe_is_the_default():
    recipes = Path(__file__).resolve().parents[1] / "trainer" / "recipes"
    assert make_config(load_toml(recipes / "gpu-default.toml")) == Config()
    cpu = make_config(load_toml(recipes / "cpu-reference.toml"))
    assert cpu.resolution_schedule is None or cpu.resolution_schedule.endswith(",32")
    assert cpu.checkpoint_every == 1 and cpu.epochs > 0


def test_config_json_records_its_paths_without_the_home_directory(tmp_path, monkeypatch):
    from trainer.run_dir import RunDir

    monkeypatch.setenv("HOME", str(tmp_path))
    run = RunDir(tmp_path / "runs" / "a")
    run.write_config(make_config({"data_dir": str(tmp_path / "data"), "eval_data_dir": "/srv/eval", "out": str(run)}))
    saved = run.read_config()  # resume, evaluation and export expand ~ where they read the data
    assert (saved.data_dir, saved.eval_data_dir, saved.out) == ("~/data", "/srv/eval", "~/runs/a")
    assert RunDir(saved.out).path == run.path  # a resume that takes its --out from config.json finds the run
