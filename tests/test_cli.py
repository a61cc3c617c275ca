from dataclasses import dataclass

import pytest

from trainer.cli import build_parser, field_types, option


@dataclass
class Options:
    run: str = option(None, "the run", required=True)
    epochs: int | None = option(None, "how many (default: per protocol)")
    decay: list[float] | None = option(None, "one or more")
    head: str = option("linear", "which head", ("linear", "mlp"))
    flip: bool = option(False, "mirror too")


def test_flags_follow_the_field_types():
    assert field_types(Options) == {"run": (str, False), "epochs": (int, False), "decay": (float, True),
                                    "head": (str, False), "flip": (bool, False)}
    parser = build_parser(Options, "prog")
    args = vars(parser.parse_args(["--run", "r", "--epochs", "3", "--decay", "0", "1e-4", "--flip"]))
    assert args == {"run": "r", "epochs": 3, "decay": [0.0, 1e-4], "flip": True}  # unset flags stay absent
    assert Options(**args).head == "linear"
    assert vars(parser.parse_args(["--run", "r", "--no-flip"])) == {"run": "r", "flip": False}


@pytest.mark.parametrize("argv, message", [([], "--run"), (["--run", "r", "--head", "svm"], "invalid choice"),
                                           (["--run", "r", "--epochs", "x"], "invalid int")])
def test_bad_flags_are_one_line_errors(argv, message, capsys):
    with pytest.raises(SystemExit) as exit:
        build_parser(Options, "prog").parse_args(argv)
    err = capsys.readouterr().err
    assert exit.value.code == 2 and err.startswith("error: ") and message in err and len(err.splitlines()) == 1


def test_help_names_defaults_and_choices():
    text = " ".join(build_parser(Options, "prog").format_help().split())
    assert "which head (default: linear)" in text and "{linear,mlp}" in text
    assert "how many (default: per protocol)" in text and "the run (default" not in text
