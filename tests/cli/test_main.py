"""The main job, ``widenet run``, on a small configuration."""

import pytest
from typer.testing import CliRunner

from widenet.cli import app, main
from widenet.errors import ParameterError


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


@pytest.mark.parametrize("argv, message", [
    (["run", "--n-train", "-5"], "widenet run: error: Invalid value for '--n-train': Input should be greater than or equal to 1"),
    (["run", "--activation", "swish"], "widenet run: error: Invalid value for --activation: must be one of relu"),
    (["run", "--width", "0"], "widenet run: error: Invalid value for --width: must be >= 1 (got 0)"),
    (["run", "--bogus"], "widenet run: error: No such option: --bogus"),
    (["run", "--dataset", "mnist1d", "--n-train", "100000"], "widenet run: error: load: n_train must be in [2, 4000]"),
])
def test_a_bad_option_is_one_line_and_exit_status_2(argv, message, capsys):
    with pytest.raises(SystemExit) as done:
        main(argv)
    err = capsys.readouterr().err
    assert done.value.code == 2
    assert err.startswith(message) and err.count("\n") == 1 and "Traceback" not in err


def test_verbose_keeps_the_traceback_of_widenets_errors():
    with pytest.raises(ParameterError, match="n_train must be in"):
        main(["--verbose", "run", "--dataset", "mnist1d", "--n-train", "100000"])


def test_the_table_shows_the_infinite_network_at_the_finite_networks_training_time():
    result = CliRunner().invoke(app, ["run", "--n-train", "200", "--width", "32", "--epochs", "3", "--depth", "2"])
    assert result.exit_code == 0, result.output
    assert "NTK at the same time (12 steps), mean" in result.output  # 3 epochs of ceil(200 / 64) batches
    rows = {line.split("│")[1].strip(): line.split("│")[2:4] for line in result.output.splitlines() if "│" in line}
    mean_mse = float(rows["NTK at the same time (12 steps), mean"][1])
    one_accuracy, one_mse = rows["NTK at the same time, one network"]
    # one network's expected MSE adds the variance of its random initial function
    assert one_accuracy.strip() == "-" and float(one_mse) > mean_mse
    assert 'compare with that row, so their MSE can rise with width' in " ".join(result.output.split())
