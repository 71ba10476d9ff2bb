import pytest

from ctvlp.cli import build_parser, main


def test_overrides_may_follow_options() -> None:
    parser = build_parser()
    args, unknown = parser.parse_known_args(["fit", "colipri_c", "a.b=1", "--profile", "cpu_demo", "c.d=2"])
    assert args.profile == "cpu_demo" and args.overrides + unknown == ["a.b=1", "c.d=2"]


def test_a_config_typo_is_a_one_line_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["fit", "colipri_c", "--profile", "cpu_demo", "optim.lrr=1"]) == 2
    err = capsys.readouterr().err
    assert "Unknown config key 'optim.lrr'. Did you mean 'optim.lr'?" in err and "Traceback" not in err


def test_unknown_flags_are_still_rejected() -> None:
    with pytest.raises(SystemExit):
        main(["fit", "colipri_c", "--bogus", "cpu_demo"])


def test_a_missing_data_root_names_the_layout_and_make_demo(tmp_path, capsys) -> None:
    code = main(
        [
            "fit",
            "colipri_c",
            "--profile",
            "cpu_demo",
            f"data.root={tmp_path / 'nowhere'}",
            f"data.cache_dir={tmp_path}",
        ]
    )
    assert code == 2
    err = capsys.readouterr().err
    assert "train_fixed" in err and "make demo" in err
