"""Batch normalization (src/widenet/layers/batch_norm.py): a twin without a kernel."""

import pytest
import torch

import widenet as wn
from layers.contract import LayerContract
from widenet.errors import NoClosedFormError, ParameterError


class TestBatchNorm(LayerContract):
    input_shape = (2, 5, 5)
    twin = "BatchNorm2d"
    bad = (
        (lambda: wn.BatchNorm(eps=0.0), ParameterError, r"BatchNorm: eps must be a finite float > 0 \(got 0.0\)"),
        (lambda: wn.BatchNorm(momentum=1.5), ParameterError, r"BatchNorm: momentum must be a finite float >= 0 and <= 1"),
    )

    def network(self, width, parameterization="ntk"):
        return wn.Serial(wn.Conv(width, 3), wn.BatchNorm(), wn.Relu(), wn.GlobalAvgPool(), wn.Dense(1))

    def test_kernel_raises_with_advice(self):
        with pytest.raises(NoClosedFormError, match=r"BatchNorm: batch normalization couples the inputs"):
            self.net().kernel(self.inputs(2))

    def test_twin_adapts_to_its_first_input_when_built_without_a_shape(self):
        model = self.net().module(seed=0, dtype=torch.float64)
        assert model(self.inputs(4)).shape == (4, 1)
        assert "BatchNorm1d" in repr(model)  # images' positions flattened into one axis
