"""Command-line options made from the config dataclasses: one default per setting, presets
below the command line, and preset values checked against the field's type and choices."""

import argparse
import dataclasses

import pytest

from sparsearch.base.errors import ConfigError, SparsearchError
from sparsearch.base.settings import settings
from sparsearch.launch.config import SearchConfig
from sparsearch.launch.options import Options, read_preset
from sparsearch.search.evolution import EvolutionConfig
from sparsearch.search.registry import ENGINES


def _options(*classes: type, engines: bool = False) -> Options:
    options = Options(argparse.ArgumentParser(prog="test", exit_on_error=False))
    for cls in classes:
        options.add_settings(cls)
    if engines:
        options.add_engine_settings({name: entry.config for name, entry in ENGINES.items()},
                                    options.parser.add_argument_group("engine"))
    return options


def _resolve(options: Options, argv: list[str], preset: dict | None = None):
    return options.resolve(options.parser.parse_args(argv), preset or {})


def test_no_flags_build_the_dataclass_defaults():
    options = _options(SearchConfig, engines=True)
    o = _resolve(options, [])
    assert o.config(SearchConfig) == SearchConfig()
    for name, entry in ENGINES.items():
        assert o.config(entry.config) == entry.config(), name
    assert not o.given("generations") and o.generations == EvolutionConfig().generations


def test_a_shared_engine_field_is_one_flag_naming_its_engines():
    options = _options(engines=True)
    owners = {name for name, entry in ENGINES.items() if "generations" in {f.name for f in settings(entry.config)}}
    assert {"evolution", "nsga2"} <= owners
    assert set(options.known["generations"].owners) == owners
    o = _resolve(options, ["--generations", "7"])
    assert all(o.config(ENGINES[name].config).generations == 7 for name in owners)


def test_the_command_line_wins_over_the_preset_which_wins_over_the_default():
    options = _options(EvolutionConfig)
    o = _resolve(options, ["--offspring", "3"], {"offspring": 5, "generations": 9})
    cfg = o.config(EvolutionConfig)
    assert (cfg.offspring, cfg.generations, cfg.max_flips) == (3, 9, EvolutionConfig().max_flips)
    assert o.cli == {"offspring"} and o.preset == {"offspring", "generations"}


def test_a_default_on_switch_is_a_no_flag():
    assert EvolutionConfig().fresh_data is True
    options = _options(EvolutionConfig)
    assert options.known["fresh_data"].flag == "--no-fresh-data"
    assert _resolve(options, ["--no-fresh-data"]).config(EvolutionConfig).fresh_data is False
    assert _resolve(options, [], {"fresh_data": False}).config(EvolutionConfig).fresh_data is False


@pytest.mark.parametrize("preset, words", [
    ({"generations": "many"}, "--generations takes int values, got 'many'"),
    ({"generations": True}, "--generations takes int values, got True"),
    ({"fresh_data": 1}, "fresh-data takes bool values, got 1"),  # the flag is --no-fresh-data
    ({"flips": "sometimes"}, "--flips must be one of"),
    ({"no_such_setting": 1}, "unknown keys no_such_setting"),
])
def test_preset_values_are_checked_against_the_field(preset, words):
    with pytest.raises(ConfigError, match=words):
        _resolve(_options(EvolutionConfig), [], preset)


def test_preset_ints_are_floats_where_the_field_is_a_float():
    o = _resolve(_options(SearchConfig), [], {"tolerance": 0})
    assert o.tolerance == 0.0 and isinstance(o.tolerance, float)
    assert o.config(SearchConfig).tolerance == 0.0


def test_flag_help_shows_the_one_default():
    options = _options(EvolutionConfig)
    text = options.parser.format_help()
    for f in settings(EvolutionConfig):
        if f.metadata["cli"] and not isinstance(f.default, bool):
            assert f"(default: {f.default})" in " ".join(text.split()), f.name


def test_read_preset_takes_flag_names_with_dashes_or_underscores(tmp_path):
    path = tmp_path / "p.yaml"
    path.write_text("target-sparsity: 0.25\n--generations: 3\nfresh_data: false\n")
    assert read_preset(str(path)) == {"target_sparsity": 0.25, "generations": 3, "fresh_data": False}
    path.write_text("- a list\n")
    with pytest.raises(SparsearchError, match="must be a mapping"):
        read_preset(str(path))
    path.write_text("a: [unclosed\n")
    with pytest.raises(SparsearchError, match="is not valid YAML"):
        read_preset(str(path))
    with pytest.raises(SparsearchError, match="config file not found"):
        read_preset(str(tmp_path / "missing.yaml"))


def test_library_only_settings_have_no_flag():
    options = _options(SearchConfig)
    hidden = {f.name for f in dataclasses.fields(SearchConfig) if not f.metadata.get("cli", True)}
    assert hidden == {"seed", "engine_config", "init_config"}
    assert not hidden & set(options.known)
