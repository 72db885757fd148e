"""``widenet run``: infinite-width predictions against finite networks on embedded data."""

from __future__ import annotations

import sys
import time
from typing import List, Optional

import torch
import typer
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from .. import layers as L
from ..datasets import DATASETS, load
from ..errors import WidenetError
from ..predict import gp_inference, gradient_descent_mse, gradient_descent_mse_ensemble, max_learning_rate

app = typer.Typer(add_completion=False, no_args_is_help=False, pretty_exceptions_enable=False,
                  help="widenet: infinite-width neural networks in PyTorch.")
# --verbose (on the command, before the subcommand) keeps tracebacks of widenet's errors.
_STATE = {"verbose": False}

ACTIVATIONS = {
    "relu": L.Relu, "erf": L.Erf, "gelu": L.Gelu, "tanh": L.Tanh, "sin": L.Sin,
    "abs": L.Abs, "leaky_relu": L.LeakyRelu, "sigmoid_like": L.SigmoidLike,
}


def architecture(depth: int, width: int, activation: str, n_out: int, W_std: float, b_std: float) -> L.Layer:
    """``depth`` hidden layers of ``Dense(width) -> activation``, then ``Dense(n_out)``."""
    act = ACTIVATIONS[activation]()
    hidden = [layer for _ in range(depth) for layer in (L.Dense(width, W_std, b_std), act)]
    return L.Serial(*hidden, L.Dense(n_out, W_std, b_std))


def train_finite(net: L.Layer, data, y_train: torch.Tensor, *, epochs: int, lr: float,
                 batch_size: int, seed: int, on_epoch=None) -> torch.Tensor:
    """Trains ``net.module()`` by minibatch SGD on the mean squared error; test outputs."""
    torch.manual_seed(seed)
    model = net.module(data.x_train.shape[1], seed=seed, dtype=torch.float32)
    x, y = data.x_train.float(), y_train.float()
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    g = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        order = torch.randperm(len(x), generator=g)
        for start in range(0, len(x), batch_size):
            idx = order[start:start + batch_size]
            loss = 0.5 * ((model(x[idx]) - y[idx]) ** 2).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
        if on_epoch:
            on_epoch()
    with torch.no_grad():
        return model(data.x_test.float()).double()


def _scores(pred: torch.Tensor, data) -> tuple[float, float]:
    y = data.one_hot(data.y_test)
    accuracy = float((pred.argmax(1) == data.y_test).double().mean())
    return accuracy, float(((pred - y) ** 2).mean())


def _check_options(dataset: str, activation: str, widths: List[int]) -> None:
    """Rejects an unknown activation or dataset, or a width below 1, as a bad command-line option."""
    if activation not in ACTIVATIONS:
        raise typer.BadParameter(f"must be one of {', '.join(ACTIVATIONS)} (got {activation!r})", param_hint="--activation")
    if dataset not in DATASETS:
        raise typer.BadParameter(f"must be one of {', '.join(DATASETS)} (got {dataset!r})", param_hint="--dataset")
    for width in widths:
        if width < 1:
            raise typer.BadParameter(f"must be >= 1 (got {width})", param_hint="--width")


def _table(dataset: str, rows: list) -> Table:
    """The results table: one row per model with its test accuracy, test MSE and seconds."""
    table = Table(title=f"Test performance on {dataset}")
    for column in ("model", "test accuracy", "test MSE", "seconds"):
        table.add_column(column, justify="left" if column == "model" else "right")
    for name, acc, mse, seconds in rows:
        table.add_row(name, "-" if acc is None else f"{acc:.2%}", f"{mse:.4f}", f"{seconds:.1f}")
    return table


@app.command()
def run(
    dataset: str = typer.Option("digits", help=f"One of: {', '.join(DATASETS)}."),
    depth: int = typer.Option(3, min=1, help="Number of hidden layers."),
    widths: List[int] = typer.Option([64, 256, 1024], "--width", help="Finite widths to train (repeat the option)."),
    activation: str = typer.Option("relu", help=f"One of: {', '.join(ACTIVATIONS)}."),
    W_std: float = typer.Option(1.0, "--w-std", min=0.0, help="Weight standard deviation."),
    b_std: float = typer.Option(0.0, "--b-std", min=0.0, help="Bias standard deviation."),
    n_train: Optional[int] = typer.Option(None, min=1, help="Keep only this many training points."),
    epochs: int = typer.Option(80, min=1, help="Epochs of SGD for the finite networks."),
    batch_size: int = typer.Option(64, min=1),
    diag_reg: float = typer.Option(1e-4, min=0.0, help="Relative ridge added to the kernel diagonal."),
    seed: int = typer.Option(0, min=0),
) -> None:
    """Infinite-width NNGP and NTK predictions against finite networks trained by SGD.

    The finite networks train for --epochs of minibatch SGD; the rows "NTK at the same time"
    are infinitely wide networks trained by gradient descent for as many steps at the same
    rate: the mean over initializations, and the expected test MSE of one such network, with
    which wide finite networks compare (Lee et al. 2019; minibatch noise adds to it); "NTK
    (t = inf)" is the mean trained to convergence.
    """
    _check_options(dataset, activation, widths)
    try:
        _run(dataset, depth, widths, activation, W_std, b_std, n_train, epochs, batch_size, diag_reg, seed)
    except WidenetError as err:
        if _STATE["verbose"]:
            raise
        typer.echo(f"widenet run: error: {err} (--verbose for the traceback)", err=True)
        raise typer.Exit(2) from None


