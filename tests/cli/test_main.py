"""The main job, ``widenet run``, on a small configuration."""

from typer.testing import CliRunner

from widenet.cli import app


def test_run_prints_the_comparison_table():
    result = CliRunner().invoke(app, ["run", "--n-train", "200", "--width", "32", "--epochs", "3", "--depth", "2"])
    assert result.exit_code == 0, result.output
    assert "NNGP (Bayesian, infinite width)" in result.output
    assert "finite width 32" in result.output
    # The infinite-width kernels classify digits far above chance (10%) even from 200 points.
    nngp_row = next(line for line in result.output.splitlines() if "NNGP" in line)
    accuracy = float(nngp_row.split("│")[2].strip().rstrip("%"))
    assert accuracy > 85.0


def test_run_rejects_an_unknown_activation():
    result = CliRunner().invoke(app, ["run", "--activation", "swish"])
    assert result.exit_code != 0
    assert "must be one of relu" in result.output
