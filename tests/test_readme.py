"""The README's commands and Python snippet are runnable as written (after `make demo`), and docs/api.md lists
the whole public API."""

from __future__ import annotations

import re
import shlex

import pytest

from subcell_screen.cli import main


def _blocks(text: str, lang: str) -> list[str]:
    return re.findall(rf"```{lang}\n(.*?)```", text, flags=re.S)


@pytest.fixture(scope="module")
def smoke_demo(tmp_path_factory):
    """`make demo`, on the smoke plate (the same code path, seconds instead of minutes)."""
    root = tmp_path_factory.mktemp("readme")
    assert main(["demo", "--out", str(root / "demo_out"), "--preset", "smoke", "--no-progress"]) == 0
    return root


def test_readme_python_snippet_runs_as_written(repo_dir, smoke_demo, monkeypatch, capsys):
    readme = (repo_dir / "README.md").read_text()
    snippets = [b for b in _blocks(readme, "python") if "ss.load_config(\"demo_out/demo.toml\")" in b]
    assert len(snippets) == 1
    api = _blocks((repo_dir / "docs" / "api.md").read_text(), "python")
    assert snippets[0] in api, "the README's snippet and docs/api.md's differ"
    monkeypatch.chdir(smoke_demo)  # where `make demo` ran
    namespace: dict = {}
    exec(compile(snippets[0], "README.md", "exec"), namespace)  # noqa: S102 - the README's own code
    out = capsys.readouterr().out
    assert "run " in out and "score" in out
    assert namespace["wells"].height > 0 and namespace["image"]["Count_Cells"].sum() > 0
    assert namespace["normalized"].height == namespace["raw"].height


def test_readme_commands_exist_with_their_options(repo_dir):
    """Every `subcell-screen ...` line of the README parses (its --help runs with the options it shows)."""
    from click.testing import CliRunner

    from subcell_screen.cli import cli

    readme = (repo_dir / "README.md").read_text()
    lines = [ln.split("#")[0].strip() for b in _blocks(readme, "bash") for ln in b.splitlines()]
    commands = [shlex.split(ln)[1:] for ln in lines if ln.startswith("subcell-screen ")]
    assert len(commands) >= 12
    runner = CliRunner()
    for args in commands:
        if args == ["--help"]:
            continue
        import click

        cmd, path = cli.get_command(None, args[0]), [args[0]]
        assert cmd is not None, args
        if isinstance(cmd, click.Group):  # e.g. `layout check`, `models download`
            cmd = cmd.get_command(None, args[1])
            assert cmd is not None, args
            path.append(args[1])
        options = {o for p in cmd.params for o in getattr(p, "opts", []) + getattr(p, "secondary_opts", [])}
        for a in args[len(path):]:
            if a.startswith("-"):
                assert a.split("=")[0] in options, (path, a)
        assert runner.invoke(cli, [*path, "--help"]).exit_code == 0, args


def test_api_page_lists_every_public_name(repo_dir):
    import subcell_screen as ss

    page = (repo_dir / "docs" / "api.md").read_text()
    missing = [n for n in ss.__all__ if n != "__version__" and f"`{n}`" not in page]
    assert not missing, f"docs/api.md does not list {missing}"
    for name in ss.__all__:
        getattr(ss, name)