def _run(dataset, depth, widths, activation, W_std, b_std, n_train, epochs, batch_size, diag_reg, seed) -> None:
    console = Console()
    data = load(dataset, n_train=n_train, seed=seed)
    y_train = data.one_hot(data.y_train)
    console.print(
        f"[bold]widenet run[/]: {dataset}, {len(data.x_train)} train / {len(data.x_test)} test, "
        f"{data.x_train.shape[1]} features, {data.n_classes} classes; {depth} x [Dense -> {activation}] "
        f"(W_std={W_std}, b_std={b_std})"
    )
    rows = []
    with Progress(TextColumn("{task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
                  TimeElapsedColumn(), console=console, transient=True) as progress:
        task = progress.add_task("infinite-width kernels", total=2 + epochs * len(widths))
        start = time.perf_counter()
        net = architecture(depth, 1, activation, data.n_classes, W_std, b_std)
        k_train = net.kernel(data.x_train)
        k_test = net.kernel(data.x_test, data.x_train)
        kernel_seconds = time.perf_counter() - start
        progress.advance(task)
        t0 = time.perf_counter()
        pred = gp_inference(k_train.nngp, y_train, diag_reg)(k_test.nngp)
        rows.append(("NNGP (Bayesian, infinite width)", *_scores(pred, data), kernel_seconds + time.perf_counter() - t0))
        t0 = time.perf_counter()
        dynamics = gradient_descent_mse(k_train.ntk, y_train, diag_reg=diag_reg)
        _, pred = dynamics(None, k_test_train=k_test.ntk)
        rows.append(("NTK (gradient descent, t = inf)", *_scores(pred, data), kernel_seconds + time.perf_counter() - t0))
        # Largest stable full-batch step for the MSE loss is 2 y.numel() / lambda_max(Theta);
        # minibatch SGD with half of it stays in the kernel regime at large width.
        lr = 0.5 * max_learning_rate(k_train.ntk, y_train.numel())
        steps = epochs * -(-len(data.x_train) // batch_size)
        rows += _same_time_rows(net, data, y_train, lr, steps, kernel_seconds)
        progress.advance(task)
        for width in widths:
            progress.update(task, description=f"training width {width}")
            t0 = time.perf_counter()
            finite = architecture(depth, width, activation, data.n_classes, W_std, b_std)
            pred = train_finite(finite, data, y_train, epochs=epochs, lr=lr, batch_size=batch_size,
                                seed=seed, on_epoch=lambda: progress.advance(task))
            rows.append((f"finite width {width} (SGD, {epochs} epochs)", *_scores(pred, data), time.perf_counter() - t0))
    console.print(_table(dataset, rows))
    console.print(
        f"Finite networks: {epochs} epochs of SGD (batch {batch_size}, learning rate {lr:.3g}, half the "
        f"infinite-width network's largest stable rate). The NTK rows are means over random "
        f"initializations. One network keeps part of its random initial function, whose variance "
        f"adds to its test MSE (the \"one network\" row, for full-batch gradient descent; minibatch "
        f"noise adds more): wide finite networks compare with that row, so their MSE can rise with "
        f"width, as narrower networks move further from their initialization (they learn features).", highlight=False)


def _same_time_rows(net, data, y_train, lr, steps, kernel_seconds) -> list:
    """The infinite-width network trained by gradient descent for as many steps as SGD takes:
    its mean over initializations, and the expected test MSE of one such network (the mean's
    MSE plus the variance over initializations, Lee et al. 2019)."""
    t0 = time.perf_counter()
    ensemble = gradient_descent_mse_ensemble(net, data.x_train, y_train, learning_rate=lr)
    out = ensemble(t=float(steps), x_test=data.x_test, get="ntk", compute_cov="variance")
    accuracy, mse = _scores(out.mean, data)
    seconds = kernel_seconds + time.perf_counter() - t0
    return [(f"NTK at the same time ({steps} steps), mean", accuracy, mse, seconds),
            (f"NTK at the same time, one network", None, mse + float(out.covariance.mean()), seconds)]


@app.callback()
def _root(verbose: bool = typer.Option(False, "--verbose", help="Show tracebacks of errors.")) -> None:
    """widenet: infinite-width neural networks in PyTorch."""
    _STATE["verbose"] = verbose


def main(argv: Optional[List[str]] = None) -> None:
    """The ``widenet`` console script: a bad option is one line on the standard error naming
    the option and the rule, with exit status 2 (no usage block, no traceback)."""
    # Click's UsageError (typer may vendor its own click): the base of every bad-option error.
    usage_error = next(c for c in typer.BadParameter.__mro__ if c.__name__ == "UsageError")
    try:
        code = app(args=argv, standalone_mode=False, prog_name="widenet")
    except usage_error as err:
        where = f"{err.ctx.command_path}: " if getattr(err, "ctx", None) is not None else "widenet: "
        typer.echo(f"{where}error: {err.format_message()} (--help lists the options)", err=True)
        sys.exit(2)
    except typer.Abort:
        typer.echo("aborted", err=True)
        sys.exit(1)
    sys.exit(code if isinstance(code, int) else 0)
